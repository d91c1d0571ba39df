"""The demo's noise reading (tools/demo_noise.py) and the plain-PyTorch demo's
several-seed table (tools/demo_core.py): the numbers and verdicts a reader sees."""
import importlib.util
import math
import os

import pytest

from dgn_plugins.evaluation import demo_noise

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(TOOLS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo_core = _load_script("demo_core")  # tools/demo_core.py, a script


def test_spread_is_the_t_band_of_a_difference_of_two_seeds():
    s = demo_noise.spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["n"] == 5 and s["mean"] == pytest.approx(3.0)
    assert s["sd"] == pytest.approx(math.sqrt(2.5))
    # t(0.975, 4) = 2.7764; a GN-vs-GN difference has SD sqrt(2) * sd
    assert s["band"] == pytest.approx(2.7764451 * math.sqrt(2) * math.sqrt(2.5), rel=1e-6)
    assert s["largest"] == pytest.approx(4.0)


def test_spread_skips_missing_values_and_needs_two():
    assert demo_noise.spread([7.0]) is None
    assert demo_noise.spread([float("nan"), 3.0, None]) is None
    assert demo_noise.spread([float("nan"), 3.0, 5.0])["n"] == 2


def test_paired_difference_is_dgn_minus_gn_with_a_t_interval():
    d = demo_noise.paired_difference([10.0, 20.0, 30.0], [11.0, 23.0, 32.0])  # differences 1, 3, 2
    assert d["n"] == 3 and d["mean"] == pytest.approx(2.0)
    assert d["ci"] == pytest.approx(4.3026527 * 1.0 / math.sqrt(3), rel=1e-6)


def test_reading_compares_the_absolute_delta_with_the_band():
    s = {"band": 2.0}
    assert demo_noise.reading(1.9, s).startswith("within")
    assert demo_noise.reading(-1.9, s).startswith("within")
    assert demo_noise.reading(2.1, s).startswith("outside")
    assert demo_noise.reading(-2.1, s).startswith("outside")
    assert demo_noise.reading(0.5, None).startswith("no recorded spread")


@pytest.mark.parametrize("mean, half, verdict", [
    (1.0, 0.5, "DGN higher"), (-1.0, 0.5, "DGN lower"), (0.3, 0.5, "CI includes 0"),
    (-0.3, 0.5, "CI includes 0"), (1.0, float("nan"), "no interval")])
def test_interval_verdict(mean, half, verdict):
    assert demo_noise.interval_verdict(mean, half).startswith(verdict)


def test_noise_table_rows():
    gn = {"AP": 32.27, "AP50": 60.0, "APl": float("nan")}
    dgn = {"AP": 30.20, "AP50": 70.0, "APl": float("nan")}
    seeds = {"AP": [32.27, 31.0, 33.5, 30.5, 32.0], "AP50": [60.0, 60.5, 59.5, 60.2, 59.8]}
    table = demo_noise.noise_table(gn, dgn, seeds, keys=["AP", "AP50"]).splitlines()
    assert "5 seeds" in table[0] and len(table) == 4
    ap, ap50 = table[2], table[3]
    band = demo_noise.spread(seeds["AP"])["band"]
    assert f"±{band:.2f}" in ap and "-2.07" in ap and "within the GN-vs-GN spread" in ap
    assert "+10.00" in ap50 and "outside the GN-vs-GN spread" in ap50
    with_dgn = demo_noise.noise_table(gn, dgn, seeds, {"AP": [30.0, 29.0, 31.0, 29.5, 30.5]}, keys=["AP"])
    assert "over 5 seeds" in with_dgn and "DGN lower" in with_dgn


def test_recorded_values_apply_only_to_the_settings_measured():
    record = {"parts": {"detection": {"GN": {"fingerprint": "abc", "metrics": {"bbox/AP": [1.0, 2.0]}}}}}
    assert demo_noise.recorded(record, "detection", "GN", "unused.py", current="abc") == {"bbox/AP": [1.0, 2.0]}
    assert demo_noise.recorded(record, "detection", "GN", "unused.py", current="abd") is None
    assert demo_noise.recorded(record, "segmentation", "GN", "unused.py", current="abc") is None
    assert demo_noise.recorded(None, "detection", "GN", "unused.py", current="abc") is None


# ----------------------------------------------------------------- demo_core
def _runs(gn, dgn):
    return [{"seed": i, "GN": {"clean_acc": a, "noisy_acc": a}, "DGN": {"clean_acc": b, "noisy_acc": b}}
            for i, (a, b) in enumerate(zip(gn, dgn))]


def test_core_summary_gives_mean_ci_of_each_model_and_of_the_paired_difference():
    table = demo_core.summary_table(_runs([90.0, 92.0, 94.0], [91.0, 95.0, 96.0]))
    clean = next(line for line in table.splitlines() if line.startswith("| clean"))
    half_gn = 4.3026527 * 2.0 / math.sqrt(3)  # SD 2 over 3 seeds
    assert f"92.00 ± {half_gn:.2f}" in clean
    assert "+2.00 ± " in clean and "CI includes 0" in clean  # differences 1, 3, 2
    higher = demo_core.summary_table(_runs([90.0, 92.0, 94.0], [91.0, 93.1, 95.0]))
    assert "DGN higher" in higher  # differences 1, 1.1, 1: tight
    one_seed = demo_core.summary_table(_runs([90.0], [91.0]))
    assert "| 90.00 | 91.00 | +1.00 | no interval" in one_seed


def _numbers(runs):
    return [{model: {k: v for k, v in run[model].items() if k != "time_s"} for model in ("GN", "DGN")} for run in runs]


def test_core_demo_trains_one_pair_per_seed_deterministically(tmp_path, capsys):
    argv = ["--iters", "6", "--batch", "16", "--regroup-interval", "2", "--seeds", "0", "1",
            "--train-size", "256", "--test-size", "128", "--work-dir", str(tmp_path)]
    first = demo_core.main(argv)
    out = capsys.readouterr().out
    assert [run["seed"] for run in first] == [0, 1]
    assert "| metric, 2 seed(s) |" in out
    assert out.count("regrouped") == 2  # seed 0's regroups (iterations 2 and 4) only
    assert _numbers(first)[0] != _numbers(first)[1]  # the seed sets the initial weights and batches
    assert _numbers(demo_core.main(argv)) == _numbers(first)
