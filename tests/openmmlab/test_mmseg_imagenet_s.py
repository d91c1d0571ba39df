"""ImageNet-S for MMSegmentation: label decoding, the large-image rule, the
data set, ignore id 1000 through head / preprocessor / metric, both mIoU
conventions, and the synthetic demo set that uses the same format."""
import os

import numpy as np
import pytest
import torch

pytest.importorskip("mmseg", reason="mmseg is not installed")

from mmengine.registry import DefaultScope  # noqa: E402
from mmseg.datasets.transforms import LoadAnnotations  # noqa: E402
from mmseg.registry import DATASETS, METRICS, MODELS  # noqa: E402
from PIL import Image  # noqa: E402

import dgn_plugins.openmmlab  # noqa: E402,F401  (registers everything)
from dgn_plugins.data import synthetic_seg  # noqa: E402
from dgn_plugins.openmmlab.imagenet_s import (  # noqa: E402
    IMAGENET_S_CLASSES,
    ImageNetSDataset,
    ImageNetSIoUMetric,
    LoadImageNetSAnnotations,
    LoadImageNetSImageFromFile,
    decode_label_rgb,
    encode_label_rgb,
    evaluation_size,
)
from dgn_plugins.openmmlab.imagenet_s.metric import resize_label_nearest  # noqa: E402


@pytest.fixture(autouse=True)
def mmseg_scope():
    """Registry look-ups in mmseg's scope, for this module's tests only."""
    with DefaultScope.overwrite_default_scope("mmseg"):
        yield

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "mmseg")

#: Ids worth keeping apart: "others", small, above 255 (needs G), the largest class, ignore.
TRICKY_IDS = (0, 7, 300, 919, 1000)


def write_sample(root, image_dir, label_dir, folder, stem, label, seed=0):
    """One JPEG image and its RGB label PNG, in the ImageNet-S layout."""
    rng = np.random.RandomState(seed)
    for split_dir in (image_dir, label_dir):
        os.makedirs(os.path.join(root, split_dir, folder), exist_ok=True)
    pixels = rng.randint(0, 256, label.shape + (3,), dtype=np.uint8)
    image_path = os.path.join(root, image_dir, folder, stem + ".JPEG")
    label_path = os.path.join(root, label_dir, folder, stem + ".png")
    Image.fromarray(pixels).save(image_path, format="JPEG")
    Image.fromarray(encode_label_rgb(label)).save(label_path)
    return image_path, label_path


