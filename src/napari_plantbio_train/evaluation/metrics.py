"""Segmentation scores for validation during training and for evaluation afterwards.

Instance scores count objects, not pixels: a merge or a split costs whole objects, which is the error a
biologist counting organelles cares about. Overlaps come from one contingency table over the pixels where both
segmentations have an object, so the cost grows with the image size, not with the square of the object count.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment


def match_instances(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Match objects (ids > 0) one to one where IoU >= `iou_threshold` and score the matching.

    Keys: tp, fp, fn, precision, recall, f1, mean_matched_iou (nan without matches), n_pred, n_true. Two empty
    segmentations agree perfectly (all scores 1.0); if only one is empty, precision, recall and f1 are 0.0.
    """
    tp, n_pred, n_true, iou_sum = _match_counts(*_same_shape(pred, truth), iou_threshold)
    return instance_scores(tp, n_pred, n_true, iou_sum)


def match_instances_per_slice(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Like `match_instances`, but for (Z, Y, X) stacks of a 2D model, whose ids need not agree across slices.

    Objects are matched within each slice and counts are summed over slices before the ratios are taken, so a
    slice with many objects weighs more than a nearly empty one.
    """
    pred, truth = _same_shape(pred, truth)
    if pred.ndim != 3:
        raise ValueError(f"expected (Z, Y, X) stacks, got shape {pred.shape}")
    totals = np.zeros(4)
    for pred_slice, truth_slice in zip(pred, truth):
        totals += _match_counts(pred_slice, truth_slice, iou_threshold)
    tp, n_pred, n_true, iou_sum = totals
    return instance_scores(int(tp), int(n_pred), int(n_true), float(iou_sum))


def foreground_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of the object masks (> 0), blind to how objects are split; two empty masks agree (1.0)."""
    pred, truth = _same_shape(pred, truth)
    pred_mask, truth_mask = pred > 0, truth > 0
    union = np.count_nonzero(pred_mask | truth_mask)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred_mask & truth_mask) / union


def semantic_scores(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> dict[str, float]:
    """Per-class IoU and Dice ("iou_<c>", "dice_<c>") and "mean_iou" over the non-background classes.

    Background usually dominates EM stacks and would flatter the mean, so it enters only when it is the sole
    class. A class absent from both maps has no defined score: nan, left out of the mean (nan if none is left).
    """
    pred, truth = _same_shape(pred, truth)
    if n_classes < 1:
        raise ValueError(f"n_classes must be at least 1, got {n_classes}")
    for name, array in (("pred", pred), ("truth", truth)):
        outside = np.unique(array[(array < 0) | (array >= n_classes)])
        if outside.size:
            raise ValueError(f"{name} holds classes {outside[:5].tolist()} outside 0..{n_classes - 1}")
    codes = truth.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    confusion = np.bincount(codes, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    intersection = np.diag(confusion).astype(np.float64)
    total = confusion.sum(axis=0) + confusion.sum(axis=1)  # |pred == c| + |truth == c|
    union = total - intersection
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
        dice = np.where(total > 0, 2 * intersection / total, np.nan)
    scores: dict[str, float] = {}
    for c in range(n_classes):
        scores[f"iou_{c}"] = float(iou[c])
        scores[f"dice_{c}"] = float(dice[c])
    foreground = iou[1:] if n_classes > 1 else iou
    present = foreground[~np.isnan(foreground)]
    scores["mean_iou"] = float(present.mean()) if present.size else math.nan
    return scores


def _same_shape(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must have the same shape")
    return pred, truth


def _match_counts(pred: np.ndarray, truth: np.ndarray, iou_threshold: float) -> tuple[int, int, int, float]:
    """(true positives, predicted objects, true objects, summed IoU of the matches) for one pair of label maps."""
    # Compact ids (0 stays 0 when present) keep the pair codes and size tables small whatever the raw ids are.
    pred_ids, pred_index = np.unique(pred.ravel(), return_inverse=True)
    truth_ids, truth_index = np.unique(truth.ravel(), return_inverse=True)
    pred_offset = int(pred_ids.size > 0 and pred_ids[0] == 0)
    truth_offset = int(truth_ids.size > 0 and truth_ids[0] == 0)
    n_pred, n_true = pred_ids.size - pred_offset, truth_ids.size - truth_offset
    if n_pred == 0 or n_true == 0:
        return 0, n_pred, n_true, 0.0

    pred_sizes = np.bincount(pred_index)
    truth_sizes = np.bincount(truth_index)
    both = (pred.ravel() > 0) & (truth.ravel() > 0)
    codes = pred_index[both].astype(np.int64) * truth_ids.size + truth_index[both]
    pair_codes, intersections = np.unique(codes, return_counts=True)
    rows, cols = np.divmod(pair_codes, truth_ids.size)
    ious = intersections / (pred_sizes[rows] + truth_sizes[cols] - intersections)

    candidate = ious >= iou_threshold
    rows, cols, ious = rows[candidate], cols[candidate], ious[candidate]
    if ious.size == 0:
        return 0, n_pred, n_true, 0.0
    if iou_threshold <= 0.5:
        # Below or at 0.5 one object can reach the threshold with several partners: keep the one-to-one set of
        # pairs with the largest summed IoU, on a matrix of the candidate objects only.
        row_ids, row_pos = np.unique(rows, return_inverse=True)
        col_ids, col_pos = np.unique(cols, return_inverse=True)
        matrix = np.zeros((row_ids.size, col_ids.size))
        matrix[row_pos, col_pos] = ious
        chosen_rows, chosen_cols = linear_sum_assignment(matrix, maximize=True)
        matched = matrix[chosen_rows, chosen_cols]
        # Pairs below the threshold were absent (0) in the matrix; the assignment may still pair them.
        matched = matched[matched > 0]
    else:
        # Above 0.5 two objects claiming one partner would need to overlap: every candidate pair is unique.
        matched = ious
    return int(matched.size), n_pred, n_true, float(matched.sum())


def instance_scores(tp: int, n_pred: int, n_true: int, iou_sum: float) -> dict[str, float]:
    """The scores of a matching from its counts (also of several matchings pooled: counts add up)."""
    if n_pred == 0 and n_true == 0:
        precision = recall = f1 = 1.0
    else:
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1 = 2 * tp / (n_pred + n_true)
    return {
        "tp": float(tp),
        "fp": float(n_pred - tp),
        "fn": float(n_true - tp),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_matched_iou": iou_sum / tp if tp else math.nan,
        "n_pred": float(n_pred),
        "n_true": float(n_true),
    }
