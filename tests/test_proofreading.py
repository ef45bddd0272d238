"""The proofreading queue (inference/proofreading.py): objects ranked by how likely they are wrong, measured
against what the model was trained on, and the "new tissue" map."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tifffile
from conftest import chloroplast_stack

from napari_plantbio_train.cli import main
from napari_plantbio_train.inference.label import LabelSettings, label_stack
from napari_plantbio_train.inference.proofreading import (FEATURES, error_queue, novelty_map, object_features,
                                                          training_statistics)
from napari_plantbio_train.inference.uncertainty import rank_objects
from napari_plantbio_train.job.events import run_to_end
from napari_plantbio_train.models.normalisation import Normalisation
from napari_plantbio_train.models.store import ModelStore

BAND = 48  # in-plane pixels of "new tissue" pasted along the left edge


def planted(tiny_models):
    """A stack the tiny model never saw, a band of darker, coarser tissue along its left edge (with nothing the
    truth calls an object), a bright blob pasted into it and labelled as an object the model is sure of; the
    other objects are the truth's, with the model's own doubt."""
    image, truth = chloroplast_stack((slice(3, 7), slice(1872, 2064), slice(1632, 1824)), seed=11)
    rng = np.random.default_rng(4)
    image = image.copy()
    image[:, :, :BAND] = np.clip(rng.normal(15, 20, image[:, :, :BAND].shape), 0, 255).astype(np.uint8)
    labels = np.where(np.isin(truth, np.unique(truth[:, :, :BAND + 8])), 0, truth).astype(np.uint32)
    result, _ = run_to_end(label_stack("chl", image, models_dir=tiny_models, uncertainty=True,
                                       settings=LabelSettings(precision="fp32")))
    doubt = np.asarray(result.uncertainty).copy()
    y, x = np.mgrid[:image.shape[1], :image.shape[2]]
    blob = (y - 96) ** 2 + (x - BAND // 2) ** 2 <= 14 ** 2
    image[:, blob] = np.clip(rng.normal(235, 6, image[:, blob].shape), 0, 255).astype(np.uint8)
    blob_id = int(labels.max()) + 1
    labels[:, blob] = blob_id
    doubt[:, blob] = 0.02  # confident: the doubt ranking puts it last
    return image, labels, doubt, blob_id


def test_a_confident_false_positive_in_new_tissue_comes_first(tiny_models):
    image, labels, doubt, blob = planted(tiny_models)
    record = ModelStore(tiny_models).record("chl")
    assert record.statistics is not None and len(record.statistics["objects"]) > 0
    normalisation = Normalisation.from_dict(record.normalisation)
    new_tissue = novelty_map(image, record.statistics, normalisation)
    tile = record.statistics["tile"]
    assert new_tissue.shape == (4, -(-192 // tile), -(-192 // tile))
    inside = new_tissue[:, :, : BAND // tile]
    assert inside.mean() > 0.5 and inside.mean() > 5 * new_tissue[:, :, BAND // tile + 1:].mean()

    queue = error_queue(labels, image, doubt, record.statistics, normalisation, new_tissue)
    assert sorted(e.id for e in queue) == sorted(int(i) for i in np.unique(labels) if i)
    assert blob in [e.id for e in queue[:3]], [(e.id, round(e.score, 2), e.reason) for e in queue[:5]]
    first = next(e for e in queue if e.id == blob)
    assert first.novelty > 0.5 and first.appearance > 0.5 and first.reason.startswith(("unlike", "lies in tissue"))
    doubt_only = [o.id for o in rank_objects(labels, doubt)]
    assert doubt_only[-1] == blob, "by doubt alone the planted object would be the last one looked at"


def test_statistics_describe_the_trusted_training_objects(chloroplast_crop):
    image, labels = chloroplast_crop
    norm = Normalisation.fit(image)
    ids, rows = object_features(image, labels, norm)
    assert rows.shape == (len(np.unique(labels)) - 1, len(FEATURES)) and np.isfinite(rows).all()
    sizes = np.bincount(labels.ravel())[ids]
    assert np.allclose(rows[:, FEATURES.index("log_volume")], np.log(sizes))
    known = np.zeros(labels.shape, bool)
    known[:, :, :96] = True
    stats = training_statistics([(image, labels, known)], norm, (2, 64, 64), instance=True)
    mostly_left = [i for i in ids if (labels[:, :, :96] == i).sum() * 2 > (labels == i).sum()]
    assert len(stats["objects"]) == len(mostly_left) and stats["tile"] == 16
    assert len(stats["tiles"]) == 4 * 12 * 6, "only tiles the labels vouch for"
    more = training_statistics([(image, labels, None)], norm, (2, 64, 64), instance=True, previous=stats)
    rows = [tuple(r) for r in more["objects"]]
    assert {tuple(r) for r in stats["objects"]} <= set(rows), "a version knows its parent's objects too"
    assert len(rows) == len(set(rows)) == len(ids), "the objects both saw are counted once"


def test_predict_writes_the_queue_and_the_new_tissue_map(tiny_models, tmp_path, chloroplast_crop):
    image, _ = chloroplast_crop
    tifffile.imwrite(tmp_path / "image.tif", image)
    args = ["predict", "--model", "chl", "--image", str(tmp_path / "image.tif"), "--output",
            str(tmp_path / "labels.tif"), "--queue", str(tmp_path / "queue.json"), "--novelty",
            str(tmp_path / "new.npy"), "--models-dir", str(tiny_models), "--fg-threshold", "0.3",
            "--seed-threshold", "0", "--min-size", "1", "--precision", "fp32", "--quiet"]
    assert main(args, out=io.StringIO()) == 0
    labels = tifffile.imread(tmp_path / "labels.tif")
    document = json.loads((tmp_path / "queue.json").read_text())
    assert document["model"] == "chl" and document["tile"] == 16
    assert sorted(e["id"] for e in document["entries"]) == sorted(int(i) for i in np.unique(labels) if i)
    scores = [e["score"] for e in document["entries"]]
    assert scores == sorted(scores, reverse=True) and all(e["reason"] for e in document["entries"])
    assert np.load(tmp_path / "new.npy").shape == (4, 12, 12)
    (tmp_path / "labels.tif").unlink()
    assert main(args, out=io.StringIO()) == 2, "an existing queue is not overwritten"
    assert not (tmp_path / "labels.tif").exists(), "refused before any work"


def _discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int) -> np.ndarray:
    y, x = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.uint32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2] = i
    return labels


def test_new_tissue_full_of_alike_objects_does_not_push_the_doubted_ones_back():
    """A region of darker tissue makes all of its objects unlike the training ones; alike among themselves, they
    are mostly what they seem (benchmarks/queue_precision.py: with drift, the queue measured against the training
    objects alone put 7 errors in its first 10, doubt alone 9), so the objects the model doubts come first, and
    one object unlike everything still comes first."""
    rng = np.random.default_rng(0)
    centres = [(24 + 48 * r, 24 + 48 * c) for r in range(4) for c in range(8)]
    train_labels = _discs((192, 384), centres, 12)[np.newaxis]
    train_image = np.where(train_labels > 0, 100, 200) + rng.normal(0, 8, train_labels.shape)
    train_image = np.clip(train_image, 0, 255).astype(np.uint8)
    norm = Normalisation.fit(train_image)
    stats = training_statistics([(train_image, train_labels, None)], norm, (1, 64, 64), instance=True)

    labels = train_labels.copy()
    image = np.where(labels > 0, 100, 200) + rng.normal(0, 8, labels.shape)
    image[:, :, 192:] = np.where(labels[:, :, 192:] > 0, 45, 110) + rng.normal(0, 4, (1, 192, 192))  # new tissue
    blob = int(labels[0, 120, 264])
    image[labels == blob] = 250  # a confident object unlike the training objects and the stack's own
    image = np.clip(image, 0, 255).astype(np.uint8)
    doubt = np.full(labels.shape, 0.05, np.float32)
    doubted = [int(labels[0, 24, 24]), int(labels[0, 72, 72]), int(labels[0, 168, 120])]
    for i in doubted:
        doubt[labels == i] = 0.6
    doubt[labels == blob] = 0.02

    new_tissue = novelty_map(image, stats, norm)
    assert new_tissue[:, :, 192 // stats["tile"]:].mean() > 0.5, "the darker half is new tissue"
    queue = error_queue(labels, image, doubt, stats, norm, new_tissue)
    assert {e.id for e in queue[:4]} == {blob, *doubted}, [(e.id, round(e.score, 2), e.reason) for e in queue[:6]]
    assert queue[0].id == blob and queue[0].reason.startswith(("unlike", "lies in tissue")), queue[0]
