"""Robustness to image corruptions (ImageNet-C protocol) of one or more models.

Evaluates each model on the clean test set and on the 15 ImageNet-C
corruptions x severities 1-5 (or the subsets chosen), then reports per cell,
per corruption, per severity, and the summary: detection P (clean AP), mPC
(mean AP over corruptions and severities) and rPC = mPC / P, as MMDetection's
robustness benchmark defines them; segmentation clean mIoU, mean corrupted
mIoU and their ratio. With two or more models, a side-by-side table (deltas vs
the first, e.g. GN).

    # one model
    python tools/test_robustness.py CONFIG CHECKPOINT --out robustness.json
    # GN vs DGN, a subset
    python tools/test_robustness.py --models GN=gn.py,gn.pth DGN=dgn.py,dgn.pth \\
        --corruptions gaussian_noise fog --severities 1 3 5 --out gn_vs_dgn.json

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
from typing import NamedTuple, Optional

from dgn_plugins.atomic import write_text_atomically
from dgn_plugins.cli import (
    KeyValues,
    ToolParser,
    checkpoint_file,
    distinct,
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
    checkpoint: Optional[Path]


def model_argument(text: str) -> Model:
    """``LABEL=CONFIG[,CHECKPOINT]``: a label, a config that exists, a checkpoint file if given."""
    label, sep, rest = text.partition("=")
    config, comma, checkpoint = rest.partition(",")
    missing = ("LABEL=" if not sep else "an empty label" if not label else "an empty config" if not config
               else "an empty checkpoint after the comma" if comma and not checkpoint else None)
    if missing:
        raise argparse.ArgumentTypeError(f"{text!r}: {'no ' + missing if not sep else missing}; "
                                         "expected LABEL=CONFIG,CHECKPOINT")
    return Model(label, existing_file(config), checkpoint_file(checkpoint) if checkpoint else None)


model_argument.role = "input"


def build_parser() -> ToolParser:
    parser = ToolParser(prog="test_robustness.py", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", type=existing_file, help="config of a single model")
    parser.add_argument("checkpoint", nargs="?", type=checkpoint_file, help="its checkpoint")
    parser.add_argument("--models", nargs="+", metavar="LABEL=CONFIG,CHECKPOINT", type=model_argument,
                        action=distinct(key=lambda model: model.label, what="label ",
                                        why="model labels must be unique"),
                        help="several models; the first is the baseline of the table (e.g. GN)")
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
        args.models = [Model(args.config.stem, args.config, args.checkpoint)]
    if not args.models:
        return "nothing to evaluate: give CONFIG CHECKPOINT or --models LABEL=CONFIG,CHECKPOINT ..."
    unweighted = [model.label for model in args.models if model.checkpoint is None]
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
    from dgn_plugins.evaluation.robustness.sweep import comparison_of, run_sweep

    corruptions, severities = check_corruptions(args.corruptions), check_severities(args.severities)
    plans = []  # every model's toolkit and options, settled before the first is evaluated
    for label, config, checkpoint in args.models:
        toolkit = args.toolkit or guess_toolkit(str(config))
        plans.append((label, str(config), None if checkpoint is None else str(checkpoint), toolkit,
                      _cfg_options(args.cfg_options, toolkit)))
        if checkpoint is None:
            print(f"{label}: no checkpoint, evaluated with the weights its config builds (--random-init)",
                  file=sys.stderr)
    results = []
    for label, config, checkpoint, toolkit, options in plans:
        log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731  (stdout carries the table)
        # pycocotools and the toolkits print progress to stdout, which carries the table
        with contextlib.redirect_stdout(sys.stderr):
            evaluator = build_evaluator(toolkit, config, checkpoint, work_dir=os.path.join(args.work_dir, label),
                                        seed=args.seed, cfg_options=options)
            results.append(run_sweep(evaluator, corruptions, severities, label=label, seed=args.seed,
                                     metric=args.metric, log=log))
    comparison = comparison_of(results)
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
