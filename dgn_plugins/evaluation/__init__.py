"""Experiment tooling, apart from the library: comparing runs (:mod:`.compare`), corruption
robustness (:mod:`.robustness`), plots of groupings (:mod:`.plots`), generated data sets
(:mod:`.datasets`) and the safe loader of shared result files (:mod:`.safe_load`).

Needs what the core does not (scipy's stats, matplotlib, pycocotools, a toolkit); nothing
in the core imports it.
"""
