"""The base of errors a user fixes in a config or on the command line.

Our entry points (``tools/*.py``, the Detectron2 launcher) print such an
error as one line on stderr and exit with status 2, instead of a traceback;
in library calls they are ordinary exceptions with a message that names the
setting to change.
"""

import sys
from typing import Callable, List, Optional

__all__ = ["ConfigError", "run_cli"]


class ConfigError(Exception):
    """A setting the user can fix; the message names it."""


def run_cli(main: Callable[[Optional[List[str]]], object], argv: Optional[List[str]] = None) -> int:
    """Run an entry point's ``main``: a :class:`ConfigError` is one line on stderr and exit status 2."""
    try:
        main(argv)
    except ConfigError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0
