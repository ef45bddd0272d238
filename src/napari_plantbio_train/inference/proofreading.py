"""Where a new stack's labels are most likely wrong, so proofreading starts where it pays.

Doubt alone (uncertainty.py) finds the objects a model is unsure of; on tissue a model never saw it is often
wrong and sure of itself: on the unseen part of the chloroplast stack the confident false positives lay in
darker tissue the training part lacked, and the 10 most doubtful objects touched 2 of 49 true ones. So the
queue ranks each object by four signs of an error, each measured against what the model was trained on:

- **doubt**: the mean uncertainty over the object and a thin band around it (``rank_objects``);
- **appearance**: its intensity statistics (mean, spread, contrast with its surroundings, texture) far from
  the training objects';
- **size and shape**: its volume, largest section, elongation and fullness (a merge is a dumbbell, not an
  ellipse) far from the training objects';
- **new tissue**: how much of it lies where the stack's local intensities (mean and spread per tile) are
  unlike every tile of the training stack: the "new tissue" map.

"Far" is the distance to the nearest training objects (or tiles) in units of how far training objects lie from
each other, so a feature that varies a lot among the training objects counts for less.

An object's appearance, shape and new-tissue signs count only as far as it is also unlike the rest of the stack
being labelled (its nearest other objects, in the same units measured among them). Where a whole region drifts,
all of its objects are unlike the training ones, yet most of them are what they seem: on the chloroplast stack's
right half made darker, flatter and noisier (benchmarks/queue_precision.py), the signs measured against training
alone filled the queue's first 10 with drifted objects, 7 of them errors, where doubt alone found 9; with this
rule the queue finds 10, and on the stack as it is 8, as doubt does. A lone object unlike everything (the tests'
bright blob pasted into new tissue) still comes first. With too few objects to tell, the training objects alone
judge. The training side is
measured by the same functions here when a model trains and saved with it (model.json ``statistics``: plain
lists), so labelling compares like with like.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..io.stacks import read_array
from ..models.normalisation import Normalisation
from ..models.store import ModelRecord
from .label import LabelResult
from .uncertainty import rank_objects

APPEARANCE = ("mean", "spread", "contrast", "texture")
SHAPE = ("log_volume", "log_section", "elongation", "fullness")
FEATURES = APPEARANCE + SHAPE
# The least spread each feature is given (training objects alike in a feature must not make every other value
# infinitely far): intensities in normalised units, sizes as logs, shapes as ratios.
FLOORS = (0.02, 0.02, 0.02, 0.01, 0.15, 0.15, 0.1, 0.05)
TILE_FLOORS = (0.02, 0.01)
NOVELTY_FLOOR = 0.1  # least spread of the stack's objects' "new tissue" values (0..1)
RING = 3  # pixels of surroundings an object's contrast is measured against
MAX_OBJECTS = 400  # training objects kept with a model (a sample, when it trained on more)
MAX_TILES = 3000  # training tiles kept
NEIGHBOURS = 3
TYPICAL = 90  # percentile of the training set's own nearest-neighbour distances that counts as "typical"
STATISTICS_VERSION = 1


def tile_size(window: Sequence[int]) -> int:
    """In-plane pixels of a "new tissue" tile: a quarter of the model's window, large enough to hold texture,
    small enough to outline a region of new tissue."""
    return max(16, int(min(window[-2:])) // 4)


# ----- measuring ------------------------------------------------------------------------------------------------
def object_features(image: Any, labels: np.ndarray, normalisation: Normalisation,
                    ids: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, (N, 8) features in FEATURES order) of the objects of (Z, Y, X) ``labels`` over ``image`` (raw; read
    object by object, so a lazy stack is never read whole)."""
    labels = np.asarray(labels)
    boxes = ndimage.find_objects(labels)
    wanted = set(int(i) for i in ids) if ids is not None else None
    out_ids, rows = [], []
    for index, box in enumerate(boxes, start=1):
        if box is None or (wanted is not None and index not in wanted):
            continue
        grown = (box[0], *(slice(max(0, s.start - RING), min(n, s.stop + RING))
                           for s, n in zip(box[1:], labels.shape[1:])))
        region = labels[grown]
        inside = region == index
        if not inside.any():
            continue
        values = normalisation.apply(np.asarray(image[grown]))
        rows.append(_features(values, region, inside))
        out_ids.append(index)
    return np.asarray(out_ids, np.int64), np.asarray(rows, np.float64).reshape(-1, len(FEATURES))