def striped_label(height, width, ids=TRICKY_IDS):
    """Vertical stripes of ``ids``: every id covers a known share of pixels."""
    columns = np.array(ids)[np.arange(width) * len(ids) // width]
    return np.broadcast_to(columns, (height, width)).astype(np.int64).copy()


@pytest.fixture
def imagenet_s_root(tmp_path):
    """Two train-semi and one validation sample of ImageNet-S919, 64 px, ids 0..1000."""
    root = str(tmp_path / "ImageNetS919")
    label = striped_label(64, 64)
    write_sample(root, "train-semi", "train-semi-segmentation", "n01443537", "n01443537_1", label, seed=1)
    write_sample(root, "train-semi", "train-semi-segmentation", "n01491361", "n01491361_2", label[:, ::-1], seed=2)
    write_sample(root, "validation", "validation-segmentation", "n01443537", "ILSVRC2012_val_00000001", label, seed=3)
    return root


# ------------------------------------------------------------------ labels
def test_rgb_encoding_round_trips_every_id():
    ids = np.arange(0, 1001).reshape(7, 143)
    rgb = encode_label_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb[..., 2].max() == 0
    np.testing.assert_array_equal(decode_label_rgb(rgb), ids)
    assert tuple(encode_label_rgb(np.array([[1000]]))[0, 0]) == (232, 3, 0)  # the README's R + 256 * G


def test_annotation_loader_keeps_ids_above_255_where_mmseg_default_loses_them(imagenet_s_root):
    label_path = os.path.join(imagenet_s_root, "validation-segmentation", "n01443537", "ILSVRC2012_val_00000001.png")
    expected = striped_label(64, 64)

    ours = LoadImageNetSAnnotations()(dict(seg_map_path=label_path, seg_fields=[], reduce_zero_label=False))
    assert ours["gt_seg_map"].dtype == np.int32
    np.testing.assert_array_equal(ours["gt_seg_map"], expected)
    assert set(np.unique(ours["gt_seg_map"])) == set(TRICKY_IDS)

    # MMSegmentation's own loader casts to uint8 (and keeps the colour
    # channels as a HxWx3 map): ids 300, 919 and 1000 cannot survive.
    theirs = LoadAnnotations()(dict(seg_map_path=label_path, seg_fields=[], reduce_zero_label=False))["gt_seg_map"]
    assert theirs.dtype == np.uint8
    assert not {300, 919, 1000} & set(np.unique(theirs).tolist())
    assert theirs.shape != expected.shape or not np.array_equal(theirs, expected)


def test_annotation_loader_refuses_gray_labels(tmp_path):
    path = str(tmp_path / "gray.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(path)
    with pytest.raises(ValueError, match="RGB"):
        LoadImageNetSAnnotations()(dict(seg_map_path=path, seg_fields=[], reduce_zero_label=False))


# ------------------------------------------------------- large-image rule
@pytest.mark.parametrize(
    "size, expected",
    [
        ((375, 500), (375, 500)),  # a usual ImageNet image: untouched
        ((1000, 1000), (1000, 1000)),  # exactly 1000 * 1000 pixels: untouched
        ((1225, 900), (1000, 734)),  # portrait: longer side to 1000, int() of the other
        ((800, 1280), (625, 1000)),  # landscape
        ((5005, 3646), (1000, 728)),
    ],
)
def test_evaluation_size_follows_the_official_max_res_rule(size, expected):
    assert evaluation_size(*size) == expected


def test_large_images_and_training_labels_are_downsampled_together(tmp_path):
    label = striped_label(1100, 1000)  # 1.1 megapixels
    image_path, label_path = write_sample(str(tmp_path), "img", "ann", "n0", "big", label)
    results = LoadImageNetSImageFromFile()(dict(img_path=image_path))
    assert results["img"].shape[:2] == results["img_shape"] == results["ori_shape"] == (1000, 909)
    assert results["original_shape"] == (1100, 1000)

    train_label = LoadImageNetSAnnotations(downsample_large_label=True)(
        dict(results, seg_map_path=label_path, seg_fields=[], reduce_zero_label=False)
    )["gt_seg_map"]
    assert train_label.shape == (1000, 909)
    assert set(np.unique(train_label)) == set(TRICKY_IDS)  # nearest neighbour: no new ids

    eval_label = LoadImageNetSAnnotations()(dict(seg_map_path=label_path, seg_fields=[], reduce_zero_label=False))
    assert eval_label["gt_seg_map"].shape == (1100, 1000)  # scored at full size

    untouched = LoadImageNetSImageFromFile(downsample_large_image=False)(dict(img_path=image_path))
    assert untouched["img"].shape[:2] == untouched["ori_shape"] == (1100, 1000)


def test_nearest_upsampling_of_predictions_keeps_ids():
    pred = torch.tensor([[0, 919], [300, 7]])
    up = resize_label_nearest(pred, (4, 4))
    assert up.dtype == pred.dtype
    np.testing.assert_array_equal(up.numpy(), np.kron(pred.numpy(), np.ones((2, 2), dtype=np.int64)))


# ------------------------------------------------------------- data set
def test_dataset_pairs_images_and_labels_of_a_split(imagenet_s_root):
    dataset = ImageNetSDataset(
        subset=919,
        data_root=imagenet_s_root,
        data_prefix=dict(img_path="train-semi", seg_map_path="train-semi-segmentation"),
        pipeline=[dict(type="LoadImageNetSImageFromFile"), dict(type="LoadImageNetSAnnotations")],
    )
    assert len(dataset) == 2
    assert len(dataset.metainfo["classes"]) == 920 and dataset.metainfo["classes"][0] == "others"
    assert dataset.ignore_index == 1000 and dataset.label_map is None
    for index in range(2):
        info = dataset.get_data_info(index)
        assert info["seg_map_path"] == info["img_path"].replace("train-semi", "train-semi-segmentation").replace(
            ".JPEG", ".png"
        )
        sample = dataset[index]
        assert sample["gt_seg_map"].max() == 1000 and 919 in sample["gt_seg_map"]


@pytest.mark.parametrize("subset, num_classes", [(50, 51), (300, 301), (919, 920)])
def test_subsets_name_their_classes(subset, num_classes):
    classes = IMAGENET_S_CLASSES[subset]
    assert len(classes) == num_classes and classes[0] == "others"
    dataset = DATASETS.build(dict(type="ImageNetSDataset", subset=subset, lazy_init=True))
    assert dataset.metainfo["classes"] == classes


def test_dataset_rejects_what_would_break_the_ids():
    with pytest.raises(ValueError, match="reduce_zero_label"):
        ImageNetSDataset(subset=50, reduce_zero_label=True, lazy_init=True)
    with pytest.raises(ValueError, match="subset"):
        ImageNetSDataset(subset=None, lazy_init=True)
    with pytest.raises(ValueError, match="51 classes"):
        ImageNetSDataset(subset=50, metainfo=dict(classes=("a", "b")), lazy_init=True)


# ------------------------------------------------------------- metric
def metric_sample(pred, label):
    return dict(
        pred_sem_seg=dict(data=torch.as_tensor(pred)[None]),
        gt_sem_seg=dict(data=torch.as_tensor(label)[None]),
        img_path="validation/n0/x.JPEG",
    )


def test_metric_reports_both_conventions_from_a_hand_computed_confusion_matrix():
    """4 classes; class 3 is in no label and predicted only on an ignored pixel.

    Valid (label, pred) pairs: (0,0) (0,1) (1,1) (1,1) (1,1) (2,2) (2,0).
    I = [1, 3, 1, 0], U = [3, 4, 2, 0]: IoU = [1/3, 3/4, 1/2, nan].
    """
    label = torch.tensor([[0, 0, 1, 1], [1, 2, 2, 1000]])
    pred = torch.tensor([[0, 1, 1, 1], [1, 2, 0, 3]])
    metric = METRICS.build(dict(type="ImageNetSIoUMetric"))
    metric.dataset_meta = dict(classes=("others", "a", "b", "c"))
    metric.process({}, [metric_sample(pred, label)])
    results = metric.evaluate(1)

    assert results["mIoU"] == pytest.approx(round((1 / 3 + 3 / 4 + 1 / 2) / 3 * 100, 2))  # 52.78
    assert results["mIoU_official"] == pytest.approx(round((1 / 3 + 3 / 4 + 1 / 2 + 0) / 4 * 100, 2))  # 39.58
    assert results["aAcc"] == pytest.approx(round(5 / 7 * 100, 2))
    assert results["mAcc"] == pytest.approx(round((1 / 2 + 1 + 1 / 2) / 3 * 100, 2))


def test_metric_sums_areas_over_images_and_upsamples_small_predictions():
    """Image 1: a 2x2 prediction of a 4x4 label (a downsampled large image).

    Image 1, in 2x2 blocks: label [[1, 0], [0, 1000]], pred [[1, 1], [0, 0]]
    -> 4 pixels each of (1,1), (0,1), (0,0), the last block ignored.
    Image 2: label [[2, 2]], pred [[2, 0]].
    Totals: label [8, 4, 2], pred [5, 8, 1], I [4, 4, 1] -> U [9, 8, 2].
    """
    block = np.ones((2, 2), dtype=np.int64)
    label_1 = torch.from_numpy(np.kron(np.array([[1, 0], [0, 1000]]), block))
    pred_1 = torch.tensor([[1, 1], [0, 0]])
    metric = ImageNetSIoUMetric()
    metric.dataset_meta = dict(classes=("others", "a", "b"))
    metric.process({}, [metric_sample(pred_1, label_1), metric_sample([[2, 0]], [[2, 2]])])
    results = metric.evaluate(2)
    iou = [4 / 9, 4 / 8, 1 / 2]
    assert results["mIoU"] == pytest.approx(round(np.mean(iou) * 100, 2))
    assert results["mIoU_official"] == results["mIoU"]  # every class present: one convention


def test_metric_writes_benchmark_pngs(tmp_path):
    metric = ImageNetSIoUMetric(output_dir=str(tmp_path / "pred"), format_only=True)
    metric.dataset_meta = dict(classes=IMAGENET_S_CLASSES[919])
    pred = torch.tensor([[0, 300], [919, 7]])
    sample = dict(pred_sem_seg=dict(data=pred[None]), img_path="/d/validation/n01443537/ILSVRC2012_val_1.JPEG",
                  original_shape=(4, 4))
    metric.process({}, [sample])
    written = np.array(Image.open(tmp_path / "pred" / "n01443537" / "ILSVRC2012_val_1.png"))
    np.testing.assert_array_equal(decode_label_rgb(written), resize_label_nearest(pred, (4, 4)).numpy())


# --------------------------------------------- ignore id through the model
def imagenet_s_config(subset, norm, iters=None):
    """Path of a shipped ImageNet-S config, e.g. (50, 'dgn')."""
    iters = iters or {50: "3k", 300: "20k", 919: "60k"}[subset]
    return os.path.join(CONFIGS, f"fcn_r50-{norm}-d8_4xb4-{iters}_imagenets{subset}-224x224.py")


def small_segmentor(norm="dgn"):
    from mmengine.config import Config

    cfg = Config.fromfile(imagenet_s_config(50, norm))
    cfg.model.backbone.init_cfg = None  # no download
    return MODELS.build(cfg.model)


def test_ignore_index_reaches_preprocessor_padding_and_head_loss():
    model = small_segmentor()
    assert model.decode_head.ignore_index == model.auxiliary_head.ignore_index == 1000

    # Padding a 48 px sample to the 224 px crop fills labels with 1000.
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.zeros(1, 48, 48, dtype=torch.int64))
    image = torch.zeros(3, 48, 48, dtype=torch.uint8)
    batch = model.data_preprocessor(dict(inputs=[image], data_samples=[sample]), True)
    padded = batch["data_samples"][0].gt_sem_seg.data[0]
    assert padded.shape == (224, 224)
    assert (padded[:48, :48] == 0).all() and (padded[48:] == 1000).all() and (padded[:, 48:] == 1000).all()

    # The head's loss leaves 1000 out and averages over labelled pixels only.
    torch.manual_seed(0)
    logits = torch.randn(1, 51, 8, 8)
    label = torch.randint(0, 51, (1, 8, 8))
    label[0, :4] = 1000
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=label)
    sample.set_metainfo(dict(img_shape=(8, 8), pad_shape=(8, 8)))
    loss = model.decode_head.loss_by_feat(logits, [sample])["loss_ce"]
    expected = torch.nn.functional.cross_entropy(logits, label, ignore_index=1000)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------- synthetic set
