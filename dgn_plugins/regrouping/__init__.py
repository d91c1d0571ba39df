"""What one layer needs to regroup itself: the poster's rule, its solver and its policy.

- :mod:`.rule`: ``plan_regroup``, one layer's new grouping from its statistics (pure numpy);
- :mod:`.solver`: size-constrained k-means (transport step, exact 1-D solver, driver);
- :mod:`.policy`: ``RegroupPolicy``, the settings a regroup uses.

It sits below the layer (``dgn_plugins.layer`` imports it) and knows nothing about
networks or training runs: those are :mod:`dgn_plugins.training`. Nothing is imported here.
"""
