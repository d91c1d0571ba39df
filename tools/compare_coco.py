#!/usr/bin/env python
"""Compare COCO bbox/segm AP of several result sets (e.g. GN vs DGN).

    python tools/compare_coco.py --gt instances_val2017.json \
        --results GN=gn/results.pkl DGN=dgn/coco_instances_results.json --per-category

Logic lives in ``dgn_plugins.evaluation.compare.coco``; run ``--help`` for every option.
"""
import sys

from dgn_plugins.evaluation.compare.coco import main

if __name__ == "__main__":
    sys.exit(main())