def _features(values: np.ndarray, region: np.ndarray, inside: np.ndarray) -> list[float]:
    ring = ndimage.binary_dilation(inside, structure=_plane_disc(RING)) & ~inside & (region == 0)
    own = values[inside]
    around = values[ring] if ring.any() else own
    gradient = np.hypot(ndimage.sobel(values, axis=-1), ndimage.sobel(values, axis=-2))
    areas = inside.reshape(inside.shape[0], -1).sum(axis=1)
    section = inside[int(np.argmax(areas))]
    elongation, fullness = _ellipse(section)
    return [float(own.mean()), float(own.std()), float(own.mean() - around.mean()),
            float(gradient[inside].mean() / 8.0), math.log(float(inside.sum())), math.log(float(areas.max())),
            elongation, fullness]


def _ellipse(section: np.ndarray) -> tuple[float, float]:
    """(elongation: long over short axis, fullness: area over the area of the ellipse of the same moments)."""
    ys, xs = np.nonzero(section)
    if ys.size < 3:
        return 1.0, 1.0
    cov = np.cov(np.stack([ys, xs]).astype(np.float64)) + np.eye(2) / 12.0  # a pixel's own spread
    small, large = np.linalg.eigvalsh(cov)
    ellipse = 4.0 * math.pi * math.sqrt(max(small, 1e-9) * large)
    return math.sqrt(large / max(small, 1e-9)), min(2.0, ys.size / ellipse)


