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


def check_stack(array: Any, *, field: str = "image") -> None:
    """The rules a stack's shape and dtype alone decide, for an array of any kind (numpy, a lazy stack on disk:
    nothing is read): one channel (colour recognised by ``looks_rgb``), 2D or 3D, not empty, numeric."""
    shape = tuple(int(s) for s in getattr(array, "shape", np.shape(array)))
    if looks_rgb(array):
        kind = "RGBA" if shape[-1] == 4 else "RGB"
        raise ConfigError(field, f"looks like an {kind} colour image (uint8, shape {shape}), not a single-channel "
                                 "image or stack: convert it to one grey channel first (in Fiji: Image > Type > "
                                 "8-bit; in napari: split the channels and use one)")
    if len(shape) not in (2, 3):
        raise ConfigError(field, f"shape {shape} is not a single-channel 2D image or 3D stack "
                                 "(colour or multi-channel images are not supported)")
    if 0 in shape:
        raise ConfigError(field, f"the image is empty (shape {shape})")
    _check_dtype(np.dtype(getattr(array, "dtype", np.asarray(array).dtype)), field)


def as_stack(array: np.ndarray, *, field: str) -> np.ndarray:
    """A (Z, Y, X) view of a 2D image or a 3D stack; anything else is refused with the field's name."""
    array = np.asarray(array)
    if looks_rgb(array) or array.ndim not in (2, 3):
        check_stack(array, field=field)
    return array[np.newaxis] if array.ndim == 2 else array


def check_image(array: np.ndarray, *, field: str = "image") -> None:
    _check_dtype(array.dtype, field)
    if array.size == 0:
        raise ConfigError(field, "the image is empty")
    check_finite(array, field=field)


def check_finite(block: np.ndarray, *, field: str = "image") -> None:
    """NaN or infinite intensities have no place on the scale a model was trained at: refused, never labelled
    (they would silently turn whole windows into nonsense)."""
    if block.dtype.kind in "fc" and not np.isfinite(block).all():
        raise ConfigError(field, "contains NaN or infinite values: replace them (e.g. with 0 or the background "
                                 "intensity) before training or labelling")


def _check_dtype(dtype: np.dtype, field: str) -> None:
    if dtype == bool or not np.issubdtype(dtype, np.number):
        raise ConfigError(field, f"dtype {dtype} is not a numeric image type")
    if np.issubdtype(dtype, np.complexfloating):
        raise ConfigError(field, "complex images are not supported")


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
