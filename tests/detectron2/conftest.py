"""Shared set-up for the Detectron2 tests (real Detectron2 on CPU, small data).

Run by hand without Detectron2, nothing here imports it, so the test modules
are still collected and skip with a reason. With ``DGN_REQUIRE_DETECTRON2=1``
(``make test`` sets it) they may not skip: what they need is checked when this
file loads and a missing piece stops the run with its name, and a test or
module that skips anyway is reported as failed.
"""
import importlib
import logging
import os

import pytest

REQUIRED = os.environ.get("DGN_REQUIRE_DETECTRON2", "0").strip() not in ("", "0")

# What the tests import, and where it comes from (docs/detectron2.md, Installing).
REQUIREMENTS = [
    ("detectron2.config", "Detectron2 (built from source: `make setup`, or docs/detectron2.md)"),
    ("detectron2._C", "Detectron2's compiled ops (a source build against this torch)"),
    ("torchvision.ops", "a torchvision built for this torch"),
    ("imagecorruptions", "imagecorruptions-imaug==1.1.5 (the robustness tests)"),
    ("mmengine", "mmengine (the cross-toolkit corruption test)"),
    ("mmcv.transforms", "mmcv (the cross-toolkit corruption test)"),
    ("shapely", "shapely (the LazyConfig example's FixedSizeCrop)"),
    ("timm", "timm (Detectron2's ViT, in the ViTDet config: requirements/detectron2.txt)"),
]


def _missing_requirements():
    missing = []
    for module, what in REQUIREMENTS:
        try:
            importlib.import_module(module)
        except Exception as error:  # ImportError, or an OSError / RuntimeError of a library built for another torch
            missing.append(f"{module}: {what}; {type(error).__name__}: {error}")
    if not any(m.startswith("detectron2.") for m in missing):
        from d2_support import detectron2_configs_dir

        try:
            detectron2_configs_dir()
        except pytest.skip.Exception as skip:
            missing.append(f"Detectron2's model zoo configs: {skip.msg}")
    return missing


if REQUIRED:
    _missing = _missing_requirements()
    if _missing:
        raise RuntimeError("DGN_REQUIRE_DETECTRON2 is set, and the Detectron2 tests would skip for lack of:\n  "
                           + "\n  ".join(_missing))


def _refuse_skip(report, what):
    if REQUIRED and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"DGN_REQUIRE_DETECTRON2 is set and this {what} skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module-level skip (``pytest.importorskip``) fails the module when the tests are required."""
    outcome = yield
    _refuse_skip(outcome.get_result(), "module")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skip inside a test or fixture fails the test when the tests are required."""
    outcome = yield
    _refuse_skip(outcome.get_result(), "test")


@pytest.fixture(scope="session")
def synthetic_coco_root(tmp_path_factory):
    """A small generated data set, registered as ``dgn_synthetic_coco_{train,val}``.

    ``DGN_SYNTHETIC_COCO`` points at it while the session runs, so launcher
    processes register the same files.
    """
    from dgn_plugins.data.synthetic_coco import SyntheticCocoSpec
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


@pytest.fixture
def captured_launcher(capsys):
    """``capsys`` for a launcher run, without leaving log handlers on its streams: Detectron2's ``setup_logger``
    binds a handler to the ``sys.stdout`` of the moment, which ``capsys`` closes after the test, and a later test's
    log line there would print a logging error."""
    names = ("", "detectron2", "fvcore", "dgn_plugins")
    before = {name: list(logging.getLogger(name).handlers) for name in names}
    yield capsys
    for name in names:
        logging.getLogger(name).handlers[:] = before[name]
