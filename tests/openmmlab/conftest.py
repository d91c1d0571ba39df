"""Fixtures for the OpenMMLab tests (helpers live in mmdet_helpers.py)."""
import pytest
from mmdet_helpers import TINY_SPEC, import_train_tool


@pytest.fixture(scope="session")
def train_tool():
    """tools/train.py as a module (needs mmdet)."""
    pytest.importorskip("mmdet", reason="mmdet is not installed")
    return import_train_tool()


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    """Root of a tiny generated COCO set (the spec mmdet_helpers.tiny_dataset() expects)."""
    from dgn_plugins.data.synthetic_coco import SyntheticCocoSpec, ensure_synthetic_coco

    return ensure_synthetic_coco(str(tmp_path_factory.mktemp("data") / "coco"), SyntheticCocoSpec(**TINY_SPEC))
