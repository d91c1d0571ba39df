"""MMPretrain: what it lacks for the poster's classification rows, registered in its registries.

Imported by :mod:`dgn_plugins.openmmlab` when mmpretrain is installed. ``DGN``
itself needs nothing here: it sits in MMEngine's root ``MODELS``, which
mmpretrain's registry falls back to. This adds, in mmpretrain's scope:

- ``AugMix`` (TRANSFORMS): the paper's AugMix, with ``jsd=True`` the three
  views (clean, AugMix, AugMix) the JSD loss needs;
- ``MultiViewClsDataPreprocessor`` (MODELS): stacks such views along the batch;
- ``AugMixJSDLoss`` (MODELS): a head's ``loss``: cross-entropy on the clean
  view plus 12 x the Jensen-Shannon consistency;
- CIFAR backbones with ``norm_cfg`` (MODELS): ``WideResNetCIFAR`` (WRN-40-2) and
  ``ResNeXtCIFAR`` (ResNeXt-29, AugMix's 4 x 32d);
"""
from . import backbones, corruption_datasets, losses, preprocessor, transforms  # noqa: F401  (registration)
