"""Robustness to image corruptions (ImageNet-C protocol) of one or more models.

Evaluates each model on the clean test set and on the 15 ImageNet-C
corruptions x severities 1-5 (or the subsets chosen), then reports per cell,
per corruption, per severity, and the summary: detection P (clean AP), mPC
(mean AP over corruptions and severities) and rPC = mPC / P, as MMDetection's
robustness benchmark defines them; segmentation clean mIoU, mean corrupted
mIoU and their ratio; classification (MMPretrain configs) the clean error, the
mean corruption error (the CIFAR-C convention), ImageNet-C's mCE and relative
mCE (AlexNet-normalised), each under its own name. With two or more models, a
side-by-side table (deltas vs the first, e.g. GN).

Several checkpoints per model (``LABEL=CONFIG,CKPT1,CKPT2,...``: one per
training seed, every model the same number) give the means over checkpoints
and, next to each delta, the paired difference's 95% CI (checkpoint i of a
model paired with checkpoint i of the first model).

``--corruption-data ROOT`` scores the corrupted cells on a published benchmark
instead of corrupting on the fly: CIFAR-10/100-C (``ROOT/<corruption>.npy``
and ``ROOT/labels.npy``) or ImageNet-C (``ROOT/<corruption>/<severity>/<class>/``).

    # one model
    python tools/test_robustness.py CONFIG CHECKPOINT --out robustness.json
    # GN vs DGN, a subset
    python tools/test_robustness.py --models GN=gn.py,gn.pth DGN=dgn.py,dgn.pth \\
        --corruptions gaussian_noise fog --severities 1 3 5 --out gn_vs_dgn.json
    # classifiers, three seeds each, on CIFAR-100-C
    python tools/test_robustness.py --corruption-data data/CIFAR-100-C \\
        --models GN=configs/mmpretrain/wrn40-2_gn_augmix-jsd_cifar100.py,gn0.pth,gn1.pth,gn2.pth \\
                 DGN=configs/mmpretrain/wrn40-2_dgn_augmix-jsd_cifar100.py,dgn0.pth,dgn1.pth,dgn2.pth

A model given without a checkpoint is refused: its scores would be those of
random weights. ``--random-init`` evaluates it anyway, on purpose (with the
weights its config builds; Detectron2: its ``MODEL.WEIGHTS`` if set).

Corruptions come from ``imagecorruptions-imaug==1.1.5`` (the numpy-2 drop-in for
``imagecorruptions``), seeded per image by ``--seed``: a rerun gives the same images.
They run in RGB, the library's convention, in both toolkits (a BGR image, as
mmcv and Detectron2 load it, is turned to RGB and back), so an image file gets
the same corrupted pixels in either. mmdet's own ``Corrupt`` corrupts the BGR
array, so the colour-dependent corruptions (snow, frost, jpeg_compression, ...)
differ from mmdet's benchmark images; mPC and rPC are defined the same.

Detectron2 models: a ``.yaml`` config (``MODEL.DGN`` options, ``NORM: "DGN"``
allowed) is recognised by its extension; a LazyConfig ``.py`` needs
``--toolkit detectron2``. The checkpoint loads with ``DetectionCheckpointer``,
the test set is ``DATASETS.TEST`` (``dataloader.test``) scored by
``COCOEvaluator`` (headline ``bbox/AP``) or ``SemSegEvaluator``
(``sem_seg/mIoU``); ``--cfg-options`` takes Detectron2 keys:

    python tools/test_robustness.py --models GN=gn.yaml,gn/model_final.pth DGN=dgn.yaml,dgn/model_final.pth \
        --corruptions fog --severities 3 --cfg-options MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.05
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import NamedTuple, Optional, Tuple

from dgn_plugins.atomic import write_text_atomically
from dgn_plugins.cli import (
    KeyValues,
    ToolParser,
    checkpoint_file,
    distinct,
    existing_dir,
    existing_file,
    integer,
    key_value,
    output_dir,
    output_file,
    run_tool,
)
from dgn_plugins.evaluation.compare import ComparisonError
from dgn_plugins.evaluation.compare.report import add_output_arguments, comparison_to_dict, emit
from dgn_plugins.evaluation.robustness.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    CorruptionError,
    check_corruptions,
    check_severities,
)


class Model(NamedTuple):
    label: str
    config: Path
    checkpoints: Tuple[Path, ...]  # none (--random-init), one, or one per training seed


def model_argument(text: str) -> Model:
    """``LABEL=CONFIG[,CHECKPOINT[,CHECKPOINT...]]``: a label, a config that exists, checkpoint files if given."""
    label, sep, rest = text.partition("=")
    config, comma, checkpoints = rest.partition(",")
    names = checkpoints.split(",") if comma else []
    missing = ("LABEL=" if not sep else "an empty label" if not label else "an empty config" if not config
               else "an empty checkpoint after a comma" if any(not name for name in names) else None)
    if missing:
        raise argparse.ArgumentTypeError(f"{text!r}: {'no ' + missing if not sep else missing}; "
                                         "expected LABEL=CONFIG,CHECKPOINT[,CHECKPOINT...]")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: a checkpoint given twice; each seed's checkpoint once")
    return Model(label, existing_file(config), tuple(checkpoint_file(name) for name in names))


model_argument.role = "input"


def build_parser() -> ToolParser:
    parser = ToolParser(prog="test_robustness.py", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", type=existing_file, help="config of a single model")
    parser.add_argument("checkpoint", nargs="?", type=checkpoint_file, help="its checkpoint")
    parser.add_argument("--models", nargs="+", metavar="LABEL=CONFIG,CHECKPOINT[,...]", type=model_argument,
                        action=distinct(key=lambda model: model.label, what="label ",
                                        why="model labels must be unique"),
                        help="several models, each with one checkpoint or one per seed (all the same number); "
                             "the first is the baseline of the table (e.g. GN)")
    parser.add_argument("--random-init", action="store_true",
                        help="evaluate a model given without a checkpoint anyway, with the weights its config "
                             "builds (random initialisation; Detectron2: its MODEL.WEIGHTS if set)")
    parser.add_argument("--corruptions", nargs="+", metavar="NAME", choices=CORRUPTIONS,
                        action=distinct(what="corruption "), help=f"subset of {', '.join(CORRUPTIONS)}")
    parser.add_argument("--severities", nargs="+", type=integer(min(SEVERITIES), max(SEVERITIES)), metavar="S",
                        action=distinct(what="severity "), help="subset of 1 2 3 4 5")
    parser.add_argument("--seed", type=integer(0), default=0, help="base seed of the corruptions")
    parser.add_argument("--metric", help="headline metric key (default: coco/bbox_mAP, ... or mIoU, found in the results)")
    parser.add_argument("--toolkit", choices=("openmmlab", "detectron2"), help="default: from the config's extension")
    parser.add_argument("--work-dir", type=output_dir, default="work_dirs/robustness")
    parser.add_argument("--out", type=output_file, help="JSON with every cell of every model and the comparison")
    parser.add_argument("--corruption-data", type=existing_dir, metavar="ROOT",
                        help="a published benchmark for the corrupted cells: CIFAR-10/100-C (<corruption>.npy, "
                             "labels.npy) or ImageNet-C (<corruption>/<severity>/<class>/); default: corrupt on the fly")
    parser.add_argument("--cfg-options", nargs="+", type=key_value(), action=KeyValues, default={}, metavar="KEY=VALUE",
                        help="config overrides: mmengine's --cfg-options, or Detectron2 keys (yacs or LazyConfig)")
    add_output_arguments(parser)
    parser.add_check(_check_models)
    return parser


def _check_models(args) -> Optional[str]:
    """One way to name the models, and a checkpoint for each unless ``--random-init``;
    ``args.models`` becomes the list of :class:`Model` s either way."""
    if args.models and args.config:
        return "give either CONFIG CHECKPOINT or --models, not both"
    if args.config:
        args.models = [Model(args.config.stem, args.config, (args.checkpoint,) if args.checkpoint else ())]
    if not args.models:
        return "nothing to evaluate: give CONFIG CHECKPOINT or --models LABEL=CONFIG,CHECKPOINT ..."
    counts = {model.label: len(model.checkpoints) for model in args.models if model.checkpoints}
    if len(set(counts.values())) > 1:
        return (f"--models: checkpoints per model differ ({', '.join(f'{k}: {v}' for k, v in counts.items())}); "
                "give every model one checkpoint per seed, the same seeds in the same order")
    unweighted = [model.label for model in args.models if not model.checkpoints]
    if unweighted and not args.random_init:
        return (f"no checkpoint for {', '.join(unweighted)}: its scores would be those of random weights; give "
                "LABEL=CONFIG,CHECKPOINT (or CONFIG CHECKPOINT), or --random-init to evaluate it so on purpose")
    return None


def _cfg_options(options: dict, toolkit: str):
    """mmengine's parsed values for OpenMMLab; Detectron2 takes ``KEY=VALUE`` strings as they are."""
    if not options:
        return None
    if toolkit == "detectron2":
        return [f"{key}={value}" for key, value in options.items()]
    from mmengine.config import DictAction

    try:
        return {key: DictAction._parse_iterable(value) for key, value in options.items()}
    except AssertionError as error:  # mmengine's check of balanced brackets
        raise ComparisonError(f"--cfg-options: {error}") from None


