"""ImageNet-S for MMSegmentation 1.x, which ships none.

Importing this package registers, in MMSegmentation's registries,
``ImageNetSDataset`` (DATASETS), ``LoadImageNetSImageFromFile`` and
``LoadImageNetSAnnotations`` (TRANSFORMS), ``ImageNetSIoUMetric``
(METRICS) and, for the ViT fine-tuning recipe,
``ViTLearningRateDecayOptimizerConstructor`` (OPTIM_WRAPPER_CONSTRUCTORS:
layer-wise lr decay for mmseg's ``VisionTransformer``) and ``ImageNetSFCNHead``
(MODELS: ``FCNHead`` with 0.x's ``downsample_label_ratio``). ``format`` holds the
file conventions (RGB ids, ignore 1000, the large-image rule) and ``classes``
the 50/300/919 class names.
"""
from .classes import IMAGENET_S_CLASSES, classes_of_subset
from .dataset import ImageNetSDataset
from .format import IGNORE_INDEX, MAX_RESOLUTION, OTHERS_INDEX, decode_label_rgb, encode_label_rgb, evaluation_size
from .head import ImageNetSFCNHead
from .layer_decay import ViTLearningRateDecayOptimizerConstructor
from .metric import ImageNetSIoUMetric, official_mean_iou
from .transforms import LoadImageNetSAnnotations, LoadImageNetSImageFromFile

__all__ = [
    "IMAGENET_S_CLASSES",
    "classes_of_subset",
    "ImageNetSDataset",
    "ImageNetSFCNHead",
    "ImageNetSIoUMetric",
    "LoadImageNetSAnnotations",
    "LoadImageNetSImageFromFile",
    "ViTLearningRateDecayOptimizerConstructor",
    "official_mean_iou",
    "IGNORE_INDEX",
    "MAX_RESOLUTION",
    "OTHERS_INDEX",
    "decode_label_rgb",
    "encode_label_rgb",
    "evaluation_size",
]
