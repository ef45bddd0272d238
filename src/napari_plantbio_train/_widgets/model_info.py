"""What the auto-label dock says about a model: one line per model, its channels, and whether an image's
voxel size matches the one it was trained at."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..job import kinds
from ..job.voxels import voxel_size_from_scale
from ..models.store import ModelRecord

if TYPE_CHECKING:
    from napari.layers import Layer

TOLERANCE = 0.1  # relative voxel-size difference that earns a warning


def describe(record: ModelRecord) -> str:
    """One line per model: what it segments, at which resolution, how long it trained and how well it scored."""
    config = record.config
    voxel = "/".join(f"{v:g}" for v in config.voxel_size)
    score = f"best {record.score_name} {record.best_score:.3f}" if record.best_score is not None else "not scored"
    return (f"{record.name} — {config.mode}, {config.dims}, voxel x/y/z {voxel} nm, "
            f"{record.iterations_done} iterations, {score}")


def channel_names(record: ModelRecord) -> list[tuple[str, bool]]:
    """(name, shown at first) per probability channel; a semantic model's background (class 0) starts hidden."""
    names = kinds.channel_names(record.config.mode, record.classes)
    if record.config.mode == "instance":
        return [(name, True) for name in names]
    return [(name, value != 0) for name, value in zip(names, record.classes or [])]


def voxel_size_message(layer: Layer, record: ModelRecord) -> tuple[str, bool]:
    """(text, is a warning): the layer's scale, read as nm, against the voxel size the model was trained at.
    A scale of 1 on every axis (napari's default) or a model voxel size of 1 means "not known": only a hint."""
    axes = "xyz"[:min(layer.ndim, 3)]
    image = dict(zip(axes, voxel_size_from_scale(layer.scale)))
    model = {axis: float(v) for axis, v in zip("xyz", record.config.voxel_size)}
    trained = "/".join(f"{model[axis]:g}" for axis in axes)
    if all(v == 1.0 for v in model.values()):
        return "The model was trained without a voxel size; make sure this image has the same resolution.", False
    if all(v == 1.0 for v in image.values()):
        return (f"The image layer has no voxel size (scale 1); the model expects {axes} {trained} nm. Set the "
                f"layer's scale to check that it matches.", False)
    off = [axis for axis in axes if abs(image[axis] - model[axis]) > TOLERANCE * model[axis]]
    if not off:
        return "", False
    shown = "/".join(f"{image[axis]:g}" for axis in axes)
    return (f"⚠ The image's voxel size {axes} {shown} nm (its layer scale) differs from the model's {trained} nm "
            f"by more than {TOLERANCE:.0%} along {', '.join(off)}: objects look a different size to the model. "
            f"Resample the image or use a model trained at this resolution.", True)
