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


def mostly_reviewed(labels: np.ndarray, reviewed: np.ndarray) -> np.ndarray:
    """Per id of ``labels`` (index 0 included): whether half or more of its voxels lie in ``reviewed``. Such an
    object is the user's: a relabelling leaves a new one there out, and a new queue does not show it again."""
    labels = np.asarray(labels)
    top = int(labels.max(initial=0))
    inside = np.bincount(labels[np.asarray(reviewed, bool)].ravel(), minlength=top + 1)
    sizes = np.bincount(labels.ravel(), minlength=top + 1)
    return inside * 2 >= np.maximum(sizes, 1)


def mark_edit(reviewed: np.ndarray, where: tuple, mask: np.ndarray | None = None) -> None:
    """Add an edit to the reviewed mask: ``where`` is a box (slices) with ``mask`` the changed voxels inside it
    (None: all of them), or a multi-index of the changed voxels (``mask`` None)."""
    if mask is None:
        reviewed[where] = True
    else:
        reviewed[where] |= np.asarray(mask, bool)


class ReviewedEdits:
    """The reviewed mask with a record of what each undoable edit added to it, so an undone edit un-marks the
    voxels it marked and a redone one marks them again.

    Each edit keeps only the voxels it newly marked: one reviewed before the edit (by an earlier stroke, or an
    accepted object) stays reviewed when the edit is undone. Undo is last-in first-out, so an edit's new voxels
    are never claimed by a later edit still in force. Accepting is not undoable and stays. Edits are named by a
    key the caller chooses (the dock uses the identities of napari's history atoms); ``sync`` is told which keys
    are undoable and which redoable now, and settles every edit whose side changed.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.mask = np.zeros(shape, bool)
        self.accepted = np.zeros(shape, bool)
        self._edits: dict[Any, tuple[list[tuple[tuple, np.ndarray]], bool]] = {}  # key: (new voxels, in force)

    def accept(self, labels: Any, object_id: int) -> int:
        """Mark the object reviewed as it stands (for good: accepting is not undone); returns its voxels."""
        where = object_voxels(labels, object_id)
        self.accepted[where] = True
        return accept(labels, self.mask, object_id)

    def add(self, key: Any, parts: list[tuple[tuple, np.ndarray | None]]) -> int:
        """Record an edit: ``parts`` as ``mark_edit`` takes them (a box and its changed voxels, or a multi-index);
        returns the voxels it newly marked."""
        marked = []
        for where, mask in parts:
            changed = np.ones(np.shape(self.mask[where]), bool) if mask is None else np.asarray(mask, bool)
            new = changed & ~self.mask[where]
            mark_edit(self.mask, where, new)
            marked.append((where, new))
        self._edits[key] = (marked, True)
        return int(sum(new.sum() for _, new in marked))

    def sync(self, undoable: set, redoable: set) -> bool:
        """Un-mark the edits now redoable (undone), mark again those undoable (redone), forget those in neither
        (no longer undoable, or undone for good); True when the mask changed."""
        changed = False
        for key, (marked, in_force) in list(self._edits.items()):
            if key not in undoable and key not in redoable:
                del self._edits[key]
                continue
            now = key in undoable
            if now == in_force:
                continue
            for where, new in marked:
                part = self.mask[where]
                part[new] = now if now else self.accepted[where][new]
                self.mask[where] = part
            self._edits[key] = (marked, now)
            changed = True
        return changed