def _plane_disc(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (y * y + x * x <= radius * radius)[np.newaxis]


def tile_features(image: Any, normalisation: Normalisation, tile: int,
                  known: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int, int]]:
    """((N, 2) mean and spread of every tile, the tile grid's shape (Z, TY, TX)), read slice by slice. With
    ``known``, tiles less than half trusted are NaN (a model trained only on corrections saw nothing else)."""
    shape = tuple(int(s) for s in image.shape)
    stack = shape if len(shape) == 3 else (1, *shape)
    grid = (stack[0], -(-stack[1] // tile), -(-stack[2] // tile))
    out = np.full((*grid, 2), np.nan)
    for z in range(stack[0]):
        plane = normalisation.apply(np.asarray(image[z] if len(shape) == 3 else image))
        trusted = None if known is None else np.asarray(known[z] if len(shape) == 3 else known)
        out[z] = _tile_stats(plane, tile, trusted)
    return out.reshape(-1, 2), grid  # type: ignore[return-value]


def _tile_stats(plane: np.ndarray, tile: int, trusted: np.ndarray | None) -> np.ndarray:
    ty, tx = -(-plane.shape[0] // tile), -(-plane.shape[1] // tile)
    padded = np.full((ty * tile, tx * tile), np.nan, np.float64)
    padded[:plane.shape[0], :plane.shape[1]] = plane
    blocks = padded.reshape(ty, tile, tx, tile).transpose(0, 2, 1, 3).reshape(ty, tx, -1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an edge tile past the image is all NaN: so is its answer
        stats = np.stack([np.nanmean(blocks, axis=-1), np.nanstd(blocks, axis=-1)], axis=-1)
    if trusted is not None:
        share = np.zeros((ty * tile, tx * tile))
        share[:plane.shape[0], :plane.shape[1]] = trusted
        share = share.reshape(ty, tile, tx, tile).mean(axis=(1, 3))
        stats[share < 0.5] = np.nan
    return stats


# ----- what a model keeps -------------------------------------------------------------------------------------
def training_statistics(pairs: Sequence[tuple[Any, np.ndarray | None, np.ndarray | None]],
                        normalisation: Normalisation, window: Sequence[int], *, instance: bool,
                        previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """What labelling compares a new stack with, as plain data for model.json: features of the training objects
    and of the training tiles. ``pairs`` are (image, instance labels or None, trusted mask or None) as the job
    trains on them; ``previous`` (a continued model's parent's) is kept too: the new version knows both."""
    tile = int(previous["tile"]) if previous else tile_size(window)
    objects, tiles = [], []
    for image, labels, known in pairs:
        tiles.append(tile_features(image, normalisation, tile, known)[0])
        if instance and labels is not None:
            trusted = labels if known is None else np.where(_mostly(labels, known), labels, 0)
            objects.append(object_features(image, trusted, normalisation)[1])
    rng = np.random.default_rng(0)
    all_tiles = np.concatenate(tiles) if tiles else np.zeros((0, 2))
    all_tiles = all_tiles[np.isfinite(all_tiles).all(axis=1)]
    all_objects = np.concatenate(objects) if objects else np.zeros((0, len(FEATURES)))
    if previous:
        all_tiles = np.concatenate([all_tiles, np.asarray(previous["tiles"], float).reshape(-1, 2)])
        all_objects = np.concatenate([all_objects, np.asarray(previous["objects"], float).reshape(-1, len(FEATURES))])
    return {"version": STATISTICS_VERSION, "tile": tile, "features": list(FEATURES),
            "objects": _rounded(_sample(_distinct(all_objects), MAX_OBJECTS, rng)),
            "tiles": _rounded(_sample(all_tiles, MAX_TILES, rng))}


def _mostly(labels: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Voxels of objects that lie mostly (over half) where the labels are trusted: a whole training object."""
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    inside = np.bincount(labels[known].ravel(), minlength=top + 1)
    sizes = np.bincount(labels.ravel(), minlength=top + 1)
    keep = inside * 2 > sizes
    keep[0] = False
    return keep[labels]


def _distinct(rows: np.ndarray) -> np.ndarray:
    """Rows as model.json keeps them, each once, in their first order: an object a version saw in its parent's
    data too (its corrections' image overlapping the parent's) would otherwise weigh twice in the distances, and
    the parent's rows, already rounded, would meet their unrounded selves."""
    if not len(rows):
        return rows
    rows = np.asarray(_rounded(rows), float)
    _, first = np.unique(rows, axis=0, return_index=True)
    return rows[np.sort(first)]


def _sample(rows: np.ndarray, most: int, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= most else rows[np.sort(rng.choice(len(rows), most, replace=False))]


def _rounded(rows: np.ndarray) -> list[list[float]]:
    return [[float(f"{v:.4g}") for v in row] for row in rows]


# ----- comparing --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Reference:
    """A training set to measure distance from: rows, each feature's scale, and the typical distance."""

    tree: cKDTree | None
    centre: np.ndarray
    scale: np.ndarray
    typical: float

    @classmethod
    def of(cls, rows: np.ndarray, floors: Sequence[float]) -> "_Reference":
        rows = np.asarray(rows, float).reshape(-1, len(floors))
        if len(rows) == 0:
            return cls(None, np.zeros(len(floors)), np.ones(len(floors)), 1.0)
        centre = np.median(rows, axis=0)
        spread = 1.4826 * np.median(np.abs(rows - centre), axis=0)
        scale = np.maximum(spread, np.asarray(floors, float))
        scaled = rows / scale
        tree = cKDTree(scaled)
        typical = float(max(np.percentile(_nearest_others(tree, scaled), TYPICAL), 1.0)) if len(rows) > 1 else 1.0
        return cls(tree, centre, scale, typical)

    def distance(self, rows: np.ndarray) -> np.ndarray:
        """Each row's mean distance to its nearest training rows, in units of the typical distance (0 without
        training rows: nothing to compare with)."""
        rows = np.asarray(rows, float).reshape(-1, len(self.scale))
        if self.tree is None or not len(rows):
            return np.zeros(len(rows))
        k = min(NEIGHBOURS, self.tree.n)
        found = self.tree.query(rows / self.scale, k=k)[0].reshape(len(rows), -1).mean(axis=1)
        return found / self.typical

    def deviation(self, row: np.ndarray) -> np.ndarray:
        """How far each feature of a row lies from the training median, in its scale (signed)."""
        return (np.asarray(row, float) - self.centre) / self.scale


def _nearest_others(tree: cKDTree, scaled: np.ndarray) -> np.ndarray:
    """Each of the tree's own (scaled) rows' mean distance to its nearest other rows (two rows at least)."""
    k = min(NEIGHBOURS, len(scaled) - 1)
    return tree.query(scaled, k=k + 1)[0][:, 1:].reshape(len(scaled), -1).mean(axis=1)


def _apart(rows: np.ndarray, floors: Sequence[float]) -> np.ndarray:
    """Each row's distance to its nearest *other* rows of the same stack, in units of the stack's own typical
    distance (infinite for all when there are too few rows to tell an outlier from the rest: then the training
    objects alone judge)."""
    rows = np.asarray(rows, float).reshape(-1, len(floors))
    if len(rows) <= NEIGHBOURS + 1:
        return np.full(len(rows), np.inf)
    own = _Reference.of(rows, floors)
    return _nearest_others(own.tree, rows / own.scale) / own.typical  # type: ignore[arg-type]


def unusual(ratio: np.ndarray | float) -> np.ndarray:
    """A distance ratio as a 0..1 sign of error: 0 up to the typical distance, rising towards 1 beyond it."""
    return 1.0 - np.exp(-np.maximum(0.0, np.asarray(ratio, float) - 1.0))


def novelty_map(image: Any, statistics: dict[str, Any], normalisation: Normalisation) -> np.ndarray:
    """(Z, TY, TX) float32, 0..1: how unlike every training tile each tile of ``image`` is (the "new tissue" map;
    one value per ``statistics['tile']`` pixels in-plane, 0 where nothing was kept to compare with)."""
    features, grid = tile_features(image, normalisation, int(statistics["tile"]))
    reference = _Reference.of(np.asarray(statistics.get("tiles") or [], float), TILE_FLOORS)
    values = np.zeros(len(features))
    finite = np.isfinite(features).all(axis=1)
    values[finite] = unusual(reference.distance(features[finite]))
    return values.reshape(grid).astype(np.float32)


@dataclass(frozen=True)
class QueueEntry:
    """One object of the proofreading queue, with why it is there."""

    id: int
    score: float  # 0..1: how likely an error, the four signs together
    doubt: float
    appearance: float
    shape: float
    novelty: float
    reason: str  # the strongest sign, in words
    centroid: tuple[float, ...]  # in voxels, (z, y, x)
    voxels: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["centroid"] = list(self.centroid)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QueueEntry":
        return cls(**{**data, "centroid": tuple(float(v) for v in data["centroid"])})


def error_queue(labels: np.ndarray, image: Any, uncertainty: np.ndarray, statistics: dict[str, Any] | None,
                normalisation: Normalisation, novelty: np.ndarray | None = None) -> list[QueueEntry]:
    """The objects of (Z, Y, X) or (Y, X) ``labels`` from the likeliest error down.

    Each sign is a 0..1 value and they combine as independent chances: score = 1 - prod(1 - sign). Without
    ``statistics`` (a model saved before they were kept) only doubt ranks.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:  # one image: measured as a stack of one slice, its centroids given back in (y, x)
        image = np.asarray(image)[np.newaxis]
        entries = error_queue(labels[np.newaxis], image, np.asarray(uncertainty)[np.newaxis], statistics,
                              normalisation, novelty)
        return [QueueEntry(**{**asdict(e), "centroid": e.centroid[1:]}) for e in entries]
    ranked = rank_objects(labels, uncertainty)
    if not ranked:
        return []
    by_id = {o.id: o for o in ranked}
    ids, features = object_features(image, labels, normalisation, ids=list(by_id))
    if statistics:
        objects = np.asarray(statistics.get("objects") or [], float).reshape(-1, len(FEATURES))
        look = _Reference.of(objects[:, :len(APPEARANCE)], FLOORS[:len(APPEARANCE)])
        form = _Reference.of(objects[:, len(APPEARANCE):], FLOORS[len(APPEARANCE):])
        looks, forms = features[:, :len(APPEARANCE)], features[:, len(APPEARANCE):]
        # Each sign counts where an object is unlike the training objects AND unlike the rest of this stack's
        # (see the module's docstring): a region of new tissue makes all its objects unlike the training ones.
        appearance = np.minimum(unusual(look.distance(looks)), unusual(_apart(looks, FLOORS[:len(APPEARANCE)])))
        shape = np.minimum(unusual(form.distance(forms)), unusual(_apart(forms, FLOORS[len(APPEARANCE):])))
        if novelty is not None:
            new = _object_novelty(labels, ids, novelty, int(statistics["tile"]))
            new = np.minimum(new, unusual(_apart(new[:, np.newaxis], (NOVELTY_FLOOR,))))
        else:
            new = np.zeros(len(ids))
    else:
        look = form = None
        appearance = shape = new = np.zeros(len(ids))
    entries = []
    for k, index in enumerate(ids):
        o = by_id[int(index)]
        signs = {"doubt": float(o.uncertainty), "appearance": float(appearance[k]), "shape": float(shape[k]),
                 "novelty": float(new[k])}
        score = 1.0 - math.prod(1.0 - v for v in signs.values())
        reason = _reason(signs, features[k], look, form)
        entries.append(QueueEntry(int(index), score, signs["doubt"], signs["appearance"], signs["shape"],
                                  signs["novelty"], reason, o.centroid, o.voxels))
    return sorted(entries, key=lambda e: -e.score)


def _object_novelty(labels: np.ndarray, ids: np.ndarray, novelty: np.ndarray, tile: int) -> np.ndarray:
    """The mean of the tile map over each object's voxels."""
    z, y, x = np.indices(labels.shape, sparse=True)
    per_voxel = novelty[z, np.minimum(y // tile, novelty.shape[1] - 1), np.minimum(x // tile, novelty.shape[2] - 1)]
    top = int(labels.max())
    sums = np.bincount(labels.ravel(), weights=per_voxel.ravel(), minlength=top + 1)
    counts = np.bincount(labels.ravel(), minlength=top + 1)
    return sums[ids] / np.maximum(counts[ids], 1)


WORDS = {"mean": ("darker", "brighter"), "spread": ("more even", "more varied"),
         "contrast": ("less contrast with its surroundings", "more contrast with its surroundings"),
         "texture": ("smoother", "rougher"), "log_volume": ("smaller", "larger"),
         "log_section": ("a smaller section", "a larger section"), "elongation": ("rounder", "more elongated"),
         "fullness": ("irregular, as merged objects are", "fuller")}


def _reason(signs: dict[str, float], row: np.ndarray, look: _Reference | None, form: _Reference | None) -> str:
    strongest = max(signs, key=signs.get)
    if strongest == "doubt" or look is None or form is None:
        return f"the model is unsure ({signs['doubt']:.2f})"
    if strongest == "novelty":
        return "lies in tissue unlike the training stack"
    reference, names, values = ((look, APPEARANCE, row[:len(APPEARANCE)]) if strongest == "appearance"
                                else (form, SHAPE, row[len(APPEARANCE):]))
    deviation = reference.deviation(values)
    k = int(np.argmax(np.abs(deviation)))
    word = WORDS[names[k]][int(deviation[k] > 0)]
    if names[k] in ("log_volume", "log_section"):
        word += f" ({math.exp(values[k] - reference.centre[k]):.1f}x the typical training object)"
    return f"unlike the training objects: {word}"


def with_queue(result: LabelResult, image: Any) -> LabelResult:
    """An instance model's auto-label result with its "new tissue" map and its proofreading queue, measured on
    the labels and uncertainty it holds (arrays, or the files they were written to)."""
    if result.labels is None or result.uncertainty is None or result.record.config.mode != "instance":
        return result
    novelty, queue = queue_for(result.record, _loaded(result.labels), image, _loaded(result.uncertainty))
    return replace(result, novelty=novelty, queue=tuple(queue))


def queue_for(record: ModelRecord, labels: np.ndarray, image: Any,
              uncertainty: np.ndarray) -> tuple[np.ndarray | None, list[QueueEntry]]:
    """(the "new tissue" map, the queue) of labels a user is proofreading, by what ``record`` trained on."""
    normalisation = Normalisation.from_dict(record.normalisation)
    statistics = record.statistics
    novelty = novelty_map(image, statistics, normalisation) if statistics else None
    return novelty, error_queue(labels, image, uncertainty, statistics, normalisation, novelty)


def queue_document(result: LabelResult) -> dict[str, Any]:
    """The queue as JSON values (``predict --queue``; the dock reads it back with ``queue_from_document``)."""
    tile = (result.record.statistics or {}).get("tile")
    return {"model": result.record.name, "tile": tile, "entries": [e.to_dict() for e in result.queue or ()]}


def queue_from_document(document: dict[str, Any]) -> tuple[QueueEntry, ...]:
    return tuple(QueueEntry.from_dict(e) for e in document.get("entries") or ())


def _loaded(array: Any) -> np.ndarray:
    return read_array(array) if isinstance(array, (str, Path)) else np.asarray(array)
