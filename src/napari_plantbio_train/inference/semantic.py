"""Class labels from a semantic model's probabilities, without the confident-looking regions its own labels do
not vouch for.

What a semantic model gets wrong on tissue it never saw is mostly whole regions, not pixels: on the plate's rows
never trained on, every large error of ten 15-minute models was one dark slot under the plate called a pore
(44-706 pixels), while the edges of the true pores held the same ~830 wrong pixels in all of them. Those regions
are less sure of themselves than any true pore: their mean pore probability was 0.73-0.95, the true pores'
0.95-0.98. No pixel threshold separates them (0.3-0.6 changed the IoU by 0.003), since both reach 0.99 in their
middle; a region's mean does. How sure is sure enough differs from model to model (the floors ten plate models
measured ranged 0.72-0.89), so each model measures it on its validation block while it trains
(``confirmed_confidence``) and saves it as ``min_confidence``; auto-labelling then gives regions below it to the
background. Applied to those ten models, it kept every true pore and raised their mean IoU on the unseen rows from
0.909 to 0.920 (0.869 -> 0.924 for the worst but one; the worst, 0.881, had its slot above its floor).
Like StarDist's thresholds tuned on validation images, it is a post-processing setting the model chose, shown
with the others and open to the user.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage

from .postprocess import face_neighbours

# Below the least confident region the validation confirmed, by this much, is where a region is dropped: the
# confirmed regions of new tissue are a little less sure than those of the block. On the plate's ten models, 0.03
# and 0.05 both kept every true pore and removed the same slots; 0.08 let two slots through.
CONFIDENCE_MARGIN = 0.05
# A region confirms the confidence of its class if it is at least this share of the median size of the labelled
# regions of that class in the block: a few pixels of a pore cut by the block's edge are all edge, and as unsure
# as one (a 1-pixel fragment at 0.53 otherwise set one model's floor).
CONFIRMING_SHARE = 0.1
MIN_CONFIRMING_SIZE = 16


def background_index(classes: Sequence[int] | None) -> int | None:
    """The channel of label value 0, which regions given up fall back to; None where 0 is not a class (every
    pixel then belongs to some class, and no region can be given up)."""
    values = list(classes or [])
    return values.index(0) if 0 in values else None


def semantic_labels(probabilities: np.ndarray, classes: Sequence[int], dims: str,
                    min_confidence: float = 0.0) -> np.ndarray:
    """The most likely class per voxel of (K, Z, Y, X) maps as its label value; with ``min_confidence``, the
    connected regions of a class whose mean probability of that class is below it become background."""
    index = probabilities.argmax(0)
    background = background_index(classes)
    if min_confidence > 0 and background is not None:
        for _channel, regions, mean in _class_regions(probabilities, index, background, dims):
            unsure = np.concatenate([[False], mean < min_confidence])
            index[unsure[regions]] = background
    values = np.asarray(classes)
    return values[index].astype(np.min_scalar_type(int(values.max())), copy=False)


def confirmed_confidence(probabilities: np.ndarray, truth: np.ndarray, classes: Sequence[int], dims: str,
                         known: np.ndarray | None = None) -> float | None:
    """The least mean probability of a predicted region that the labels confirm (most of it, where the labels
    are trusted, is its class), among regions big enough to judge; None where no region is confirmed.

    ``truth`` holds class indices (channels), like the training target."""
    background = background_index(classes)
    if background is None:
        return None
    index = probabilities.argmax(0)
    trusted = np.ones(index.shape, bool) if known is None else np.asarray(known, bool)
    least: float | None = None
    for channel, regions, mean in _class_regions(probabilities, index, background, dims):
        true_regions, n_true = ndimage.label((truth == channel) & trusted, structure=face_neighbours(dims == "2d"))
        if not n_true:
            continue
        true_sizes = np.bincount(true_regions.ravel())[1:]
        smallest = max(MIN_CONFIRMING_SIZE, CONFIRMING_SHARE * float(np.median(true_sizes)))
        n = len(mean)
        size = np.bincount(regions.ravel(), minlength=n + 1)[1:]
        judged = np.bincount(regions[trusted], minlength=n + 1)[1:]
        right = np.bincount(regions[trusted & (truth == channel)], minlength=n + 1)[1:]
        confirmed = (size >= smallest) & (judged > 0) & (2 * right > judged)
        if confirmed.any():
            low = float(mean[confirmed].min())
            least = low if least is None else min(least, low)
    return least


def min_confidence_from(confidence: float | None) -> float:
    """The ``min_confidence`` a model saves from its validation's ``confirmed_confidence`` (0: nothing dropped)."""
    return 0.0 if confidence is None else round(max(0.0, confidence - CONFIDENCE_MARGIN), 4)


def _class_regions(probabilities: np.ndarray, index: np.ndarray, background: int,
                   dims: str) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(channel, its regions labelled 1..n, their mean probability of it) for each class but the background, where
    it is the most likely class anywhere. A 2D model's stack is judged slice by slice: regions never join across z."""
    structure = face_neighbours(dims == "2d")
    for channel in range(probabilities.shape[0]):
        if channel == background:
            continue
        regions, n = ndimage.label(index == channel, structure=structure)
        if n:
            yield channel, regions, np.asarray(ndimage.mean(probabilities[channel], regions, np.arange(1, n + 1)))