def test_synthetic_set_is_deterministic_and_in_the_imagenet_s_format(tmp_path):
    spec = synthetic_seg.SyntheticSegSpec(train_per_class=2, val_per_class=1, image_size=32)
    first = synthetic_seg.ensure_synthetic_seg(str(tmp_path / "a"), spec)
    second = synthetic_seg.generate_synthetic_seg(str(tmp_path / "b"), spec)
    for split, label_split in synthetic_seg.SPLITS.items():
        for class_name in synthetic_seg.CLASSES[1:]:
            names = sorted(os.listdir(os.path.join(first, label_split, class_name)))
            assert len(names) == spec.count(split)
            for name in names:
                a = np.array(Image.open(os.path.join(first, label_split, class_name, name)))
                b = np.array(Image.open(os.path.join(second, label_split, class_name, name)))
                np.testing.assert_array_equal(a, b)
                ids = set(np.unique(decode_label_rgb(a)))
                assert ids == {0, synthetic_seg.CLASSES.index(class_name), 1000}
                image = os.path.join(first, split, class_name, name.replace(".png", ".JPEG"))
                assert Image.open(image).size == (32, 32)


def test_synthetic_set_never_replaces_foreign_folders(tmp_path):
    (tmp_path / "mine").mkdir()
    with pytest.raises(FileExistsError):
        synthetic_seg.ensure_synthetic_seg(str(tmp_path / "mine"))


