"""The base of errors a user fixes in a config or on the command line.

Our entry points (``tools/*.py``, the Detectron2 launcher) print such an
error as one line on stderr and exit with status 2, as argparse does for a
bad option (:mod:`dgn_plugins.cli`), instead of a traceback;
in library calls they are ordinary exceptions with a message that names the
setting to change.
"""

import sys
from typing import Callable, List, Optional, Tuple, Type

__all__ = ["ConfigError", "USAGE_ERROR", "run_cli"]

#: Exit status of every usage error, in every tool (argparse's).
USAGE_ERROR = 2


class ConfigError(Exception):
    """A setting the user can fix; the message names it."""


def run_cli(main: Callable[[Optional[List[str]]], object], argv: Optional[List[str]] = None,
            errors: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run an entry point's ``main`` and return its exit status: a :class:`ConfigError` (or one of
    ``errors``) is one line on stderr and status 2; so is a usage error, which argparse has already
    printed as one line (:class:`dgn_plugins.cli.ToolParser`) before exiting with status 2."""
    try:
        main(argv)
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        raise  # a message to print: let Python do it
    except (ConfigError, *errors) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return USAGE_ERROR
    return 0
