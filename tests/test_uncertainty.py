"""The uncertainty map and the ranking of objects by it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_plantbio_train.inference.sliding import with_tta
from napari_plantbio_train.inference.uncertainty import entropy_map, rank_objects


def test_entropy_is_zero_when_sure_and_one_for_a_coin_toss():
    sure = np.zeros((2, 1, 4, 4), np.float32)
    sure[0, :, :2] = 1.0
    assert entropy_map(sure, "instance").max() < 1e-3
    toss = np.full((2, 1, 4, 4), 0.5, np.float32)
    assert entropy_map(toss, "instance").min() == pytest.approx(1.0, abs=1e-4)
    classes = np.full((3, 1, 4, 4), 1 / 3, np.float32)
    assert entropy_map(classes, "semantic").min() == pytest.approx(1.0, abs=1e-4)


def test_high_where_test_time_variants_disagree():
    """A fake network that sees an object on the left half only in the unflipped orientation: after averaging the
    flips, the disputed half is uncertain and the rest is not."""
    def lopsided(x: torch.Tensor) -> torch.Tensor:
        fg = torch.zeros_like(x)
        fg[..., :, : x.shape[-1] // 2] = 1.0
        return torch.cat([fg, torch.zeros_like(x)], dim=1)

    x = torch.zeros(1, 1, 8, 8)
    averaged = with_tta(lopsided, 4, (8, 8))(x).numpy()[0]
    plain = lopsided(x).numpy()[0]
    assert entropy_map(plain[:, None], "instance").max() < 1e-3  # alone it is sure of itself
    disputed = entropy_map(averaged[:, None], "instance")[0]
    assert disputed.min() > 0.99  # every pixel is claimed by half of the variants


def test_objects_are_ranked_most_uncertain_first():
    labels = np.zeros((1, 20, 30), np.uint16)
    labels[0, 2:8, 2:8] = 1
    labels[0, 10:16, 2:8] = 2
    labels[0, 2:8, 15:25] = 3
    doubt = np.zeros(labels.shape, np.float32)
    doubt[labels == 2] = 0.9
    doubt[labels == 3] = 0.4
    ranked = rank_objects(labels, doubt, band=1)
    assert [o.id for o in ranked] == [2, 3, 1]
    assert ranked[0].centroid == pytest.approx((0.0, 12.5, 4.5)) and ranked[0].voxels == 36
    assert rank_objects(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.float32)) == []


def test_ids_left_out_by_an_erasure_are_passed_over_quietly():
    labels = np.zeros((12, 12), np.uint16)
    labels[1:4, 1:4], labels[6:10, 6:10] = 2, 5  # 1, 3 and 4 erased
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing id's centroid would be 0/0
        ranked = rank_objects(labels, np.ones(labels.shape, np.float32))
    assert sorted(o.id for o in ranked) == [2, 5] and {o.voxels for o in ranked} == {9, 16}


def test_label_stack_returns_the_map(chloroplast_crop, tmp_path):
    from napari_plantbio_train.job.config import TrainConfig
    from napari_plantbio_train.inference.label import LabelSettings, label_stack, run_to_end
    from napari_plantbio_train.training.loop import run_to_end as train_to_end
    from napari_plantbio_train.training.loop import train

    image, labels = chloroplast_crop
    train_to_end(train(TrainConfig(name="u", mode="instance", dims="3d", window=(2, 64, 64), voxel_size=(5, 5, 50),
                                   base_channels=4, depth=2, iterations=4, validate_every=4, batch_size=1),
                       image, labels, models_dir=tmp_path))
    result, _ = run_to_end(label_stack("u", image, models_dir=tmp_path, uncertainty=True, probabilities=True,
                                       settings=LabelSettings(block_voxels=60_000, precision="fp32")))
    assert result.uncertainty.shape == image.shape and result.uncertainty.dtype == np.float32
    np.testing.assert_allclose(result.uncertainty, entropy_map(result.probabilities, "instance"), atol=1e-5)
