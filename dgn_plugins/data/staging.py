"""Write a generated data set atomically, and reuse it when its spec matches.

Both generators write into a temporary folder beside the target and rename
it into place, with the spec that produced it in ``spec.json``; concurrent
callers (distributed ranks, parallel tests) therefore never see half a data
set, and a second call with the same spec is free.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Callable, Optional

SPEC_FILE = "spec.json"


def existing_spec(root: str) -> Optional[dict]:
    """The spec a generator left in ``root``, or None."""
    try:
        with open(os.path.join(root, SPEC_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_atomically(root: str, spec: dict, write: Callable[[str], None], prefix: str) -> str:
    """Call ``write(staging_dir)``, then move the result to ``root``; return ``root``."""
    root = os.path.abspath(root)
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        write(staging)
        with open(os.path.join(staging, SPEC_FILE), "w") as f:
            json.dump(spec, f, indent=1)
        if existing_spec(root) == spec:  # a concurrent writer finished first
            shutil.rmtree(staging)
            return root
        if os.path.exists(root):
            shutil.rmtree(root)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def ensure(root: str, spec: dict, generate: Callable[[], str], *, owner: Optional[str] = None) -> str:
    """``generate()`` unless ``root`` already holds ``spec``'s data.

    With ``owner`` set, a folder without a ``spec.json`` is someone's own data
    and is never replaced.
    """
    existing = existing_spec(root)
    if existing == spec:
        return os.path.abspath(root)
    if owner is not None and existing is None and os.path.exists(root):
        raise FileExistsError(f"{root} exists and was not written by {owner}; refusing to replace it")
    try:
        return generate()
    except OSError:
        if existing_spec(root) == spec:  # another process won the race
            return os.path.abspath(root)
        raise
