"""Shared set-up for the Detectron2 tests (real Detectron2 on CPU, small data).

Nothing here imports Detectron2 at import time, so a machine without it still
collects the test modules, which then skip with a reason.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # d2_support


@pytest.fixture(scope="session")
def synthetic_coco_root(tmp_path_factory):
    """A small generated data set, registered as ``dgn_synthetic_coco_{train,val}``.

    ``DGN_SYNTHETIC_COCO`` points at it while the session runs, so launcher
    processes register the same files.
    """
    from dgn_plugins.datasets.synthetic_coco import SyntheticCocoSpec
    from dgn_plugins.detectron2 import register_synthetic_coco

    root = str(tmp_path_factory.mktemp("d2data") / "synthetic_coco")
    spec = SyntheticCocoSpec(
        num_train=16, num_val=4, image_size=64, max_objects=2, min_object_size=16, max_object_size=30
    )
    previous = os.environ.get("DGN_SYNTHETIC_COCO")
    os.environ["DGN_SYNTHETIC_COCO"] = root
    try:
        yield register_synthetic_coco(root, spec)
    finally:
        if previous is None:
            os.environ.pop("DGN_SYNTHETIC_COCO", None)
        else:
            os.environ["DGN_SYNTHETIC_COCO"] = previous
