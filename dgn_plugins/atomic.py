"""Write a file whole or not at all: into a temporary file beside it, then one rename.

An interrupted or failed write (a full disk, an error while drawing a figure,
Ctrl-C) then leaves the old file or none, never half a file; and a reader
running at the same time sees one or the other. The regroup records
(:mod:`dgn_plugins.training.records`) and every report, figure and JSON the
tools write go through :func:`write_atomically`. (Generated data sets are
folders: :mod:`dgn_plugins.data.staging` does the same with a folder.)
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

__all__ = ["write_atomically", "write_text_atomically"]


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


def write_atomically(path, write: Callable[[str], None]) -> None:
    """``write(staging_path)`` fills a temporary file in ``path``'s folder (made if missing),
    which then replaces ``path`` in one rename; on any error the temporary file is removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    stem, suffix = os.path.splitext(os.path.basename(path))
    handle, staging = tempfile.mkstemp(prefix=f".{stem}.", suffix=suffix, dir=directory)
    os.close(handle)
    try:
        write(staging)
        os.chmod(staging, 0o666 & ~_umask())  # mkstemp makes 0600; outputs follow the umask like open() would
        os.replace(staging, path)
    except BaseException:
        if os.path.exists(staging):
            os.remove(staging)
        raise


def write_text_atomically(path, text: str) -> None:
    """:func:`write_atomically` for a text file."""

    def write(staging: str) -> None:
        with open(staging, "w", encoding="utf-8") as f:
            f.write(text)

    write_atomically(path, write)
