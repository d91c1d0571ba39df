"""``tools/train.py``: which toolkit a config is for, and that adapter's launcher.

Detectron2 yacs (``.yaml``) and LazyConfig (``.py`` importing detectron2)
files go to :mod:`dgn_plugins.detectron2.launcher` with ``train_net.py``'s
flags; every other config to :mod:`dgn_plugins.openmmlab.launcher` with the
OpenMMLab ``tools/train.py`` flags. The choice is made here, above both
adapters, so that neither adapter knows the other. Each adapter is imported
only when its configs are given: either works without the other installed.
"""
from __future__ import annotations

import os.path as osp
import sys
from typing import List, Optional

from .errors import ConfigError

__all__ = ["is_detectron2_config", "detectron2_argv", "main", "cli"]


def is_detectron2_config(path: str) -> bool:
    """Detectron2 yacs (``.yaml``) or LazyConfig (``.py`` importing detectron2)."""
    if path.endswith((".yaml", ".yml")):
        return True
    if path.endswith(".py") and osp.isfile(path):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        return "from detectron2" in source or "import detectron2" in source
    return False


def detectron2_argv(argv) -> list:
    """``argv`` if it names a Detectron2 config (``--config-file X`` or a first
    positional yacs/LazyConfig file), else ``[]``."""
    if "--config-file" in argv or any(a.startswith("--config-file=") for a in argv):
        return list(argv)
    positional = [a for a in argv if not a.startswith("-")]
    return list(argv) if positional and is_detectron2_config(positional[0]) else []


def _detectron2_main():
    try:
        from dgn_plugins.detectron2.launcher import main as detectron2_main
    except ImportError as error:
        raise ConfigError(
            f"Detectron2 config given, but Detectron2 is not importable ({error}). "
            "Build it from source: see docs/detectron2.md"
        ) from None
    return detectron2_main


def main(argv: Optional[List[str]] = None):
    """Train ``argv`` (``sys.argv[1:]`` when None) with the launcher of the config's toolkit."""
    raw = sys.argv[1:] if argv is None else list(argv)
    if detectron2_argv(raw):
        return _detectron2_main()(raw)
    from dgn_plugins.openmmlab.launcher import main as openmmlab_main

    return openmmlab_main(raw)


def cli(argv: Optional[List[str]] = None) -> int:
    """``main`` for the command line: errors a user can fix are one line on stderr, exit status 2."""
    from dgn_plugins.errors import run_cli

    return run_cli(main, argv)
