"""Regrouping: the poster's rule, its solver, and what runs it during training.

- :mod:`.rule`: ``plan_regroup``, one layer's new grouping from its statistics (pure numpy);
- :mod:`.solver`: size-constrained k-means (transport step, exact 1-D solver, driver);
- :mod:`.policy`: ``RegroupPolicy``, the settings a regroup uses;
- :mod:`.model`: ``regroup_model`` over a network, ranks kept in step by :mod:`.distributed`;
- :mod:`.schedule`, :mod:`.records`, :mod:`.controller`: ``RegroupController``, the
  training-time sequence both toolkit hooks translate to.

Nothing is imported here: ``dgn_plugins.layer`` imports the rule and the policy, and
the model-level modules import the layer.
"""
