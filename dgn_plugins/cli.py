"""Command-line arguments checked before any work: one line per bad value, exit status 2.

Every tool builds its parser from :class:`ToolParser` and types its options
with the functions below, so a bad value is caught by argparse while parsing,
before a model is built or a file is written, and is reported the same way by
every tool: one line on stderr naming the option, the value and what is
expected (``<tool>: error: argument --num-classes: '0': expected an integer
>= 1``), and exit status 2, argparse's own and that of
:func:`dgn_plugins.errors.run_cli` for errors found later.

Paths say what they are for. A value of an input type (:func:`existing_file`,
:func:`existing_dir`, :func:`existing_path`, :func:`checkpoint_file`) is read
by the tool, one of an output type (:func:`output_file`, :func:`output_dir`)
written. Once every option is parsed, :class:`ToolParser` refuses an output
that is one of the inputs or lies inside an input folder, and two options
writing the same path: a slip of the keyboard must not replace the only copy
of a checkpoint or a ground truth.

No toolkit is imported here: the launchers and the evaluation tools both use it.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Type

from .errors import USAGE_ERROR, run_cli

__all__ = [
    "USAGE_ERROR", "ToolParser", "run_tool", "integer", "real", "existing_file", "existing_dir",
    "existing_path", "checkpoint_file", "output_file", "output_dir", "Labelled", "labelled", "key_value",
    "KeyValues", "distinct",
]

ArgumentTypeError = argparse.ArgumentTypeError


def _one_line(message) -> str:
    return " ".join(str(message).split())


class ToolParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, and which keeps outputs off the inputs.

    argparse prints the usage block before its error; here the error alone is
    printed (``--help`` shows the usage), so every bad input reads as one line.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._checks: List[Callable[[argparse.Namespace], Optional[str]]] = []

    def add_check(self, check: Callable[[argparse.Namespace], Optional[str]]) -> None:
        """``check(args)``, run once every option is parsed, for what no single option can tell
        (options that exclude or need each other); a message it returns is the error."""
        self._checks.append(check)

    def error(self, message):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {_one_line(message)}\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        self._check_outputs(namespace)
        for check in self._checks:
            message = check(namespace)
            if message:
                self.error(message)
        return namespace, extras

    def _paths(self, namespace, role: str) -> Iterator[Tuple[str, Path]]:
        """``(option, path)`` of every value of an option whose type has this ``role``."""
        for action in self._actions:
            if getattr(action.type, "role", None) == role:
                for path in _path_values(getattr(namespace, action.dest, None)):
                    yield _option_name(action), path

    def _check_outputs(self, namespace) -> None:
        inputs = [(option, path, os.path.realpath(path)) for option, path in self._paths(namespace, "input")]
        written = {}
        for option, path in self._paths(namespace, "output"):
            real = os.path.realpath(path)
            for input_option, input_path, input_real in inputs:
                if real == input_real:
                    self.error(f"argument {option}: {path} is the input given to {input_option}; "
                               "refusing to overwrite it: write the output elsewhere")
                if os.path.isdir(input_real) and real.startswith(input_real.rstrip(os.sep) + os.sep):
                    self.error(f"argument {option}: {path} lies inside the input folder {input_path} "
                               f"({input_option}); write the output elsewhere")
            if real in written:
                self.error(f"argument {option}: {path} is also written by {written[real]}; give each output its own path")
            written[real] = option


def run_tool(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], work: Callable[[argparse.Namespace], object],
             errors: Tuple[Type[BaseException], ...] = ()) -> int:
    """A tool's ``main``: parse ``argv`` (a usage error is one line, status 2), then ``work(args)``;
    a :class:`~dgn_plugins.errors.ConfigError` or one of ``errors`` (bad input files found while
    working) becomes one line ``error: ...`` and status 2 (:func:`~dgn_plugins.errors.run_cli`).
    Returns the exit status, so that ``main(argv)`` can be called as well as run."""
    return run_cli(lambda args: work(parser.parse_args(args)), argv, errors)


def _option_name(action: argparse.Action) -> str:
    return action.option_strings[0] if action.option_strings else (action.metavar or action.dest)


def _path_values(value) -> Iterator[Path]:
    if isinstance(value, os.PathLike):
        yield Path(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _path_values(item)


def _role(role: str):
    def mark(function):
        function.role = role
        return function

    return mark


# -------------------------------------------------------------------- numbers
def _bounds(low, high, low_open=False, high_open=False) -> str:
    low, high = (f"{v:g}" if isinstance(v, float) else v for v in (low, high))
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def integer(low: Optional[int] = None, high: Optional[int] = None) -> Callable[[str], int]:
    """An ``int`` within ``[low, high]`` (either end may be left open with None)."""
    expected = f"expected an integer{_bounds(low, high)}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ArgumentTypeError(f"{text!r}: {expected}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise ArgumentTypeError(f"{text!r}: {expected}")
        return value

    parse.__name__ = "integer"
    return parse


def real(low: Optional[float] = None, high: Optional[float] = None, *, low_open: bool = False,
         high_open: bool = False) -> Callable[[str], float]:
    """A finite ``float`` within the bounds (``low_open``/``high_open``: the end itself excluded)."""
    expected = f"expected a finite number{_bounds(low, high, low_open, high_open)}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ArgumentTypeError(f"{text!r}: {expected}") from None
        if (not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low))
                or (high is not None and (value >= high if high_open else value > high))):
            raise ArgumentTypeError(f"{text!r}: {expected}")
        return value

    parse.__name__ = "real"
    return parse


# ---------------------------------------------------------------------- paths
def _path(text: str) -> Path:
    if not text:
        raise ArgumentTypeError("an empty path")
    return Path(text)


def _readable(text: str, path: Path) -> Path:
    if not os.access(path, os.R_OK):
        raise ArgumentTypeError(f"{text}: not readable (check its permissions)")
    return path


@_role("input")
def existing_file(text: str) -> Path:
    """A file that exists and can be read."""
    path = _path(text)
    if path.is_dir():
        raise ArgumentTypeError(f"{text}: a folder, expected a file")
    if not path.is_file():
        raise ArgumentTypeError(f"{text}: no such file")
    return _readable(text, path)


@_role("input")
def existing_dir(text: str) -> Path:
    """A folder that exists and can be read."""
    path = _path(text)
    if path.exists() and not path.is_dir():
        raise ArgumentTypeError(f"{text}: a file, expected a folder")
    if not path.is_dir():
        raise ArgumentTypeError(f"{text}: no such folder")
    return _readable(text, path)


@_role("input")
def existing_path(text: str) -> Path:
    """A file or a folder that exists and can be read."""
    path = _path(text)
    if not path.exists():
        raise ArgumentTypeError(f"{text}: no such file or folder")
    return _readable(text, path)


@_role("input")
def checkpoint_file(text: str) -> Path:
    """A ``torch.save`` file: a zip archive (the format since torch 1.6) or a pickle (older files,
    Detectron2's ``.pkl``), told by its first bytes, so a text file or a log given by mistake is
    refused here rather than by a ``KeyError`` from deep inside ``torch.load``."""
    path = existing_file(text)
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise ArgumentTypeError(f"{text}: an empty file, expected a checkpoint")
    if not (head == b"PK\x03\x04" or head[:1] == b"\x80"):
        raise ArgumentTypeError(f"{text}: not a checkpoint (torch.save writes a zip archive or a pickle; "
                                f"this file starts with {head!r})")
    return path


def _check_folder_for(text: str, folder: Path) -> None:
    """The nearest existing folder above an output must be a folder we may write in (missing ones are made)."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ArgumentTypeError(f"{text}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ArgumentTypeError(f"{text}: cannot write in {parent} (check its permissions)")
            return


@_role("output")
def output_file(text: str) -> Path:
    """A file to write: not a folder, in a folder that exists or can be made."""
    path = _path(text)
    if path.is_dir():
        raise ArgumentTypeError(f"{text}: a folder, expected a file name")
    _check_folder_for(text, path.absolute().parent)
    return path


@_role("output")
def output_dir(text: str) -> Path:
    """A folder to write into: not a file, and it exists or can be made."""
    path = _path(text)
    if path.exists() and not path.is_dir():
        raise ArgumentTypeError(f"{text}: a file, expected a folder")
    _check_folder_for(text, path.absolute())
    return path


# ------------------------------------------------------------- pairs and sets
class Labelled(NamedTuple):
    """``LABEL=PATH`` as parsed: the label a result set is shown under, and its path."""

    label: str
    path: Path


def labelled(path_type: Callable[[str], Path]) -> Callable[[str], Labelled]:
    """``LABEL=PATH`` with both parts, the path checked by ``path_type``; a bare ``PATH``
    (no ``=``, or a ``/`` before it) is labelled by its file stem."""

    def parse(text: str) -> Labelled:
        label, sep, path = text.partition("=")
        if not sep or "/" in label or "\\" in label:
            checked = path_type(text)
            return Labelled(checked.stem, checked)
        if not label:
            raise ArgumentTypeError(f"{text!r}: an empty label; expected LABEL=PATH")
        if not path:
            raise ArgumentTypeError(f"{text!r}: an empty path; expected LABEL=PATH")
        return Labelled(label, path_type(path))

    parse.__name__ = "LABEL=PATH"
    parse.role = getattr(path_type, "role", None)
    return parse


def key_value(parse_value: Callable[[str], object] = str) -> Callable[[str], Tuple[str, object]]:
    """``KEY=VALUE`` with a key, the value read by ``parse_value`` (whose errors become one line)."""

    def parse(text: str):
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
        try:
            return key.strip(), parse_value(value)
        except (ValueError, TypeError, AssertionError, SyntaxError) as error:
            raise ArgumentTypeError(f"{text!r}: cannot read the value ({_one_line(error)})") from None

    parse.__name__ = "KEY=VALUE"
    return parse


class KeyValues(argparse.Action):
    """``KEY=VALUE ...`` (typed by :func:`key_value`) into a dict, added to any earlier ones, as
    mmengine's ``DictAction`` does; a key given twice is refused (which one was meant?)."""

    def __call__(self, parser, namespace, values, option_string=None):
        options = dict(getattr(namespace, self.dest, None) or {})
        given = set()
        for key, value in values:
            if key in given:
                parser.error(f"argument {option_string}: {key} given twice")
            given.add(key)
            options[key] = value
        setattr(namespace, self.dest, options)


def distinct(key: Callable = lambda value: value, what: str = "", why: str = "") -> type:
    """An action for ``nargs='+'`` options whose values must differ (by ``key``), e.g. seeds or labels."""

    class Distinct(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            seen = set()
            for value in values:
                k = key(value)
                if k in seen:
                    parser.error(f"argument {option_string or _option_name(self)}: {what}{k} given twice"
                                 + (f"; {why}" if why else ""))
                seen.add(k)
            setattr(namespace, self.dest, list(values))

    return Distinct
