"""Which DGN settings, and does DGN beat GN? Fashion-MNIST-C under the ImageNet-C protocol.

Stages (each resumable: a run's result is one JSON file under ``<work-dir>/runs``):

``screen``
    A 2^(6-2) fractional factorial (resolution IV, 16 settings) over six
    factors, two levels each: clustering statistic, percentile p, regroup
    interval, regroup window (early only / throughout), EMA momentum, alpha.
    Seed 0, and GN on the same seed (same initial weights, same batches);
    each level of a factor is seen in 8 runs. Scored on the **validation**
    split only.
``finalists``
    Three finalists from the screen: the two best settings observed and the
    setting that puts every factor at its better level by main effect. Five
    more seeds each (and GN on them), six in all. The finalist with the lowest mean
    paired validation corruption error (all its seeds) is **chosen** and
    written to ``chosen.json``.
``final``
    The chosen setting against GN over ten fresh paired seeds, scored on the
    clean **test** images and the 15 test corruptions x 5 severities. No
    earlier stage reads a test image, and nothing after this stage chooses.
``report``
    Markdown for ``bench/RESULTS.md``: the screen table and main effects, the
    finalists, the final comparison with paired 95% CIs, the regroup jumps.

``--augmix`` (the poster's "A" setting): the ``final`` stage again, every
training with AugMix + the JSD consistency loss (lambda 12; the paper's
severity 3, width 3, depth 1-3, alpha 1), everything else as before: the
setting already chosen (``--chosen``, not retuned), the same seeds, data and
scoring. Only ``final`` and ``report`` run with it; its runs carry the AugMix
settings in their protocol, so they never mix with the plain runs.

Selection metric: the validation corruption error, the mean error over the
ImageNet-C protocol's four held-out corruptions (``speckle_noise``,
``gaussian_blur``, ``spatter``, ``saturate``) x severities 1-5, on 2,000
validation images, as a paired difference to GN on the same seed.

    apt-get update && apt-get install -y dataset-fashion-mnist
    python bench/dgn_study.py all --workers 2     # screen, finalists, final, report
    python bench/dgn_study.py report              # the tables again, from the saved runs
    python bench/dgn_study.py final --augmix --workers 1 --chosen bench/dgn_study_augmix/chosen.json \
        --runs-dir bench/dgn_study_augmix/runs    # the "A" setting, resumable run by run
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from dgn_plugins.evaluation.robustness.corruptions import VALIDATION_CORRUPTIONS

HERE = Path(__file__).resolve().parent  # python puts it on sys.path: fashion_mnist.py imports from here
SCREEN_SEEDS = (0,)
FINALIST_SEEDS = (1, 2, 3, 4, 5)
FINAL_SEEDS = tuple(range(100, 110))
CORRUPTED_VAL_IMAGES = 2000
CORRUPTED_TEST_IMAGES = 2000


# ------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Setting:
    """One DGN configuration. Interval and window are fractions of the run's iterations."""

    cluster_features: tuple = ("mean",)
    percentile: float = 0.75
    interval: float = 0.1
    stop: float = 0.9
    momentum: float = 0.1
    alpha: float = 0.5

    @property
    def key(self) -> str:
        features = "+".join(self.cluster_features)
        return (f"f={features},p={self.percentile:g},int={self.interval:g},stop={self.stop:g},"
                f"m={self.momentum:g},a={self.alpha:g}")

    def layer_options(self, seed: int) -> dict:
        return dict(cluster_features=self.cluster_features, percentile=self.percentile,
                    momentum=self.momentum, alpha=self.alpha, seed=seed)

    def schedule(self, iters: int):
        from dgn_plugins.training.schedule import RegroupSchedule

        return RegroupSchedule(interval=max(1, round(self.interval * iters)), stop=round(self.stop * iters))


#: Two levels per factor: (low, high) as the design's -1 / +1.
FACTORS = {
    "cluster_features": (("mean",), ("mean", "var")),
    "percentile": (0.25, 0.75),
    "interval": (0.025, 0.1),
    "stop": (0.3, 0.9),
    "momentum": (0.01, 0.1),
    "alpha": (0.25, 0.5),
}


