"""Experiment tooling, apart from the library: comparing runs (:mod:`.compare`), corruption
robustness (:mod:`.robustness`), plots of groupings (:mod:`.plots`) and the demo's noise
bands (:mod:`.demo_noise`).

Needs what the core does not (scipy's stats, matplotlib, pycocotools, a toolkit). It is the
top of the package: it may import the toolkit adapters, and nothing in the core or the
adapters imports it.
"""
