"""Load result files and checkpoints that someone else wrote, running no code.

A pickle names functions and the unpickler calls them; whoever wrote the file
chooses which. Results and checkpoints are downloaded and shared, so our tools
load them by an allow-list of what toolkit dumps hold and nothing else:

- plain pickles (mmengine ``DumpResults``, mmdet ``DumpDetResults``, written
  with protocol 2): :class:`DataUnpickler`, which resolves only the
  reconstructors of numpy arrays and scalars, torch tensors, ``OrderedDict``,
  ``set`` and ``bytes`` (``_codecs.encode`` to latin-1 only). A tensor's
  storage comes through ``torch.storage._load_from_bytes``, which calls
  ``torch.load(weights_only=False)``: it is replaced by a weights-only load;
- ``torch.save`` files (Detectron2's ``instances_predictions.pth``,
  checkpoints): ``torch.load(weights_only=True)`` with numpy's reconstructors
  (and MMEngine's checkpoint types, :mod:`dgn_plugins.openmmlab.checkpoint`,
  when MMEngine is installed) allowed for that call only. Where torch has no
  such allow-list (before 2.6), ``torch.load`` unpickles through
  :class:`DataUnpickler` instead (its ``pickle_module``), which allows the
  same names and nothing else.

Anything else stops the load with :class:`UnsafeFileError` naming the global.
"""
from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import re
import types
import warnings
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

__all__ = ["UnsafeFileError", "DataUnpickler", "numpy_globals", "load_pickle", "load_torch_file", "load_data_file"]


class UnsafeFileError(pickle.UnpicklingError):
    """The file references something other than data; nothing it names was run."""


def numpy_globals() -> List:
    """What pickling a numpy array or scalar references, for this numpy."""
    try:  # numpy >= 2 pickles through numpy._core
        from numpy._core.multiarray import _reconstruct, scalar
        from numpy._core.numeric import _frombuffer
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
        from numpy.core.numeric import _frombuffer
    dtypes = [type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDGSUV"]
    return [_reconstruct, scalar, _frombuffer, np.ndarray, np.dtype, *dtypes]


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``_codecs.encode`` as protocol 2 uses it for ``bytes``: latin-1 only."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafeFileError(f"_codecs.encode with {encoding!r} is not how bytes are pickled")
    return text.encode("latin1", errors)


def _storage_from_bytes(data: bytes):
    """``torch.storage._load_from_bytes``, weights-only."""
    import torch

    try:
        return torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeFileError(_one_line(error)) from None


def _torch_globals() -> Dict[Tuple[str, str], object]:
    import torch
    import torch._utils

    allowed = {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): getattr(torch._utils, "_rebuild_parameter_with_state", None),
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
    }
    for name in dir(torch):
        if isinstance(getattr(torch, name, None), torch.dtype):
            allowed[("torch", name)] = getattr(torch, name)
    return {key: value for key, value in allowed.items() if value is not None}


def _data_globals() -> Dict[Tuple[str, str], object]:
    allowed = {
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "complex"): complex,
        ("builtins", "slice"): slice,
        ("builtins", "bytearray"): bytearray,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "defaultdict"): collections.defaultdict,
    }
    for obj in numpy_globals():
        allowed[(obj.__module__, obj.__qualname__)] = obj
    # numpy 1.x and 2.x spell the module of the reconstructors differently.
    for old, new in (("numpy.core.multiarray", "numpy._core.multiarray"), ("numpy.core.numeric", "numpy._core.numeric")):
        for (module, name), obj in list(allowed.items()):
            if module == new:
                allowed[(old, name)] = obj
            elif module == old:
                allowed[(new, name)] = obj
    try:
        allowed.update(_torch_globals())
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return allowed


def python3_name(module: str, name: str) -> Tuple[str, str]:
    """A global's Python 3 name: protocol 2 writes Python 2's (``__builtin__.set``), mapped as pickle.Unpickler does."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class DataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the reconstructors of plain data (see the module doc)."""

    _allowed = None

    def find_class(self, module: str, name: str):
        module, name = python3_name(module, name)
        if DataUnpickler._allowed is None:
            DataUnpickler._allowed = _data_globals()
        try:
            return DataUnpickler._allowed[(module, name)]
        except KeyError:
            raise UnsafeFileError(
                f"it references {module}.{name}, which is not plain data (dicts, lists, arrays, tensors); "
                "it was not loaded, as that could run code"
            ) from None


def load_pickle(handle):
    """Unpickle from an open binary file with :class:`DataUnpickler`."""
    return DataUnpickler(handle).load()


