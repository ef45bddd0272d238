"""File > Open Sample: a synthetic EM stack with its semantic and instance labels, made on the spot."""

from __future__ import annotations

from typing import Any

from .io.synthetic import KINDS, make_stack
from .job.voxels import scale_from_voxel_size


def organelles() -> list[tuple[Any, dict[str, Any], str]]:
    stack = make_stack()
    scale = scale_from_voxel_size(stack.voxel_size, 3)
    return [
        (stack.image, {"name": "organelles EM", "scale": scale}, "image"),
        (stack.semantic, {"name": "organelles classes", "scale": scale, "opacity": 0.5,
                          "metadata": {"classes": KINDS}}, "labels"),
        (stack.instances, {"name": "organelles instances", "scale": scale, "opacity": 0.5,
                           "visible": False}, "labels"),
    ]
