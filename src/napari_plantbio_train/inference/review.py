"""What reviewing a proofreading queue does to the labels and to the mask of reviewed voxels.

A touched-only continuation trusts what the user changed and what they reviewed (``train(reviewed=...)``). An
object the user accepted is as reviewed as one they repainted, and an erased object's voxels are now known
background; so every accept, erase and brush stroke is added to one boolean mask as it happens, instead of
guessing the reviewed region at the end from what differs (which misses every accepted object).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def object_voxels(labels: Any, object_id: int) -> tuple[np.ndarray, ...]:
    """Indices of the voxels of ``object_id`` (none for an id the labels no longer hold)."""
    return np.nonzero(np.asarray(labels) == int(object_id))


def accept(labels: Any, reviewed: np.ndarray, object_id: int) -> int:
    """Mark the object as reviewed as it stands; returns its voxel count (0: no such object)."""
    where = object_voxels(labels, object_id)
    reviewed[where] = True
    return int(where[0].size)


def mark_edit(reviewed: np.ndarray, where: tuple, mask: np.ndarray | None = None) -> None:
    """Add an edit to the reviewed mask: ``where`` is a box (slices) with ``mask`` the changed voxels inside it
    (None: all of them), or a multi-index of the changed voxels (``mask`` None)."""
    if mask is None:
        reviewed[where] = True
    else:
        reviewed[where] |= np.asarray(mask, bool)
