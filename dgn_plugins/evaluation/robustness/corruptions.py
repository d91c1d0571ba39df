"""The 15 ImageNet-C corruptions, seeded so every corrupted image is reproducible.

Backed by ``imagecorruptions-imaug`` (pinned ``==1.1.5``), a maintained drop-in
for ``imagecorruptions`` 1.1.2 (what MMDetection's ``Corrupt`` imports; that
one breaks on numpy 2 / scikit-image >= 0.20). Same import name, same
functions, same severity tables. The library's images are RGB: the toolkits'
transforms (``ApplyCorruption``, Detectron2's ``CorruptImage``) turn a BGR
image to RGB before :func:`corrupt_image` and back after it.

Why seeding needs more than ``np.random.seed``: most corruptions draw from
numpy's legacy global RNG, but ``impulse_noise`` draws from
``skimage.util.random_noise`` (a fresh ``np.random.default_rng(None)`` unless
given a seed) and ``glass_blur`` shuffles pixels inside a numba-compiled loop
whose RNG is numba's own (seeded only through its ``seed`` argument). So
:func:`corrupt_image` passes ``seed`` to those two and seeds the legacy global
RNG for the rest, restoring the caller's RNG state afterwards.
"""
from __future__ import annotations

import contextlib
import zlib
from typing import Iterable, List, Optional, Sequence

import numpy as np

__all__ = [
    "CORRUPTIONS", "VALIDATION_CORRUPTIONS", "SEVERITIES", "CorruptionError", "check_corruptions", "check_severities",
    "corrupt_image", "cell_seed", "corruption_library",
]

#: ImageNet-C's benchmark corruptions, in its order (noise, blur, weather, digital).
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
#: ImageNet-C's four held-out corruptions, for choosing settings without
#: looking at the benchmark's own (``imagecorruptions``' "validation" set).
VALIDATION_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)

#: Corruptions whose own RNG is seeded through a ``seed`` keyword, not ``np.random.seed``.
_SEED_ARGUMENT = ("impulse_noise", "glass_blur")
_MIN_SIZE = 32  # the library refuses smaller images


class CorruptionError(ValueError):
    """A corruption request the library cannot serve (bad name, severity, image)."""


def corruption_library():
    """The ``imagecorruptions`` module, or a message saying what to install."""
    try:
        import imagecorruptions
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise CorruptionError(
            "the corruption library is missing: pip install imagecorruptions-imaug==1.1.5 "
            f"(a numpy-2-compatible drop-in for imagecorruptions) ({err})") from err
    return imagecorruptions


def check_corruptions(names: Optional[Iterable[str]], allowed: Sequence[str] = CORRUPTIONS) -> List[str]:
    """Validate a subset of ``allowed`` (``None``: all of it), keeping its order."""
    if names is None:
        return list(allowed)
    names = list(names)
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise CorruptionError(f"unknown corruption(s) {unknown}; choose from {list(allowed)}")
    if not names:
        raise CorruptionError("no corruption selected")
    return list(dict.fromkeys(names))


def check_severities(severities: Optional[Iterable[int]]) -> List[int]:
    """Validate a subset of severities 1-5 (``None``: all)."""
    if severities is None:
        return list(SEVERITIES)
    severities = [int(s) for s in severities]
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities:
        raise CorruptionError(f"severities must be a non-empty subset of {list(SEVERITIES)}, got {severities}")
    return sorted(set(severities))


def cell_seed(seed: int, corruption: str, severity: int, key: object = "") -> int:
    """A stable 32-bit seed for one image of one (corruption, severity) cell.

    Stable across processes and dataloader workers (crc32, not ``hash``), so an
    image gets the same corruption however the data is sharded.
    """
    return zlib.crc32(f"{int(seed)}|{corruption}|{int(severity)}|{key}".encode()) & 0x7FFFFFFF


@contextlib.contextmanager
def _legacy_numpy_seed(seed: int):
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """Corrupt one uint8 image (H, W[, C]) deterministically given ``seed``.

    Grayscale input (H, W) or (H, W, 1) is replicated to RGB for the
    corruption (several need colour) and returned as grayscale (channel mean),
    in the input's shape. Images smaller than 32 px are refused, as the
    library does; pad them first.
    """
    check_corruptions([corruption], CORRUPTIONS + VALIDATION_CORRUPTIONS)
    check_severities([severity])
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise CorruptionError(f"expected a uint8 image, got {image.dtype}")
    grey_shape = image.shape if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1) else None
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise CorruptionError(f"expected an image of shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    if min(image.shape[:2]) < _MIN_SIZE:
        raise CorruptionError(f"images must be at least {_MIN_SIZE}x{_MIN_SIZE} px, got {image.shape[:2]}; pad first")
    rgb = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=2) if grey_shape else image
    library = corruption_library()
    kwargs = {"seed": int(seed)} if corruption in _SEED_ARGUMENT else {}
    with _legacy_numpy_seed(int(seed)):
        out = library.corrupt(np.ascontiguousarray(rgb), severity=int(severity), corruption_name=corruption, **kwargs)
    out = np.asarray(out)
    if out.shape[:2] != rgb.shape[:2]:  # a few corruptions can round sizes; keep the input's
        import cv2

        out = cv2.resize(out, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    if grey_shape:
        return np.round(out.astype(np.float32).mean(axis=2)).astype(np.uint8).reshape(grey_shape)
    return out.astype(np.uint8)


def corrupt_batch(images: Sequence[np.ndarray], corruption: str, severity: int, seed: int = 0) -> np.ndarray:
    """:func:`corrupt_image` over images, image ``i`` seeded by ``cell_seed(seed, ..., i)``."""
    return np.stack([corrupt_image(img, corruption, severity, cell_seed(seed, corruption, severity, i))
                     for i, img in enumerate(images)])
