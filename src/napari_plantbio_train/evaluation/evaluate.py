"""Scoring a finished segmentation against ground truth, and measuring the objects it found.

Training validates on one held-out block; this module answers the question a user asks afterwards about a whole
stack: how many organelles were found, missed, split or merged, and how big and where each one is. Matching and
pixel scores come from ``metrics`` so that evaluation and validation can never disagree; this module only checks
its inputs, names the scores and writes them out. Nothing here imports Qt, so the CLI and scripts can use it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..io.checks import check_labels as _check_labels
from ..io.files import atomic_write
from ..job.config import ConfigError
from ..job.kinds import MODES
from .metrics import foreground_iou, match_instances, match_instances_per_slice, semantic_scores

# Past this many distinct values a "semantic" map is almost surely an instance map, and the class-by-class
# confusion table (its square) would no longer be small.
MAX_SEMANTIC_CLASSES = 256
# Ids up to this are measured directly (tables of this length); larger ids are first renumbered 1..n.
MAX_DIRECT_ID = 1 << 22


def evaluate(pred: np.ndarray, truth: np.ndarray, mode: str, per_slice: bool = False) -> dict[str, float]:
    """Check both label maps once, then score them as classes ("semantic") or as objects ("instance").

    ``per_slice`` matters only for instances: pixel scores summed over slices equal the whole stack's.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "semantic":
        return evaluate_semantic(pred, truth)
    return evaluate_instances(pred, truth, per_slice=per_slice)


def evaluate_instances(pred: np.ndarray, truth: np.ndarray, *, thresholds: Sequence[float] = (0.5, 0.75),
                       per_slice: bool = False) -> dict[str, float]:
    """Object counts and one-to-one matching scores at each IoU threshold, flat keys suffixed by the threshold.

    For threshold t (suffix ``round(100 t)``: ``_50``, ``_75``): precision, recall, f1, ap, tp, fp, fn. Then
    mean_matched_iou_50, n_pred, n_true, count_difference (n_pred - n_true) and foreground_iou. ``ap`` is
    TP / (TP + FP + FN), the "average precision" of the DSB 2018 challenge and StarDist: one number that a
    miss, a false object, a split or a merge all lower. With ``per_slice`` a (Z, Y, X) stack is matched slice by
    slice (for a 2D model, whose ids need not agree across slices) and every count is of 2D objects, summed.
    """
    pred, truth = check_pair(pred, truth)
    suffixes = _threshold_suffixes(thresholds)
    match = match_instances_per_slice if per_slice and pred.ndim == 3 else match_instances

    scores: dict[str, float] = {}
    at_half = None
    for threshold, suffix in zip(thresholds, suffixes, strict=True):
        matched = match(pred, truth, threshold)
        if threshold == 0.5:
            at_half = matched
        tp, fp, fn = int(matched["tp"]), int(matched["fp"]), int(matched["fn"])
        scores[f"precision_{suffix}"] = matched["precision"]
        scores[f"recall_{suffix}"] = matched["recall"]
        scores[f"f1_{suffix}"] = matched["f1"]
        # Two empty maps agree perfectly, as in match_instances.
        scores[f"ap_{suffix}"] = tp / (tp + fp + fn) if tp + fp + fn else 1.0
        scores[f"tp_{suffix}"], scores[f"fp_{suffix}"], scores[f"fn_{suffix}"] = tp, fp, fn
    if at_half is None:
        at_half = match(pred, truth, 0.5)
    n_pred, n_true = int(at_half["n_pred"]), int(at_half["n_true"])
    scores["mean_matched_iou_50"] = at_half["mean_matched_iou"]
    scores["n_pred"], scores["n_true"], scores["count_difference"] = n_pred, n_true, n_pred - n_true
    scores["foreground_iou"] = float(foreground_iou(pred, truth))
    return scores


