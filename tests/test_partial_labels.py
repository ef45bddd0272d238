"""Training on partly painted labels: unpainted slices and the ignore value add nothing to the loss."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import chloroplast_stack
import torch

from napari_plantbio_train import planning
from napari_plantbio_train.job.config import ConfigError, TrainConfig
from napari_plantbio_train.models.normalisation import Normalisation
from napari_plantbio_train.training.sampling import WindowSampler
from napari_plantbio_train.job.events import Validation
from napari_plantbio_train.training.material import prepare
from napari_plantbio_train.training.loop import run_to_end, train
from napari_plantbio_train.models.losses import segmentation_loss

TINY = dict(base_channels=4, depth=2, iterations=12, validate_every=6, iteration_save=6, batch_size=2, lr=3e-3)


@pytest.mark.parametrize("mode", ["instance", "semantic"])
def test_unknown_voxels_do_not_change_the_loss(mode):
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 3, 8, 8, generator=rng)
    if mode == "instance":
        target = (torch.rand(2, 2, 3, 8, 8, generator=rng) > 0.5).float()
    else:
        target = torch.randint(0, 2, (2, 3, 8, 8), generator=rng)
    known = torch.zeros(2, 3, 8, 8, dtype=torch.bool)
    known[:, 1] = True  # only the middle slice was painted
    other = logits.clone()
    other[:, :, [0, 2]] = torch.randn(2, 2, 2, 8, 8, generator=rng) * 10
    assert torch.allclose(segmentation_loss(logits, target, mode, known), segmentation_loss(other, target, mode, known))
    assert not torch.allclose(segmentation_loss(logits, target, mode), segmentation_loss(other, target, mode))
    # Everything known: the same loss as without a mask.
    everything = torch.ones_like(known)
    assert torch.allclose(segmentation_loss(logits, target, mode, everything), segmentation_loss(logits, target, mode))


def test_windows_are_never_drawn_from_unpainted_slices():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (6, 64, 64), dtype=np.uint8)
    target = np.zeros((6, 64, 64), np.uint8)
    target[1, 10:20, 10:20] = 1
    known = np.zeros((6, 64, 64), bool)
    known[[1, 4]] = True  # slice 4 painted, all background
    sampler = WindowSampler(image, target, target > 0, ((0, 6), (0, 64), (0, 64)), (1, 32, 32),
                            Normalisation(0.0, 255.0), rng, known=known)
    for _ in range(50):
        _, y, painted = sampler.sample(4)
        assert painted.shape == y.shape == (4, 1, 32, 32)
        assert painted.all()  # a 2D window lies on a painted slice, so all of it counts


def _three_painted_slices():
    image, labels = chloroplast_stack((slice(None), slice(1872, 2064), slice(1824, 2016)))
    painted = labels.copy()
    unpainted = [z for z in range(labels.shape[0]) if z not in (1, 5, 8)]
    painted[unpainted] = 0
    return np.ascontiguousarray(image), painted


def test_training_on_three_painted_slices_of_the_chloroplast_crop(models_dir):
    image, painted = _three_painted_slices()
    config = TrainConfig(name="sparse", mode="instance", dims="3d", window=(4, 64, 64), voxel_size=(5, 5, 50),
                         painted_slices_only=True, **TINY)
    material = prepare(config, image, painted, previous=None)
    assert material.known is not None
    assert [bool(material.known[z].all()) for z in range(10)] == [z in (1, 5, 8) for z in range(10)]
    _, events = run_to_end(train(config, image, painted, models_dir=models_dir))
    validations = [e for e in events if isinstance(e, Validation)]
    assert len(validations) == 2 and all(np.isfinite(v.score) for v in validations)
    # Scored only on painted slices: the truth counted there has objects.
    assert validations[-1].metrics["n_true"] > 0


def test_ignore_value_is_not_a_class(plate_crop, models_dir):
    image, labels = plate_crop
    marked = labels.astype(np.uint16)
    marked[:, :60] = 9  # "not painted here"
    config = TrainConfig(name="ignore", mode="semantic", dims="2d", window=(64, 64), ignore_value=9, **TINY)
    material = prepare(config, image, marked, previous=None)
    assert material.classes == [0, 1]
    assert not material.known[:, :, :60].any() and material.known[:, :, 60:].all()
    run_to_end(train(config, image, marked, models_dir=models_dir))
    with pytest.raises(ConfigError, match="ignore_value"):
        planning.validate(TrainConfig(name="bad", ignore_value=-2))
