#!/usr/bin/env python
"""Compare mIoU/aAcc of several semantic-segmentation prediction sets (e.g. GN vs DGN).

    python tools/compare_miou.py --gt data/ade/annotations/validation \
        --preds GN=work_dirs/gn/pred DGN=work_dirs/dgn/pred \
        --num-classes 150 --reduce-zero-label --per-class

Logic lives in ``dgn_plugins.evaluation.compare.miou``; run ``--help`` for every option.
"""
import sys

from dgn_plugins.evaluation.compare.miou import main

if __name__ == "__main__":
    sys.exit(main())