# torch >= 2.4: "Unsupported global: GLOBAL x.y"; before: "Unsupported class x.y" (legacy files: __builtin__).
_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|Unsupported operand (\d+)|"
                          r"Trying to load unsupported GLOBAL ([\w.]+)|Unsupported class ([\w.]+)")


def _one_line(error: Exception) -> str:
    text = str(error)
    match = _UNSUPPORTED.search(text)
    if match and match.group(2):
        return (f"not a torch.save file that loads as data (pickle opcode {match.group(2)} is not allowed); "
                "a plain pickle is not a checkpoint")
    if match and (match.group(1) or match.group(3) or match.group(4)):
        name = match.group(1) or match.group(3) or match.group(4)
        name = name if "." in name else f"builtins.{name}"  # torch names builtins bare
        name = re.sub(r"^__builtin__\.", "builtins.", name)  # protocol-2 pickles spell builtins the Python 2 way
        return (f"it references {name}, which is not plain data (dicts, lists, "
                "arrays, tensors); it was not loaded, as that could run code")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return first[:300]


def load_torch_file(path, extra_globals=()):
    """``torch.load(path, weights_only=True)`` with numpy's types and ``extra_globals`` allowed for this call.

    A toolkit's checkpoint types are the caller's to add (MMEngine's:
    ``dgn_plugins.openmmlab.checkpoint.mmengine_checkpoint_globals()``), as
    objects or ``(callable, "module.name")`` pairs. Raises
    :class:`UnsafeFileError` (one line, naming the global) when the file
    needs anything else.
    """
    import torch

    from .. import compat

    if not compat.HAS_SAFE_GLOBALS:  # torch < 2.6: our unpickler does the allow-listing
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*weights_only=False.*", category=FutureWarning)
            return torch.load(path, map_location="cpu", weights_only=False,
                              pickle_module=_restricted_pickle_module(extra_globals))
    allowed = list(numpy_globals()) + list(extra_globals)
    process_wide = compat.get_safe_globals()
    try:
        with compat.safe_globals(allowed), warnings.catch_warnings():
            # torch warns about the protocol of any non-torch pickle; the refusal below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeFileError(_one_line(error)) from None
    finally:
        # torch's safe_globals drops its entries on exit, those allowed process-wide before it too (MMEngine's,
        # which a launcher allow-lists for MMEngine's own loads): put them back.
        compat.add_safe_globals(process_wide)


def _restricted_pickle_module(extra_globals) -> types.ModuleType:
    """A ``pickle_module`` for ``torch.load``: :class:`DataUnpickler` plus ``extra_globals``.

    ``torch.load`` resolves storage types itself and asks the module's
    ``Unpickler`` for every other global, so the file runs nothing outside the list.
    """
    extra = {}
    for item in extra_globals:
        if isinstance(item, tuple):  # (callable, "module.name"), as torch's allow-list takes them
            obj, qualified = item
            module, _, name = qualified.rpartition(".")
        else:
            obj, module, name = item, item.__module__, item.__qualname__
        extra[(module, name)] = obj

    class Unpickler(DataUnpickler):
        def find_class(self, module: str, name: str):
            key = python3_name(module, name)  # torch 2.1 saves with protocol 2: __builtin__.getattr
            if key in extra:
                return extra[key]
            return super().find_class(module, name)

    restricted = types.ModuleType("dgn_plugins_data_pickle")
    restricted.Unpickler = Unpickler
    restricted.load = lambda file, **kwargs: Unpickler(file, **kwargs).load()
    restricted.UnpicklingError = pickle.UnpicklingError
    return restricted


def load_data_file(path):
    """JSON, a plain pickle or a ``torch.save`` file, chosen by content, loaded as data only.

    Raises :class:`UnsafeFileError` for a file that references code, and
    ``ValueError``/``EOFError``/``pickle.UnpicklingError`` for one that
    does not parse.
    """
    import json

    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(64).lstrip()
    if zipfile.is_zipfile(path):
        return load_torch_file(path)
    if head.startswith(b"\x80"):
        with open(path, "rb") as handle:
            data = load_pickle(handle)
        if _is_legacy_torch_magic(data):  # torch.save(..., _use_new_zipfile_serialization=False)
            return load_torch_file(path)
        return data
    if head[:1] in (b"[", b"{"):
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    raise ValueError("unrecognised format (expected JSON, a pickle or a torch.save file)")


def _is_legacy_torch_magic(value) -> bool:
    try:
        from torch.serialization import MAGIC_NUMBER
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, int) and value == MAGIC_NUMBER
