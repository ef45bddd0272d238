"""The objective the networks are trained with, one per mode: cross-entropy and Dice over classes (semantic),
binary cross-entropy and Dice on the foreground and contour maps (instance); voxels the labels do not vouch
for add nothing. The precision probe runs the same loss as training.

An instance model's cross-entropy weighs the background between two near objects (training/targets.py marks it as
contour) ten times, as U-Net's weight map does: on the chloroplast stack the unseen part's F1 went 0.619 -> 0.696
against the contour alone (one run each), and five runs of the product with both scored a mean of 0.640 against
0.591 for five before them (benchmarks/results/label_accuracy.txt, 2026-12-07 17:16 and 18:32-20:08).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice per channel over the whole batch: stable when a window holds no object of a class."""
    dims = (0, *range(2, prob.ndim))
    overlap = (prob * target).sum(dims)
    total = prob.sum(dims) + target.sum(dims)
    return (1.0 - (2.0 * overlap + eps) / (total + eps)).mean()


GAP_WEIGHT = 10.0  # as U-Net's weight map (w0 = 10) for the background separating touching cells


def gap_weights(target: torch.Tensor) -> torch.Tensor:
    """(B, 1, *spatial) BCE weights of an instance target: GAP_WEIGHT on the background between two near objects
    (contour but not foreground: training/targets.py marks nothing else so), 1 elsewhere. Those voxels are under 1%
    of a window, and a network that paints them as foreground merges the two objects."""
    gap = (target[:, 1:2] > 0) & (target[:, 0:1] == 0)
    return 1.0 + (GAP_WEIGHT - 1.0) * gap.to(target.dtype)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, mode: str,
                      known: torch.Tensor | None = None) -> torch.Tensor:
    """Semantic: cross-entropy + Dice over classes. Instance: BCE + Dice on foreground and contour maps.

    `known` (B, *spatial), where given, is 1 where the labels were painted and 0 where they say nothing (an
    unpainted slice, the ignore value): those voxels add nothing to either term, so a partly painted stack
    does not teach the network that everything unpainted is background.
    """
    logits = logits.float()
    if known is None:
        if mode == "semantic":
            onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
            return F.cross_entropy(logits, target) + dice_loss(logits.softmax(1), onehot)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * gap_weights(target)
        return bce.mean() + dice_loss(logits.sigmoid(), target)
    weight = known.to(logits.dtype).unsqueeze(1)  # (B, 1, *spatial): the same for every channel
    count = weight.sum().clamp(min=1.0)
    if mode == "semantic":
        onehot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(logits.dtype)
        ce = (F.cross_entropy(logits, target, reduction="none") * weight[:, 0]).sum() / count
        return ce + dice_loss(logits.softmax(1) * weight, onehot * weight)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight * gap_weights(target)
    return bce.sum() / (count * logits.shape[1]) + dice_loss(logits.sigmoid() * weight, target * weight)
