"""Where a model is unsure, so proofreading starts where it pays most.

The measure is the entropy of the predicted probabilities, scaled to 0 (certain) .. 1 (a coin toss): for an
instance model the foreground map's binary entropy, for a semantic model the entropy over its classes. With
test-time augmentation the probabilities are the average of the variants, so wherever the flipped and
transposed variants disagree the average drifts toward a coin toss and the entropy rises: the one map covers
both the model's own doubt and its disagreement with itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

_EPS = 1e-6


def entropy_map(probabilities: np.ndarray, mode: str) -> np.ndarray:
    """(K, ...) probabilities to a (...) float32 map in [0, 1]."""
    p = np.clip(np.asarray(probabilities, dtype=np.float32), _EPS, 1 - _EPS)
    if mode == "instance":
        fg = p[0]
        h = -(fg * np.log2(fg) + (1 - fg) * np.log2(1 - fg))
    else:
        k = p.shape[0]
        h = -(p * np.log(p)).sum(axis=0) / np.log(max(k, 2))
    return np.clip(h, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class RankedObject:
    id: int
    uncertainty: float  # mean of the map over the object's voxels (and the band around it)
    centroid: tuple[float, ...]  # in voxels, (z, y, x) or (y, x)
    voxels: int


def rank_objects(labels: np.ndarray, uncertainty: np.ndarray, band: int = 2) -> list[RankedObject]:
    """Objects from the most to the least uncertain.

    An object's score is the mean uncertainty over it and a thin band around it: a wrong boundary (a merge, a
    missed neighbour) shows as doubt just outside the object as much as inside it.
    """
    labels = np.asarray(labels)
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    if labels.shape != uncertainty.shape:
        raise ValueError(f"labels {labels.shape} and uncertainty {uncertainty.shape} must have one shape")
    top = int(labels.max()) if labels.size else 0
    if top == 0:
        return []
    grown = labels
    if band > 0:  # each background voxel near an object joins the nearest object's band
        distance, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
        grown = np.where(distance <= band, labels[tuple(nearest)], 0)
    sizes = np.bincount(labels.ravel(), minlength=top + 1)
    # Only ids present: merges and erasures leave gaps, whose centroid would be 0/0.
    ids = np.flatnonzero(sizes[1:]) + 1
    sums = ndimage.sum_labels(uncertainty, grown, ids)
    counts = ndimage.sum_labels(np.ones_like(uncertainty), grown, ids)
    centroids = ndimage.center_of_mass(np.ones(labels.shape), labels, ids)
    ranked = [RankedObject(int(i), float(s / c), tuple(float(v) for v in centre), int(sizes[i]))
              for i, s, c, centre in zip(ids, sums, counts, centroids)]
    return sorted(ranked, key=lambda o: -o.uncertainty)
