"""What drives regrouping across a model and a training run.

- :mod:`.model`: ``regroup_model`` over a network, ranks kept in step by :mod:`.distributed`;
- :mod:`.schedule`: when to regroup, in steps or shares of the run;
- :mod:`.records`: one JSON line per regroup, and the reader of those lines;
- :mod:`.controller`: ``RegroupController``, the training-time sequence both toolkit
  hooks (and plain loops) translate to.

It sits above the layer: it imports :mod:`dgn_plugins.layer` and
:mod:`dgn_plugins.regrouping`, never the other way round. Nothing is imported here.
"""