def test_dataset_generates_the_demo_set_only_when_asked(tmp_path):
    classes = synthetic_seg.CLASSES
    root = str(tmp_path / "generated")
    prefix = dict(img_path="validation", seg_map_path="validation-segmentation")
    with pytest.raises(ValueError, match="synthetic"):  # the real classes cannot be generated
        ImageNetSDataset(subset=50, generate_if_missing=True, data_root=root, data_prefix=prefix)
    assert not os.path.exists(root)
    dataset = ImageNetSDataset(
        subset=None, metainfo=dict(classes=classes), generate_if_missing=True, data_root=root, data_prefix=prefix
    )
    assert len(dataset) == (len(classes) - 1) * synthetic_seg.SyntheticSegSpec.val_per_class


# ------------------------------------------------------ real training
def test_dgn_imagenet_s_919_trains_a_few_iterations_on_tiny_inputs(imagenet_s_root, tmp_path):
    """The shipped 919 DGN config on two 64 px samples with ids 300, 919 and
    1000: train 2 iterations (64 px crops), regroup, evaluate."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    cfg = Config.fromfile(imagenet_s_config(919, "dgn"))
    cfg.model.backbone.init_cfg = None  # no download
    cfg.model.data_preprocessor.size = (64, 64)
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.update(batch_size=2 if loader is cfg.train_dataloader else 1, num_workers=0, persistent_workers=False)
        loader.dataset.data_root = imagenet_s_root
        for transform in loader.dataset.pipeline:
            if transform.type in ("RandomResize", "Resize"):
                transform.scale = (128, 64)
            if transform.type == "RandomCrop":
                transform.crop_size = (64, 64)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=2, val_interval=2)
    cfg.custom_hooks = [dict(type="DGNRegroupHook", interval=2, stop=None)]
    cfg.default_hooks.checkpoint = None
    cfg.work_dir = str(tmp_path / "work")

    runner = Runner.from_cfg(cfg)
    runner.train()
    losses = runner.message_hub.get_scalar("train/loss").data[0]
    assert all(np.isfinite(losses))
    layers = dgn_plugins.dgn_layers(runner.model)
    assert len(layers) > 50 and all(int(layer.num_stat_updates) == 2 for _, layer in layers)
    assert any(int(layer.num_regroups) > 0 for _, layer in layers)
    scalars = runner.message_hub.log_scalars
    assert 0 <= scalars["val/mIoU_official"].current() <= scalars["val/mIoU"].current() <= 100