def run(args) -> dict:
    from dgn_plugins.evaluation.robustness.evaluators import build_evaluator, guess_toolkit
    from dgn_plugins.evaluation.robustness.sweep import comparison_of, comparison_over_checkpoints, run_sweep

    corruptions, severities = check_corruptions(args.corruptions), check_severities(args.severities)
    seeds = max(len(model.checkpoints) for model in args.models) or 1
    plans = []  # every model's toolkit and options, settled before the first is evaluated
    for label, config, checkpoints in args.models:
        toolkit = args.toolkit or guess_toolkit(str(config))
        if args.corruption_data is not None and toolkit != "openmmlab":
            raise ValueError(f"--corruption-data: {label} is a {toolkit} model; the published sets are read by "
                             "the OpenMMLab (MMPretrain) evaluator")
        plans.append((label, str(config), [str(c) for c in checkpoints] or [None] * seeds, toolkit,
                      _cfg_options(args.cfg_options, toolkit)))
        if not checkpoints:
            print(f"{label}: no checkpoint, evaluated with the weights its config builds (--random-init)",
                  file=sys.stderr)
    extra = {} if args.corruption_data is None else {"corruption_data": str(args.corruption_data)}
    runs = [[] for _ in range(seeds)]  # runs[i]: every model's i-th checkpoint
    for label, config, checkpoints, toolkit, options in plans:
        log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731  (stdout carries the table)
        for index, checkpoint in enumerate(checkpoints):
            work_dir = os.path.join(args.work_dir, label if seeds == 1 else f"{label}-{index}")
            # pycocotools and the toolkits print progress to stdout, which carries the table
            with contextlib.redirect_stdout(sys.stderr):
                evaluator = build_evaluator(toolkit, config, checkpoint, work_dir=work_dir, seed=args.seed,
                                            cfg_options=options, **extra)
                result = run_sweep(evaluator, corruptions, severities, label=label, seed=args.seed,
                                   metric=args.metric, log=log)
            result["checkpoint"] = checkpoint
            runs[index].append(result)
    comparison = comparison_of(runs[0]) if seeds == 1 else comparison_over_checkpoints(runs)
    results = runs[0] if seeds == 1 else [result for run in runs for result in run]
    payload = {"corruptions": corruptions, "severities": severities, "seed": args.seed,
               "results": results, "comparison": comparison_to_dict(comparison)}
    if args.out is not None:
        write_text_atomically(args.out, json.dumps(payload, indent=1, allow_nan=True))
    emit(comparison, args)
    return payload


def main(argv=None) -> int:
    return run_tool(build_parser(), argv, run, errors=(ComparisonError, CorruptionError, ValueError, KeyError))


if __name__ == "__main__":
    sys.exit(main())
