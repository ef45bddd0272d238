import numpy as np
import torch

from napari_plantbio_train.models.losses import GAP_WEIGHT, gap_weights, segmentation_loss
from napari_plantbio_train.training.targets import instance_targets


def _two_near_objects() -> np.ndarray:
    labels = np.zeros((1, 16, 40), dtype=np.uint16)
    labels[0, 2:14, 2:14] = 1
    labels[0, 2:14, 16:28] = 2  # two pixels of background between them (columns 14 and 15)
    return labels


def test_the_gap_between_near_objects_weighs_more_than_lone_background():
    target = torch.from_numpy(instance_targets(_two_near_objects(), per_slice=True, contour_width=2))[None]
    weights = gap_weights(target)
    assert weights.shape == (1, 1, 1, 16, 40)
    assert torch.all(weights[0, 0, 0, 2:14, 14:16] == GAP_WEIGHT)
    assert torch.all(weights[0, 0, 0, :, 32:] == 1.0)  # background beside one object only
    assert torch.all(weights[0, 0, 0, 2:14, 2:14] == 1.0)  # objects, contour band included

    # Calling a gap voxel foreground costs GAP_WEIGHT times the cross-entropy of calling a lone background voxel so
    # (the Dice term moves alike for both).
    base = torch.where(target > 0, 8.0, -8.0)  # confident and right everywhere

    def cost(y: int, x: int) -> float:
        logits = base.clone()
        logits[0, 0, 0, y, x] = 8.0  # foreground where the labels say background
        return float(segmentation_loss(logits, target, "instance") - segmentation_loss(base, target, "instance"))

    gap, lone = cost(8, 14), cost(8, 36)
    per_voxel = float(torch.nn.functional.softplus(torch.tensor(8.0)) - torch.nn.functional.softplus(torch.tensor(-8.0)))
    per_voxel /= target.numel()  # the cross-entropy is a mean over every voxel of both maps
    assert lone > per_voxel * 0.99
    assert np.isclose(gap - lone, (GAP_WEIGHT - 1) * per_voxel, rtol=1e-3)
