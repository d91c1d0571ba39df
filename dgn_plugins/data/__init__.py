"""Files and data that the toolkit adapters and the evaluation tooling both use.

- :mod:`.safe_load`: result files and checkpoints loaded as data only (no code runs);
- :mod:`.synthetic_coco`, :mod:`.synthetic_seg`, :mod:`.synthetic_cls`: generated data sets for demos and tests
  (numpy + PIL, no download), written atomically by :mod:`.staging`.

It imports nothing else of the package, so the adapters can use it without depending
on the experiment tooling in :mod:`dgn_plugins.evaluation`. Nothing is imported here.
"""