def evaluate_semantic(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pixel accuracy, then mean IoU and mean Dice over the non-background values, then iou_<v> and dice_<v>.

    Classes are the label values present in either map (0/255 masks, or 0, 1, 3 after a class was dropped), so
    keys name the values a user painted, not internal indices. 0 is background and stays out of the means, as
    in ``metrics.semantic_scores``, unless it is the only value.
    """
    pred, truth = check_pair(pred, truth)
    values = _values(pred, "prediction") | _values(truth, "truth")
    # Background keeps index 0, even when absent, because semantic_scores leaves index 0 out of the mean.
    ordered = sorted(values | {0})
    classes = np.array(ordered, dtype=np.result_type(pred.dtype, truth.dtype))
    n_classes = len(ordered)
    by_index = semantic_scores(np.searchsorted(classes, pred), np.searchsorted(classes, truth), n_classes)

    per_value: dict[str, float] = {}
    for index, value in enumerate(ordered):
        if value in values:
            per_value[f"iou_{value}"] = by_index[f"iou_{index}"]
            per_value[f"dice_{value}"] = by_index[f"dice_{index}"]
    # Indices from 1 are values present in a map, so each has a Dice; as for IoU, background alone is its own mean.
    foreground_dice = [by_index[f"dice_{index}"] for index in range(1, n_classes)] or [by_index["dice_0"]]
    return {
        "pixel_accuracy": np.count_nonzero(pred == truth) / pred.size if pred.size else math.nan,
        "mean_iou": by_index["mean_iou"],
        "mean_dice": float(np.mean(foreground_dice)),
        **per_value,
    }


# A semantic map holds a few classes, each usually in many places; past this many values, or with about one
# connected region per value, it is more likely an instance map scored in the wrong mode.
FEW_CLASSES = 16


def mode_warning(truth: np.ndarray, mode: str, option: str = "--mode") -> str | None:
    """Why ``truth`` looks like the other kind of labels than ``mode`` scores, or None: object ids scored as
    classes (many values, or each value one region), or classes scored as objects (a few values, each in many
    separate regions, as a 0/1 mask of several objects is). Scores are still computed: this only warns."""
    truth = np.asarray(truth)
    values = [int(v) for v in np.unique(truth) if v != 0]
    if not values:
        return None
    if mode == "semantic":
        if len(values) > FEW_CLASSES:
            return (f"the truth holds {len(values)} distinct values, as object ids do (a semantic map holds a few "
                    f"classes): each is scored as a class; use {option} instance to score objects")
        regions = _regions(truth, values)
        if len(values) >= 3 and regions < 1.5 * len(values):
            return (f"the truth's {len(values)} values are about one connected region each ({regions} regions), as "
                    f"object ids are: each is scored as a class; use {option} instance to score objects")
        return None
    if len(values) <= FEW_CLASSES:
        regions = _regions(truth, values)
        if regions >= 2 * len(values):
            shown = ", ".join(map(str, [0, *values][:6]))
            return (f"the truth holds class values ({shown}), not object ids: its {regions} separate regions are "
                    f"scored as {len(values)} object(s); use {option} semantic to score classes, or label the "
                    "objects apart")
    return None


def _regions(labels: np.ndarray, values: list[int]) -> int:
    """Connected regions of all the values together (each value's own, face-connected)."""
    return sum(int(ndimage.label(labels == v)[1]) for v in values)


def check_pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as 2D or 3D integer label maps of one shape; the error says which input is wrong and how."""
    pred, truth = check_labels(pred, "prediction"), check_labels(truth, "truth")
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth shape {truth.shape}; "
                         "both must cover the same pixels")
    return pred, truth


def check_labels(array: np.ndarray, name: str) -> np.ndarray:
    """One label map by the package's one rule (``checks.check_labels``), its problem worded for a score table:
    "truth holds negative values", not "truth: holds negative values"."""
    try:
        return _check_labels(array, field=name)
    except ConfigError as error:
        raise ValueError(f"{name} {error.message}") from None


def scores_table(scores: Mapping[str, float]) -> str:
    """Two aligned columns, for a terminal or a log."""
    width = max([len("metric"), *(len(name) for name in scores)])
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{name:<{width}}  {format_score(value)}" for name, value in scores.items()]
    return "\n".join(lines)


def format_score(value: float) -> str:
    """Counts as integers, ratios to four decimals; shared by the table and the dock."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return "nan" if math.isnan(value) else f"{value:.4f}"


def write_scores_csv(scores: Mapping[str, float], path: str | Path) -> None:
    """Columns metric, value at full precision; written whole or not at all."""
    _write_csv(path, ["metric", "value"], ({"metric": k, "value": v} for k, v in scores.items()))


def write_scores_rows_csv(rows: Sequence[Mapping[str, object]], path: str | Path) -> None:
    """Several stacks' scores, a row each (columns: the rows' keys in first-seen order, e.g. prediction, truth,
    then the metrics), so a spreadsheet compares stacks side by side; written whole or not at all."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    _write_csv(path, columns, rows)


def object_statistics(labels: np.ndarray, voxel_size_nm: tuple[float, float, float]) -> list[dict[str, float]]:
    """Size, bounding box and centroid of each object (id > 0), in voxels and in nm, ordered by id.

    ``voxel_size_nm`` is (x, y, z), as elsewhere in this package. A 3D row holds id, voxels, volume_nm3, z0, y0,
    x0, z1, y1, x1, centroid_z, centroid_y, centroid_x, centroid_z_nm, centroid_y_nm, centroid_x_nm; a 2D row
    holds area_nm2 (x times y) and no z. Box ends are exclusive, like slices. Positions are from the array's
    first voxel, whose centre is at 0 nm. Sizes and centroids are three bincounts per slice, so the cost is one
    pass over the stack whatever the objects' shapes (about 1 s for 150 objects in 10 x 2341 x 2195); only the
    bounding boxes come from ``find_objects``.
    """
    labels = check_labels(labels, "labels")
    size = np.asarray(voxel_size_nm, dtype=float)
    if size.shape != (3,) or not np.all(np.isfinite(size) & (size > 0)):
        raise ValueError(f"voxel_size_nm must be three positive numbers (x, y, z), got {voxel_size_nm}")
    is_2d = labels.ndim == 2
    stack = labels[np.newaxis] if is_2d else labels
    ids, stack = _compact_ids(stack)
    if ids.size == 0:
        return []

    n = ids.size + 1  # index 0 is background
    counts, z_sum, y_sum, x_sum = (np.zeros(n) for _ in range(4))
    rows_y, cols_x = np.indices(stack.shape[1:], dtype=float)
    rows_y, cols_x = rows_y.ravel(), cols_x.ravel()
    for z, plane in enumerate(stack):
        flat = plane.ravel().astype(np.intp, copy=False)  # bincount refuses uint64
        in_plane = np.bincount(flat, minlength=n)
        counts += in_plane
        z_sum += z * in_plane
        y_sum += np.bincount(flat, weights=rows_y, minlength=n)
        x_sum += np.bincount(flat, weights=cols_x, minlength=n)

    x_nm, y_nm, z_nm = size.tolist()
    rows = []
    for index, box in enumerate(ndimage.find_objects(stack), start=1):
        if box is None:
            continue
        voxels = int(counts[index])
        centre = (float(z_sum[index]) / voxels, float(y_sum[index]) / voxels, float(x_sum[index]) / voxels)
        row: dict[str, float] = {"id": int(ids[index - 1]), "voxels": voxels}
        if is_2d:
            row["area_nm2"] = voxels * x_nm * y_nm
            row.update(y0=box[1].start, x0=box[2].start, y1=box[1].stop, x1=box[2].stop)
            row.update(centroid_y=centre[1], centroid_x=centre[2],
                       centroid_y_nm=centre[1] * y_nm, centroid_x_nm=centre[2] * x_nm)
        else:
            row["volume_nm3"] = voxels * x_nm * y_nm * z_nm
            row.update(z0=box[0].start, y0=box[1].start, x0=box[2].start,
                       z1=box[0].stop, y1=box[1].stop, x1=box[2].stop)
            row.update(centroid_z=centre[0], centroid_y=centre[1], centroid_x=centre[2],
                       centroid_z_nm=centre[0] * z_nm, centroid_y_nm=centre[1] * y_nm,
                       centroid_x_nm=centre[2] * x_nm)
        rows.append(row)
    return rows


def write_object_statistics_csv(rows: Sequence[Mapping[str, float]], path: str | Path) -> None:
    """One line per object, columns as in ``object_statistics``; no objects gives a header-only file."""
    columns = list(rows[0]) if rows else ["id", "voxels"]
    _write_csv(path, columns, rows)


def _write_csv(path: str | Path, columns: list[str], rows: Iterable[Mapping[str, object]]) -> None:
    # Imported here: store imports torch, which scoring does not need and which takes seconds to load.

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(Path(path), lambda handle: handle.write(text.getvalue().encode()))


def _threshold_suffixes(thresholds: Sequence[float]) -> list[str]:
    suffixes = []
    for threshold in thresholds:
        if not 0 < threshold <= 1:
            raise ValueError(f"IoU thresholds must lie in (0, 1], got {threshold}")
        suffixes.append(f"{round(threshold * 100):02d}")
    if len(set(suffixes)) != len(suffixes):
        raise ValueError(f"thresholds {list(thresholds)} round to the same percentage; key names would clash")
    return suffixes


def _values(array: np.ndarray, name: str) -> set[int]:
    """The distinct values of a class map; small unsigned types are counted, not sorted (a stack is ~50 M)."""
    if array.dtype.kind == "u" and array.dtype.itemsize <= 2:
        values = np.flatnonzero(np.bincount(array.ravel(), minlength=1))
    else:
        values = np.unique(array)
    if values.size > MAX_SEMANTIC_CLASSES:
        raise ValueError(f"{name} holds {values.size} distinct values, too many for classes; "
                         "is it an instance segmentation? Use instance mode")
    return set(values.tolist())


def _compact_ids(stack: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the id behind each index 1..n; the stack as indices 1..n, 0 for background), for tables of length n + 1.

    Most label maps number their objects from 1, so the stack is its own index map (ids absent from it are
    skipped later); ids beyond MAX_DIRECT_ID (hashes, timestamps) are renumbered first.
    """
    top = int(stack.max()) if stack.size else 0
    if top <= MAX_DIRECT_ID:
        return np.arange(1, top + 1), stack  # absent ids get no box from find_objects and are skipped
    # Unique and index slice by slice: on 50 M voxels about 2 s, against 20 s for one unique with return_inverse.
    values = np.unique(np.concatenate([np.unique(plane) for plane in stack]))
    if values[0] != 0:
        values = np.concatenate([np.zeros(1, values.dtype), values])
    index = np.empty(stack.shape, dtype=np.min_scalar_type(values.size - 1))
    for z, plane in enumerate(stack):
        index[z] = np.searchsorted(values, plane)
    return values[1:], index
