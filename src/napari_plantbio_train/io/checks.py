"""What an array must be to serve as an image or as labels, decided once for every entry point.

Training, auto-labelling, evaluation and the docks all refuse the same wrong inputs with the same words, each
message naming the field at fault (``ConfigError``, a ``ValueError``): a colour rendering picked as labels, a
probability map where integer ids belong, a 4D array, an empty image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..job.config import ConfigError

RGB_MIN_SIDE = 30  # napari's own guess (napari.layers.utils.layer_utils.guess_rgb)


def looks_rgb(array: Any) -> bool:
    """Colour, not a stack: uint8 with 3 (RGB) or 4 (RGBA) values on a last axis behind two axes longer than 30,
    napari's rule for showing an array as colour, kept to uint8 (how the older tool saved painted labels).

    A uint16 or float array with a last axis of 3 is a stack of three-pixel-wide slices or a probability map,
    and (5, 40, 3) is five thin slices. Reads the shape and dtype only.
    """
    shape, dtype = tuple(getattr(array, "shape", ())), getattr(array, "dtype", None)
    return (len(shape) >= 3 and shape[-1] in (3, 4) and dtype == np.uint8
            and min(shape[-3], shape[-2]) > RGB_MIN_SIDE)


def as_stack(array: np.ndarray, *, field: str) -> np.ndarray:
    """A (Z, Y, X) view of a 2D image or a 3D stack; anything else is refused with the field's name."""
    array = np.asarray(array)
    if array.ndim == 2:
        return array[np.newaxis]
    if array.ndim == 3 and not looks_rgb(array):
        return array
    raise ConfigError(field, f"shape {array.shape} is not a single-channel 2D image or 3D stack "
                             "(colour or multi-channel images are not supported)")


def check_image(array: np.ndarray, *, field: str = "image") -> None:
    if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
        raise ConfigError(field, f"dtype {array.dtype} is not a numeric image type")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise ConfigError(field, "complex images are not supported")
    if array.size == 0:
        raise ConfigError(field, "the image is empty")


def check_labels(labels: Any, *, field: str = "labels") -> np.ndarray:
    """The labels as a numpy integer array (a boolean mask becomes 0/1), or the first reason they are not labels:
    a float array (an image or a probability map), a colour rendering, not 2D or 3D, negative ids."""
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        return labels.view(np.uint8)
    if labels.dtype.kind == "f":
        whole = labels.size and np.all(np.isfinite(labels)) and np.array_equal(labels, np.round(labels))
        hint = ("it holds whole numbers: convert it with .astype(np.uint16) or pick a labels layer" if whole else
                "its fractional values look like an image or a probability map: pick a labels layer with one "
                "integer id per pixel, or threshold the map first")
        raise ConfigError(field, f"has dtype {labels.dtype}; expected integer labels, of an integer type ({hint})")
    if labels.dtype.kind not in "iu":
        raise ConfigError(field, f"has dtype {labels.dtype}; expected integer labels, of an integer type")
    if looks_rgb(labels):
        kind = "RGBA" if labels.shape[-1] == 4 else "RGB"
        raise ConfigError(field, f"looks like an RGB(A) image: an {kind} colour image (uint8, shape {labels.shape}); "
                                 "labels hold one integer id per pixel, not a colour (convert painted colours "
                                 "with Plugins > PlantBio Train > Colour image to labels)")
    if labels.ndim not in (2, 3):
        raise ConfigError(field, f"has shape {labels.shape}; expected a 2D image (Y, X) or a 3D stack (Z, Y, X)")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        shown = ", ".join(str(v) for v in np.unique(labels[labels < 0])[:5])
        raise ConfigError(field, f"holds negative values ({shown}); labels must be 0 (background) or positive")
    return labels
