"""Import this module to allow-list MMEngine's checkpoint types: ``--resume`` in a toolkit's own ``train.py``.

``tools/train.py`` (ours) calls :func:`~dgn_plugins.openmmlab.allow_checkpoint_types`
itself; a toolkit's own launcher (mmpretrain's ``tools/train.py``) does not,
and on torch >= 2.6 cannot resume from MMEngine's checkpoints. The allow-list is
a process-wide change, so ``import dgn_plugins.openmmlab`` never makes it; a
config asks for it by naming this module::

    custom_imports = dict(imports=['dgn_plugins.openmmlab', 'dgn_plugins.openmmlab.resumable'])

as the shipped MMPretrain configs do. What is allowed, and why: :mod:`.checkpoint`.
"""
from .checkpoint import allow_mmengine_checkpoint_types

allow_mmengine_checkpoint_types()
