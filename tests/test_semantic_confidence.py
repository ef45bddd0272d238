"""A semantic model's confidence floor: regions less sure than any its validation confirmed go to the background."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_plantbio_train.inference.predictor import labels_from_probabilities, make_predictor
from napari_plantbio_train.inference.semantic import (CONFIDENCE_MARGIN, confirmed_confidence, min_confidence_from,
                                                      semantic_labels)
from napari_plantbio_train.inference.sliding import predict_stack
from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.job.events import run_to_end
from napari_plantbio_train.models.normalisation import Normalisation
from napari_plantbio_train.models.store import ModelStore
from napari_plantbio_train.training.loop import train
from napari_plantbio_train.training.validation import VALIDATION_OVERLAP


def _maps(*regions: tuple[slice, slice, float], shape=(1, 40, 60)) -> np.ndarray:
    """(2, Z, Y, X) softmax-like maps: class 1 at the given probability inside each region, 0.05 elsewhere."""
    fg = np.full(shape, 0.05, np.float32)
    for ys, xs, p in regions:
        fg[:, ys, xs] = p
    return np.stack([1 - fg, fg])


def test_an_unsure_region_becomes_background_and_a_sure_one_stays():
    maps = _maps((slice(2, 12), slice(2, 12), 0.97), (slice(20, 30), slice(30, 40), 0.7))
    plain = semantic_labels(maps, [0, 3], "2d")
    assert (plain == 3).sum() == 200, "without a floor both regions are the class"
    floored = semantic_labels(maps, [0, 3], "2d", min_confidence=0.8)
    assert floored.dtype == plain.dtype and set(np.unique(floored)) == {0, 3}
    assert (floored[:, 2:12, 2:12] == 3).all() and not floored[:, 20:30, 30:40].any()
    # The engine's own entry point reads it from the post-processing settings.
    np.testing.assert_array_equal(labels_from_probabilities(maps, "semantic", "2d", [0, 3], {"min_confidence": 0.8}),
                                  floored)


def test_without_a_background_class_nothing_is_given_up():
    maps = _maps((slice(20, 30), slice(30, 40), 0.7))
    np.testing.assert_array_equal(semantic_labels(maps, [1, 2], "2d", min_confidence=0.9),
                                  semantic_labels(maps, [1, 2], "2d"))


def test_a_2d_model_judges_each_slice_alone():
    fg = np.full((2, 20, 20), 0.05, np.float32)
    fg[0, 5:15, 5:15] = 0.99  # a sure region on one slice
    fg[1, 5:15, 5:15] = 0.6  # an unsure one right below it
    maps = np.stack([1 - fg, fg])
    per_slice = semantic_labels(maps, [0, 1], "2d", min_confidence=0.7)
    assert per_slice[0].sum() == 100 and per_slice[1].sum() == 0
    joined = semantic_labels(maps, [0, 1], "3d", min_confidence=0.7)  # one 3D region, mean 0.795
    assert joined.sum() == 200


def test_confirmed_confidence_is_the_least_sure_region_the_labels_confirm():
    maps = _maps((slice(2, 12), slice(2, 12), 0.97), (slice(2, 12), slice(30, 40), 0.9),
                 (slice(25, 35), slice(2, 12), 0.6),  # a false region: nothing labelled there
                 (slice(25, 26), slice(40, 42), 0.55))  # a 2-pixel fragment of a labelled region
    truth = np.zeros((1, 40, 60), np.uint8)
    truth[:, 2:12, 2:12] = truth[:, 2:12, 30:40] = 1
    truth[:, 25:35, 40:50] = 1
    assert confirmed_confidence(maps, truth, [0, 1], "2d") == pytest.approx(0.9)
    known = np.ones(truth.shape, bool)
    known[:, :, 25:] = False  # the 0.9 region is not among the trusted labels
    assert confirmed_confidence(maps, truth, [0, 1], "2d", known) == pytest.approx(0.97)
    assert confirmed_confidence(maps, np.zeros_like(truth), [0, 1], "2d") is None
    assert min_confidence_from(0.9) == pytest.approx(0.9 - CONFIDENCE_MARGIN) and min_confidence_from(None) == 0.0


def test_a_semantic_model_saves_the_floor_its_best_weights_measured(models_dir):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:160, :160]
    labels = np.zeros((160, 160), np.uint8)
    for cy, cx in rng.uniform(12, 148, size=(14, 2)):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 1
    image = np.where(labels > 0, 60, 190).astype(np.float32) + rng.normal(0, 8, labels.shape).astype(np.float32)
    config = TrainConfig(name="discs", mode="semantic", dims="2d", window=(64, 64), base_channels=4, depth=2,
                         iterations=60, validate_every=20, iteration_save=60, batch_size=2, lr=5e-3)
    run_to_end(train(config, image, labels, models_dir=models_dir))
    store = ModelStore(models_dir)
    record = store.record("discs")
    described = json.loads((record.folder / "model.json").read_text())
    saved = described["postprocess"]["min_confidence"]

    model, _ = store.load_model("discs", "best")
    _, (y0, y1), (x0, x1) = described["validation_region"]
    block = Normalisation.from_dict(record.normalisation).apply(image[np.newaxis, y0:y1, x0:x1])
    with torch.no_grad():
        maps = predict_stack(make_predictor(model, "semantic", torch.device("cpu"), torch.autocast("cpu",
                             enabled=False)), block, spatial_dims=2, window=tuple(record.window),
                             overlap=VALIDATION_OVERLAP, batch_size=2)
    expected = min_confidence_from(confirmed_confidence(maps, labels[np.newaxis, y0:y1, x0:x1], [0, 1], "2d"))
    assert 0 < saved < 1 and saved == pytest.approx(expected, abs=2e-3)
