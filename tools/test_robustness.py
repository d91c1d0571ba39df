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

from dgn_plugins.evaluation.compare import ComparisonError
from dgn_plugins.evaluation.compare.report import add_output_arguments, comparison_to_dict, emit
from dgn_plugins.evaluation.robustness.corruptions import (
    CORRUPTIONS,
    CorruptionError,
    check_corruptions,
    check_severities,
)


def parse_models(args) -> list:
    """``[(label, config, checkpoint)]`` from ``--models LABEL=CFG,CKPT`` or the positionals."""
    if args.models and args.config:
        raise ComparisonError("give either CONFIG CHECKPOINT or --models, not both")
    if args.config:
        return [(Path(args.config).stem, args.config, args.checkpoint)]
    if not args.models:
        raise ComparisonError("nothing to evaluate: give CONFIG CHECKPOINT or --models LABEL=CONFIG,CHECKPOINT ...")
    models = []
    for item in args.models:
        label, sep, rest = item.partition("=")
        config, comma, checkpoint = rest.partition(",")
        if not sep or not label or not config:
            raise ComparisonError(f"--models expects LABEL=CONFIG,CHECKPOINT, got {item!r}")
        models.append((label, config, checkpoint or None))
    labels = [m[0] for m in models]
    if len(set(labels)) != len(labels):
        raise ComparisonError(f"model labels must be unique, got {labels}")
    return models


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="config of a single model")
    parser.add_argument("checkpoint", nargs="?", help="its checkpoint")
    parser.add_argument("--models", nargs="+", metavar="LABEL=CONFIG,CHECKPOINT",
                        help="several models; the first is the baseline of the table (e.g. GN)")
    parser.add_argument("--corruptions", nargs="+", metavar="NAME", help=f"subset of {', '.join(CORRUPTIONS)}")
    parser.add_argument("--severities", nargs="+", type=int, metavar="S", help="subset of 1 2 3 4 5")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the corruptions")
    parser.add_argument("--metric", help="headline metric key (default: coco/bbox_mAP, ... or mIoU, found in the results)")
    parser.add_argument("--toolkit", choices=("openmmlab", "detectron2"), help="default: from the config's extension")
    parser.add_argument("--work-dir", default="work_dirs/robustness")
    parser.add_argument("--out", type=Path, help="JSON with every cell of every model and the comparison")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides: mmengine's --cfg-options, or Detectron2 keys (yacs or LazyConfig)")
    add_output_arguments(parser)
    return parser


def _cfg_options(items, toolkit: str):
    """mmengine's parsed dict for OpenMMLab; Detectron2 takes the ``KEY=VALUE`` strings as they are."""
    if not items:
        return None
    if toolkit == "detectron2":
        return list(items)
    from mmengine.config import DictAction

    namespace = argparse.Namespace()
    DictAction(option_strings=[], dest="options")(None, namespace, items)
    return namespace.options


def run(args) -> dict:
    from dgn_plugins.evaluation.robustness.evaluators import build_evaluator, guess_toolkit
    from dgn_plugins.evaluation.robustness.sweep import comparison_of, run_sweep

    corruptions, severities = check_corruptions(args.corruptions), check_severities(args.severities)
    models = parse_models(args)
    for label, config, checkpoint in models:
        if not os.path.isfile(config):
            raise ComparisonError(f"{label}: config {config} not found")
        if checkpoint and not os.path.isfile(checkpoint):
            raise ComparisonError(f"{label}: checkpoint {checkpoint} not found")
    results = []
    for label, config, checkpoint in models:
        toolkit = args.toolkit or guess_toolkit(config)
        log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731  (stdout carries the table)
        # pycocotools and the toolkits print progress to stdout, which carries the table
        with contextlib.redirect_stdout(sys.stderr):
            evaluator = build_evaluator(toolkit, config, checkpoint, work_dir=os.path.join(args.work_dir, label),
                                        seed=args.seed, cfg_options=_cfg_options(args.cfg_options, toolkit))
            results.append(run_sweep(evaluator, corruptions, severities, label=label, seed=args.seed,
                                     metric=args.metric, log=log))
    comparison = comparison_of(results)
    payload = {"corruptions": corruptions, "severities": severities, "seed": args.seed,
               "results": results, "comparison": comparison_to_dict(comparison)}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1, allow_nan=True))
    emit(comparison, args)
    return payload


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ComparisonError, CorruptionError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