def screening_design() -> List[Setting]:
    """2^(6-2), generators E = ABC, F = BCD: main effects clear of two-factor interactions."""
    names = list(FACTORS)
    settings = []
    for a, b, c, d in itertools.product((-1, 1), repeat=4):
        signs = (a, b, c, d, a * b * c, b * c * d)
        settings.append(Setting(**{n: FACTORS[n][(s + 1) // 2] for n, s in zip(names, signs)}))
    return settings


def setting_from_dict(values: dict) -> Setting:
    values = dict(values)
    values["cluster_features"] = tuple(values["cluster_features"])
    return Setting(**values)


# ------------------------------------------------------------------ runs
@dataclass
class Job:
    label: str  # "GN" or a setting key
    setting: Optional[Setting]
    seed: int
    sets: tuple  # ("val",) or ("val", "test")

    @property
    def name(self) -> str:
        safe = self.label.replace(",", "_").replace("=", "").replace("+", "-")
        return f"{safe}__seed{self.seed}__{'-'.join(self.sets)}"


_DATA: Dict[str, object] = {}


def _data(args) -> Dict[str, object]:
    """Training tensors and the scored sets, loaded once per worker process."""
    if not _DATA:
        from fashion_mnist import load_split, to_tensor

        train_x, train_y = load_split(args.data_root, "train")
        _DATA["train"] = (to_tensor(train_x), __import__("torch").from_numpy(train_y))
        if args.augmix:
            _DATA["train_raw"] = train_x
        for split in ("val", "test"):
            with np.load(args.work_dir / "data" / f"{split}.npz") as data:
                _DATA[split] = {key: data[key] for key in data.files}
    return _DATA


def _score(model, scored: dict) -> Dict[str, float]:
    import torch
    from fashion_mnist import error_rate, to_tensor

    labels = torch.from_numpy(scored["labels"])
    out = {"clean": error_rate(model, to_tensor(scored["clean"]), labels)}
    corrupted_labels = labels[:scored["corrupted_images"]]
    for key in scored:
        if "/" in key:
            out[key] = error_rate(model, to_tensor(scored[key]), corrupted_labels)
    return out


def run_job(job: Job, args) -> dict:
    import torch
    from fashion_mnist import SmallResNet, train

    from dgn_plugins import convert_gn_to_dgn

    torch.set_num_threads(1)
    out_path = runs_dir(args) / f"{job.name}.json"
    data = _data(args)
    torch.manual_seed(job.seed)
    model = SmallResNet(args.width, args.group_size, args.stem_stride)
    schedule = None
    if job.setting is not None:
        model = convert_gn_to_dgn(model, **job.setting.layer_options(job.seed))
        schedule = job.setting.schedule(args.iters)
    start = time.perf_counter()
    log = train(model, *data["train"], iters=args.iters, batch=args.batch, lr=args.lr, seed=job.seed,
                schedule=schedule, augmix=augmix_params(args), raw_images=data.get("train_raw"))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    errors = {split: _score(model, {**data[split], "corrupted_images": int(data[split]["corrupted_images"])})
              for split in job.sets}
    result = {
        "label": job.label, "setting": asdict(job.setting) if job.setting else None, "seed": job.seed,
        "errors": errors, "train_s": train_s, "eval_s": time.perf_counter() - start,
        "final_train_loss": log.final_train_loss,
        "regroups": [dict(asdict(e), jump=e.jump) for e in log.events],
        "protocol": protocol(args), "commit": _commit(),
    }
    staging = out_path.with_suffix(".tmp")
    staging.write_text(json.dumps(result, indent=1))
    os.replace(staging, out_path)
    return result


def protocol(args) -> dict:
    """What makes two runs comparable; AugMix runs add their settings (plain runs keep the old keys)."""
    values = dict(iters=args.iters, batch=args.batch, lr=args.lr, width=args.width, group_size=args.group_size,
                  stem_stride=args.stem_stride, corrupted_val_images=CORRUPTED_VAL_IMAGES,
                  corrupted_test_images=CORRUPTED_TEST_IMAGES)
    if args.augmix:
        values["augmix"] = dict(asdict(augmix_params(args)), loss="ce(clean) + 12 * jsd(clean, augmix, augmix)")
    return values


def augmix_params(args):
    from dgn_plugins.augmix import AugMixParams

    return AugMixParams() if args.augmix else None  # the paper's settings


def runs_dir(args) -> Path:
    return args.runs_dir if args.runs_dir is not None else args.work_dir / "runs"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_runs(folder: Path, protocol_now: dict) -> List[dict]:
    """The finished runs in ``folder`` made under ``protocol_now``."""
    runs = []
    for path in sorted(folder.glob("*.json")):
        run = json.loads(path.read_text())
        if run.get("protocol") == protocol_now:
            runs.append(run)
    return runs


def run_jobs(jobs: Sequence[Job], args) -> None:
    """Run the jobs not done yet, ``args.workers`` processes with one thread each."""
    runs_dir(args).mkdir(parents=True, exist_ok=True)
    done = {(r["label"], r["seed"], tuple(r["errors"])) for r in load_runs(runs_dir(args), protocol(args))}
    todo = [j for j in jobs if (j.label, j.seed, j.sets) not in done]
    print(f"{len(jobs) - len(todo)} of {len(jobs)} runs already done; running {len(todo)} "
          f"on {args.workers} worker(s)")
    if not todo:
        return
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(run_job, job, args): job for job in todo}
        for count, future in enumerate(as_completed(futures), 1):
            job, result = futures[future], future.result()
            val = result["errors"]["val"]
            print(f"[{count}/{len(todo)} {time.perf_counter() - start:.0f}s] {job.label} seed {job.seed}: "
                  f"train {result['train_s']:.0f}s, val clean {val['clean']:.2f}%, "
                  f"val corruption {corruption_error(val, VALIDATION_CORRUPTIONS):.2f}%", flush=True)


# ------------------------------------------------------------------ data sets
def prepare_data(args) -> None:
    """Clean and corrupted validation / test images, made once (seeded) and shared by every run."""
    from fashion_mnist import load_split

    from dgn_plugins.evaluation.robustness.corruptions import CORRUPTIONS, SEVERITIES, corrupt_batch

    folder = args.work_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    plans = {"val": (VALIDATION_CORRUPTIONS, CORRUPTED_VAL_IMAGES), "test": (CORRUPTIONS, CORRUPTED_TEST_IMAGES)}
    for split, (corruptions, count) in plans.items():
        path = folder / f"{split}.npz"
        if path.exists():
            continue
        start = time.perf_counter()
        images, labels = load_split(args.data_root, split)
        arrays = {"clean": images, "labels": labels, "corrupted_images": np.array(count)}
        for corruption in corruptions:
            for severity in SEVERITIES:
                arrays[f"{corruption}/{severity}"] = corrupt_batch(images[:count], corruption, severity, seed=0)
        staging = folder / f".{split}.npz"
        with open(staging, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(staging, path)
        print(f"{split}: {len(images)} clean images, {len(corruptions)} corruptions x {len(SEVERITIES)} severities "
              f"on the first {count}, made in {time.perf_counter() - start:.0f} s")


# ------------------------------------------------------------------ statistics
def corruption_error(errors: dict, corruptions: Sequence[str]) -> float:
    """Mean error over every (corruption, severity) cell of ``corruptions``."""
    return float(np.mean([v for k, v in errors.items() if k.split("/")[0] in corruptions and "/" in k]))


def paired(runs: List[dict], label: str, metric, split: str = "val") -> Dict[int, float]:
    """``{seed: metric(label) - metric(GN)}`` over the seeds where both ran on ``split``."""
    by = {(r["label"], r["seed"]): r for r in runs if split in r["errors"]}
    return {seed: metric(by[(label, seed)]["errors"][split]) - metric(by[("GN", seed)]["errors"][split])
            for (lab, seed) in by if lab == label and ("GN", seed) in by}


def mean_ci(values) -> tuple:
    from dgn_plugins.evaluation.robustness.stats import mean_ci as _mean_ci

    return _mean_ci(list(values))


def fmt(values) -> str:
    values = list(values)
    if not values:
        return "-"
    mean, half = mean_ci(values)
    return f"{mean:+.2f} ± {half:.2f}" if math.isfinite(half) else f"{mean:+.2f}"


def val_corruption(errors):
    return corruption_error(errors, VALIDATION_CORRUPTIONS)


def val_clean(errors):
    return errors["clean"]


# ------------------------------------------------------------------ stages
def screen(args) -> None:
    jobs = [Job("GN", None, seed, ("val",)) for seed in SCREEN_SEEDS]
    jobs += [Job(s.key, s, seed, ("val",)) for s in screening_design() for seed in SCREEN_SEEDS]
    run_jobs(jobs, args)


def main_effects(runs: List[dict]) -> Dict[str, Dict[str, float]]:
    """Per factor and level: the mean paired validation corruption difference over the screen's settings."""
    effects = {}
    for factor, levels in FACTORS.items():
        effects[factor] = {}
        for level in levels:
            diffs = [d for s in screening_design() if getattr(s, factor) == level
                     for seed, d in paired(runs, s.key, val_corruption).items() if seed in SCREEN_SEEDS]
            effects[factor][str(level)] = float(np.mean(diffs)) if diffs else math.nan
    return effects


def pick_finalists(runs: List[dict]) -> List[Setting]:
    scores = sorted(((np.mean([d for seed, d in paired(runs, s.key, val_corruption).items()
                               if seed in SCREEN_SEEDS]), s) for s in screening_design()), key=lambda t: t[0])
    effects = main_effects(runs)
    by_effect = Setting(**{f: min(FACTORS[f], key=lambda lv: effects[f][str(lv)]) for f in FACTORS})
    finalists = [by_effect]
    for _, setting in scores:
        if len(finalists) == 3:
            break
        if setting not in finalists:
            finalists.append(setting)
    return finalists


def finalists_stage(args) -> None:
    runs = load_runs(runs_dir(args), protocol(args))
    finalists = pick_finalists(runs)
    (args.work_dir / "finalists.json").write_text(json.dumps([asdict(s) for s in finalists], indent=1))
    seeds = FINALIST_SEEDS
    jobs = [Job("GN", None, seed, ("val",)) for seed in seeds]
    jobs += [Job(s.key, s, seed, ("val",)) for s in finalists for seed in seeds]
    run_jobs(jobs, args)
    runs = load_runs(runs_dir(args), protocol(args))
    chosen = min(finalists, key=lambda s: np.mean(list(paired(runs, s.key, val_corruption).values())))
    (args.work_dir / "chosen.json").write_text(json.dumps(asdict(chosen), indent=1))
    print(f"chosen on validation: {chosen.key}")


def chosen_path(args) -> Path:
    return args.chosen if args.chosen is not None else args.work_dir / "chosen.json"


def final_stage(args) -> None:
    path = chosen_path(args)
    if not path.exists():
        raise SystemExit(f"no {path}: run the screen and finalists stages first (settings are chosen there)")
    chosen = setting_from_dict(json.loads(path.read_text()))
    jobs = [Job(label, setting, seed, ("val", "test")) for seed in FINAL_SEEDS
            for label, setting in (("GN", None), (chosen.key, chosen))]
    run_jobs(jobs, args)


# ------------------------------------------------------------------ report
def report(args) -> str:
    from dgn_plugins.evaluation.robustness.corruptions import CORRUPTIONS

    runs = load_runs(runs_dir(args), protocol(args))
    lines = [f"Protocol: {json.dumps(protocol(args))}; commits {sorted({r['commit'] for r in runs})}", ""]
    screen_runs = [r for r in runs if r["seed"] in SCREEN_SEEDS]
    if screen_runs:
        lines += ["### Screen (validation; paired DGN − GN, seeds " + ", ".join(map(str, SCREEN_SEEDS)) + ")", "",
                  "| setting | val corruption error Δ | val clean error Δ | regroups | mean loss jump |",
                  "|---|---:|---:|---:|---:|"]
        gn = [r for r in screen_runs if r["label"] == "GN"]
        lines.append(f"| GN (absolute) | {np.mean([val_corruption(r['errors']['val']) for r in gn]):.2f} | "
                     f"{np.mean([r['errors']['val']['clean'] for r in gn]):.2f} | 0 | - |")
        rows = []
        for s in screening_design():
            own = [r for r in screen_runs if r["label"] == s.key]
            if not own:
                continue
            corr = paired(runs, s.key, val_corruption)
            clean = paired(runs, s.key, val_clean)
            jumps = [e["jump"] for r in own for e in r["regroups"]]
            rows.append((np.mean([corr[k] for k in corr if k in SCREEN_SEEDS]),
                         f"| {s.key} | {np.mean([corr[k] for k in corr if k in SCREEN_SEEDS]):+.2f} | "
                         f"{np.mean([clean[k] for k in clean if k in SCREEN_SEEDS]):+.2f} | "
                         f"{len(own[0]['regroups'])} | {np.mean(jumps) if jumps else 0:+.3f} |"))
        lines += [row for _, row in sorted(rows, key=lambda t: t[0])]
        lines += ["", "Main effects (mean paired val corruption Δ at each level):", ""]
        for factor, levels in main_effects(runs).items():
            lines.append(f"- {factor}: " + ", ".join(f"{lv} → {v:+.2f}" for lv, v in levels.items()))
    finalists_path = args.work_dir / "finalists.json"
    if finalists_path.exists():
        lines += ["", "### Finalists (validation; paired DGN − GN, 95% CI over all their seeds)", "",
                  "| setting | seeds | val corruption error Δ | val clean error Δ |", "|---|---:|---:|---:|"]
        for values in json.loads(finalists_path.read_text()):
            s = setting_from_dict(values)
            corr, clean = paired(runs, s.key, val_corruption), paired(runs, s.key, val_clean)
            lines.append(f"| {s.key} | {len(corr)} | {fmt(corr.values())} | {fmt(clean.values())} |")
    if chosen_path(args).exists():
        chosen = setting_from_dict(json.loads(chosen_path(args).read_text()))
        final = [r for r in runs if "test" in r["errors"]]
        if final:
            lines += ["", f"### Final: {chosen.key} vs GN, test split, seeds {FINAL_SEEDS[0]}-{FINAL_SEEDS[-1]}", ""]
            lines += final_table(runs, chosen.key, CORRUPTIONS)
    events = [e for r in runs for e in r["regroups"]]
    if events:
        lines += ["", "### Regroups and the training loss (all DGN runs)", ""] + dynamics_table(runs)
    return "\n".join(lines)


def final_table(runs: List[dict], label: str, corruptions: Sequence[str]) -> List[str]:
    def absolute(which, metric):
        return fmt_abs([metric(r["errors"]["test"]) for r in runs if r["label"] == which and "test" in r["errors"]])

    rows = ["| test error (%) | GN | DGN | DGN − GN (paired, 95% CI) |", "|---|---:|---:|---:|"]
    metrics = [("clean", lambda e: e["clean"]),
               ("mean corruption error", lambda e: corruption_error(e, corruptions))]
    metrics += [(c, (lambda c: lambda e: corruption_error(e, (c,)))(c)) for c in corruptions]
    for name, metric in metrics:
        diffs = paired(runs, label, metric, split="test")
        rows.append(f"| {name} | {absolute('GN', metric)} | {absolute(label, metric)} | {fmt(diffs.values())} |")
    return rows


def fmt_abs(values) -> str:
    mean, half = mean_ci(values)
    return f"{mean:.2f} ± {half:.2f}" if math.isfinite(half) else f"{mean:.2f}"


def dynamics_table(runs: List[dict]) -> List[str]:
    """Loss jump and recovery per regroup, by when in training it happened and by interval."""
    rows = ["| regroups at | interval | n | probe loss before | jump (after − before) | "
            "recovered (share) | median iterations to recover |", "|---|---:|---:|---:|---:|---:|---:|"]
    iters = runs[0]["protocol"]["iters"]
    buckets: Dict[tuple, list] = {}
    for r in runs:
        if r["setting"] is None:
            continue
        for e in r["regroups"]:
            phase = "first 30%" if e["step"] <= 0.3 * iters else ("30-60%" if e["step"] <= 0.6 * iters else "60-90%")
            buckets.setdefault((phase, r["setting"]["interval"]), []).append(e)
    for (phase, interval), events in sorted(buckets.items()):
        recovered = [e["recovery_iters"] for e in events if e["recovery_iters"] is not None]
        rows.append(f"| {phase} | {interval:g} | {len(events)} | {np.mean([e['loss_before'] for e in events]):.3f} | "
                    f"{np.mean([e['jump'] for e in events]):+.3f} | {len(recovered) / len(events):.2f} | "
                    f"{np.median(recovered) if recovered else math.nan:.0f} |")
    return rows


# ------------------------------------------------------------------ main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["screen", "finalists", "final", "report", "all"])
    parser.add_argument("--data-root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--work-dir", type=Path, default=Path("work_dirs/dgn_study"))
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, one thread each")
    parser.add_argument("--iters", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--stem-stride", type=int, default=2)
    parser.add_argument("--augmix", action="store_true",
                        help="train with AugMix + JSD (final and report stages only; the setting is not retuned)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="one JSON per finished run (default WORK_DIR/runs)")
    parser.add_argument("--chosen", type=Path, default=None,
                        help="the chosen setting the final stage runs (default WORK_DIR/chosen.json)")
    args = parser.parse_args(argv)
    if args.augmix and args.stage not in ("final", "report"):
        parser.error(f"--augmix runs only the final and report stages (the setting is chosen without AugMix), "
                     f"got {args.stage}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)
    from fashion_mnist import MissingDataError

    try:
        if args.stage != "report":
            prepare_data(args)
        if args.stage in ("screen", "all"):
            screen(args)
        if args.stage in ("finalists", "all"):
            finalists_stage(args)
        if args.stage in ("final", "all"):
            final_stage(args)
    except MissingDataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = report(args)
    print(text)
    (args.work_dir / "report.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
