"""tools/demo.py's noise lines: the recorded seed-to-seed spread (bench/demo_spread.json)
must apply to the demo configs as they are, and the demo must print it next to its
differences, or say why it cannot."""
import importlib.util
import inspect
import os

import pytest
from mmdet_helpers import ROOT, TOOLS

pytest.importorskip("mmdet", reason="mmdet is not installed")
pytest.importorskip("mmseg", reason="mmseg is not installed")

from dgn_plugins.evaluation import demo_noise  # noqa: E402

_spec = importlib.util.spec_from_file_location("demo", os.path.join(TOOLS, "demo.py"))
demo = importlib.util.module_from_spec(_spec)  # tools/demo.py, a script
_spec.loader.exec_module(demo)

PAIRS = {"detection": demo.DETECTION, "segmentation": demo.SEGMENTATION}


@pytest.mark.parametrize("part", sorted(PAIRS))
def test_the_shipped_gn_spread_applies_to_the_demo_configs(part):
    """Fails when a GN demo config changes without re-running bench/demo_spread.py."""
    record = demo_noise.load()
    assert record is not None, f"{demo_noise.NOISE_FILE} missing: run bench/demo_spread.py"
    config = os.path.join(ROOT, dict(PAIRS[part])["GN"])
    values = demo_noise.recorded(record, part, "GN", config)
    assert values is not None, f"{part}: the recorded GN spread was measured with other settings"
    headline = "bbox/AP" if part == "detection" else "mIoU"
    spread = demo_noise.spread(values[headline])
    assert spread["n"] >= 5 and spread["sd"] > 0


def _record(gn_fingerprint, dgn_fingerprint=None):
    seeds = {"mIoU": [70.0, 72.0, 74.0, 71.0, 73.0], "aAcc": [95.0, 95.1, 94.9, 95.0, 95.0]}
    part = {"GN": {"fingerprint": gn_fingerprint, "seeds": [0, 1, 2, 3, 4], "metrics": seeds}}
    if dgn_fingerprint:
        part["DGN"] = {"fingerprint": dgn_fingerprint, "seeds": [0, 1, 2, 3, 4],
                       "metrics": {"mIoU": [69.0, 70.5, 73.0, 70.0, 71.5], "aAcc": [95.0] * 5}}
    return {"command": "python bench/demo_spread.py", "commit": "abc1234", "date": "2026-12-05",
            "parts": {"segmentation": part}}


def _fingerprints():
    configs = dict(demo.SEGMENTATION)
    return (demo_noise.fingerprint(os.path.join(ROOT, configs["GN"])),
            demo_noise.fingerprint(os.path.join(ROOT, configs["DGN"]), dgn_defaults=True))


def test_demo_prints_the_band_and_a_reading_next_to_each_difference(capsys):
    gn_print, dgn_print = _fingerprints()
    gn, dgn = {"mIoU": 76.30, "aAcc": 95.0}, {"mIoU": 68.06, "aAcc": 95.01}
    demo.print_noise("segmentation", demo.SEGMENTATION, gn, dgn, ["mIoU", "aAcc"], "%", _record(gn_print, dgn_print))
    out = capsys.readouterr().out
    miou = next(line for line in out.splitlines() if line.startswith("| mIoU"))
    band = demo_noise.spread([70.0, 72.0, 74.0, 71.0, 73.0])["band"]
    assert f"| -8.24 | ±{band:.2f} | outside the GN-vs-GN spread" in miou
    assert "-1.20 ± " in miou and "over 5 seeds" in miou  # paired 5-seed DGN - GN
    assert "within the GN-vs-GN spread" in next(line for line in out.splitlines() if line.startswith("| aAcc"))
    assert "abc1234" in out and "python bench/demo_spread.py" in out


def test_demo_says_when_no_recorded_spread_applies(capsys):
    gn_print, dgn_print = _fingerprints()
    args = ("segmentation", demo.SEGMENTATION, {"mIoU": 76.3}, {"mIoU": 68.06}, ["mIoU"], "%")
    demo.print_noise(*args, record=_record("0" * 16))  # other GN settings
    out = capsys.readouterr().out
    assert "recorded for other demo settings" in out and "| mIoU" not in out
    demo.print_noise(*args, record=_record(gn_print), changed="--epochs 2")  # not the schedule measured
    out = capsys.readouterr().out
    assert "measured without --epochs 2" in out and "| mIoU" not in out
    demo.print_noise(*args, record=_record(gn_print, "0" * 16))  # other DGN settings: GN band only
    out = capsys.readouterr().out
    assert "| mIoU" in out and "over 5 seeds" not in out and "other DGN settings" in out


def test_fingerprint_follows_the_config_and_the_dgn_defaults(tmp_path):
    from mmengine.config import Config

    gn_config = os.path.join(ROOT, dict(demo.SEGMENTATION)["GN"])
    changed = Config.fromfile(gn_config)
    changed.train_cfg.max_iters = 601
    changed.dump(str(tmp_path / "changed.py"))
    assert demo_noise.fingerprint(str(tmp_path / "changed.py")) != demo_noise.fingerprint(gn_config)

    from mmengine.registry import MODELS

    dgn_config = os.path.join(ROOT, dict(demo.SEGMENTATION)["DGN"])
    before = demo_noise.fingerprint(dgn_config, dgn_defaults=True)
    layer = MODELS.get("DGN")

    class OtherDefaults(layer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)

    signature = inspect.signature(layer.__init__)  # the same but for one default
    OtherDefaults.__init__.__signature__ = signature.replace(parameters=[
        p.replace(default=0.9) if p.name == "percentile" else p for p in signature.parameters.values()])

    MODELS.register_module("DGN", module=OtherDefaults, force=True)
    try:  # a new default percentile: the DGN record no longer applies
        assert demo_noise.fingerprint(dgn_config, dgn_defaults=True) != before
    finally:
        MODELS.register_module("DGN", module=layer, force=True)
    assert demo_noise.fingerprint(dgn_config, dgn_defaults=True) == before


def test_comparison_metrics_are_keyed_like_the_record():
    from dgn_plugins.evaluation.compare.report import Comparison

    comparison = Comparison(labels=["GN", "DGN"])
    comparison.add_section("bbox", ["AP", "AP50"], {"GN": [30.0, 50.0], "DGN": [31.0, 49.0]})
    assert demo.comparison_metrics(comparison, "DGN") == {"bbox/AP": 31.0, "bbox/AP50": 49.0}
