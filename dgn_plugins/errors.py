"""The base of errors a user fixes in a config or on the command line.

Our entry points (``tools/*.py``, the Detectron2 launcher) print such an
error as one line on stderr and exit with status 2, instead of a traceback;
in library calls they are ordinary exceptions with a message that names the
setting to change.
"""

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """A setting the user can fix; the message names it."""
