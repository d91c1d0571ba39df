"""The AugMix paper's image operations, as its reference code defines them.

``augmentations.py`` of google-research/augmix: each operation takes a PIL
image and a severity ``level`` (1-10) and draws its own strength uniformly in
``[0.1, level]`` (and a random sign for the geometric ones). The default list
leaves out the operations that overlap ImageNet-C's corruptions (contrast,
colour, brightness, sharpness), so that the test corruptions stay unseen;
``ALL_OPS`` adds them back, as the reference code's ``--all-ops`` does.

The draws come from a ``numpy.random.Generator`` passed in, never from global
state, so a caller decides how an image's randomness is seeded.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

__all__ = ["OPS", "ALL_OPS", "operation"]

Op = Callable[[Image.Image, int, np.random.Generator], Image.Image]


def _int_parameter(level: float, maxval: float) -> int:
    return int(level * maxval / 10)


def _float_parameter(level: float, maxval: float) -> float:
    return float(level) * maxval / 10.0


def _sample_level(level: int, rng: np.random.Generator) -> float:
    return rng.uniform(low=0.1, high=level)


def _signed(value, rng: np.random.Generator):
    return -value if rng.uniform() > 0.5 else value


def autocontrast(image, level, rng):
    return ImageOps.autocontrast(image)


def equalize(image, level, rng):
    return ImageOps.equalize(image)


def posterize(image, level, rng):
    return ImageOps.posterize(image, 4 - _int_parameter(_sample_level(level, rng), 4))


def rotate(image, level, rng):
    degrees = _signed(_int_parameter(_sample_level(level, rng), 30), rng)
    return image.rotate(degrees, resample=Image.BILINEAR)


def solarize(image, level, rng):
    return ImageOps.solarize(image, 256 - _int_parameter(_sample_level(level, rng), 256))


def _affine(image, coefficients):
    return image.transform(image.size, Image.AFFINE, coefficients, resample=Image.BILINEAR)


def shear_x(image, level, rng):
    return _affine(image, (1, _signed(_float_parameter(_sample_level(level, rng), 0.3), rng), 0, 0, 1, 0))


def shear_y(image, level, rng):
    return _affine(image, (1, 0, 0, _signed(_float_parameter(_sample_level(level, rng), 0.3), rng), 1, 0))


def translate_x(image, level, rng):
    # The reference code translates by up to a third of its (square) image size.
    shift = _signed(_int_parameter(_sample_level(level, rng), image.size[0] / 3), rng)
    return _affine(image, (1, 0, shift, 0, 1, 0))


def translate_y(image, level, rng):
    shift = _signed(_int_parameter(_sample_level(level, rng), image.size[1] / 3), rng)
    return _affine(image, (1, 0, 0, 0, 1, shift))


def _enhance(kind):
    def op(image, level, rng):
        return kind(image).enhance(_float_parameter(_sample_level(level, rng), 1.8) + 0.1)
    op.__name__ = kind.__name__.lower()
    return op


color, contrast, brightness, sharpness = (_enhance(k) for k in (ImageEnhance.Color, ImageEnhance.Contrast,
                                                                 ImageEnhance.Brightness, ImageEnhance.Sharpness))

#: The paper's default list (``augmentations.augmentations``), in the reference code's order.
OPS: Tuple[Op, ...] = (autocontrast, equalize, posterize, rotate, solarize, shear_x, shear_y, translate_x,
                       translate_y)
#: ``augmentations.augmentations_all``: the default list plus the four that overlap ImageNet-C.
ALL_OPS: Tuple[Op, ...] = OPS + (color, contrast, brightness, sharpness)

_BY_NAME: Dict[str, Op] = {op.__name__: op for op in ALL_OPS}


def operation(name: str) -> Op:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown AugMix operation {name!r}; known: {', '.join(_BY_NAME)}") from None
