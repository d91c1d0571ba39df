"""Seed-to-seed noise of the demo's metrics, so a one-seed GN-vs-DGN gap can be judged.

``bench/demo_spread.py`` trains the demo configs over several seeds and writes
the per-seed values to :data:`NOISE_FILE`; ``tools/demo.py`` reads them and
prints, next to each difference, how far two GN runs that differ only in their
seed land apart. The raw values are stored (not a summary) so that the band the
demo prints is computed here, by the same code the tests check.

Band: a GN-vs-GN difference has SD sqrt(2)*s (s: GN's SD over the seeds); its
95% prediction band is t(0.975, n-1)*sqrt(2)*s, Student's t because n is small.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import os.path as osp
from typing import Dict, Optional, Sequence

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))  # the repository (editable install)
NOISE_FILE = osp.join(ROOT, "bench", "demo_spread.json")


def t_quantile(df: int, confidence: float = 0.95) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, df))


def spread(values: Sequence[float]) -> Optional[dict]:
    """GN's seed-to-seed spread of one metric: n, mean, SD, the 95% GN-vs-GN
    band and the largest |difference| seen between two seeds; None under 2 values."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    largest = max(abs(a - b) for a, b in itertools.combinations(values, 2))
    return {"n": n, "mean": mean, "sd": sd, "band": t_quantile(n - 1) * math.sqrt(2) * sd, "largest": largest}


def paired_difference(gn: Sequence[float], dgn: Sequence[float]) -> Optional[dict]:
    """DGN minus GN over seeds trained in pairs: n, mean and 95% CI half-width (t);
    None without an interval (fewer than two distinct pairs, or no spread:
    :func:`~dgn_plugins.evaluation.robustness.stats.paired_ci`)."""
    from .robustness.stats import paired_ci

    paired = paired_ci(gn, dgn)
    if paired.why:
        return None
    return {"n": paired.n, "mean": paired.mean, "sd": paired.sd, "ci": paired.half_width}


def reading(delta: float, gn_spread: Optional[dict]) -> str:
    """One line saying whether a single-seed difference stands out of GN's own noise."""
    if delta is None or math.isnan(delta):
        return "no value"
    if gn_spread is None or math.isnan(gn_spread["band"]):
        return "no recorded spread: cannot judge"
    if abs(delta) <= gn_spread["band"]:
        return "within the GN-vs-GN spread: not evidence either way"
    return "outside the GN-vs-GN spread (one seed pair)"


def interval_verdict(mean: float, half_width: float, why: Optional[str] = None) -> str:
    """Whether a 95% interval for DGN minus GN excludes 0, and on which side (``why``: the reason
    there is no interval, when there is none)."""
    if half_width is None or math.isnan(half_width):
        return f"no interval: {why}" if why else "no interval (one seed)"
    if mean - half_width > 0:
        return "DGN higher: the CI excludes 0"
    if mean + half_width < 0:
        return "DGN lower: the CI excludes 0"
    return "CI includes 0: no difference shown"


def multi_seed_reading(difference: Optional[dict]) -> str:
    """The recorded several-seed DGN-minus-GN figure and its verdict."""
    if difference is None:
        return "n/a"
    return (f"{difference['mean']:+.2f} ± {difference['ci']:.2f} over {difference['n']} seeds "
            f"({interval_verdict(difference['mean'], difference['ci'])})")


# ------------------------------------------------------------------ records
def fingerprint(config: str, dgn_defaults: bool = False) -> str:
    """Hash of the merged config (plus, for DGN, the layer's and the hook's
    code defaults, which the config leaves out): a record applies only to the
    settings it was measured with."""
    from mmengine.config import Config

    text = Config.fromfile(config).pretty_text
    if dgn_defaults:
        from mmengine.registry import HOOKS, MODELS

        import dgn_plugins.openmmlab  # noqa: F401  (registers DGN and DGNRegroupHook)

        for cls in (MODELS.get("DGN"), HOOKS.get("DGNRegroupHook")):
            parameters = inspect.signature(cls.__init__).parameters.values()
            text += repr({p.name: repr(p.default) for p in parameters if p.default is not p.empty})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load(path: str = NOISE_FILE) -> Optional[dict]:
    if not osp.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def recorded(record: Optional[dict], part: str, model: str, config: str,
             current: Optional[str] = None) -> Optional[Dict[str, list]]:
    """Per-metric seed values of ``model`` in ``part``, if recorded for this
    very config (``current``: its fingerprint, computed when not given)."""
    entry = ((record or {}).get("parts", {}).get(part) or {}).get(model)
    if not entry:
        return None
    if (current or fingerprint(config, dgn_defaults=model == "DGN")) != entry.get("fingerprint"):
        return None
    return entry["metrics"]


def noise_table(gn: Dict[str, float], dgn: Dict[str, float], gn_seeds: Optional[Dict[str, list]],
                dgn_seeds: Optional[Dict[str, list]] = None, keys: Optional[Sequence[str]] = None,
                digits: int = 2) -> str:
    """Rows of metric, GN, DGN, delta, GN-vs-GN band, several-seed DGN-GN and the reading."""
    keys = [k for k in (keys or gn) if k in gn and k in dgn]
    n = max((len(v) for v in (gn_seeds or {}).values()), default=0)
    lines = [f"| metric | GN | DGN | Δ (1 seed) | GN-vs-GN spread, {n} seeds (95%) | reading |"
             + (" DGN − GN over seeds (95% CI) |" if dgn_seeds else ""),
             "|---|---:|---:|---:|---:|---|" + ("---|" if dgn_seeds else "")]
    for key in keys:
        delta = float(dgn[key]) - float(gn[key])
        s = spread(gn_seeds[key]) if gn_seeds and key in gn_seeds else None
        band = f"±{s['band']:.{digits}f}" if s else "n/a"
        row = (f"| {key} | {float(gn[key]):.{digits}f} | {float(dgn[key]):.{digits}f} | {delta:+.{digits}f} "
               f"| {band} | {reading(delta, s)} |")
        if dgn_seeds:
            both = dgn_seeds.get(key) is not None and gn_seeds and gn_seeds.get(key) is not None
            row += f" {multi_seed_reading(paired_difference(gn_seeds[key], dgn_seeds[key]) if both else None)} |"
        lines.append(row)
    return "\n".join(lines)
