"""What continued and touched-only jobs validate on (training/holdout.py): held-out corrections that make the
score move, the lineage's block on the original pair that says whether the model forgot, and a job that
cannot validate saying so."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from conftest import chloroplast_stack

from napari_plantbio_train.inference.label import LabelSettings, label_stack
from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.job.events import Started, Validation, run_to_end
from napari_plantbio_train.models.store import ModelStore
from napari_plantbio_train.training.holdout import block_record, plan_holdout
from napari_plantbio_train.training.loop import train
from napari_plantbio_train.training.material import continuation, prepare
from napari_plantbio_train.training.sampling import crop

@pytest.fixture(scope="module")
def unseen() -> tuple[np.ndarray, np.ndarray]:
    """Chloroplast tissue just left of the tiny model's training crop (synthetic of another seed without data)."""
    return chloroplast_stack((slice(3, 7), slice(1872, 2064), slice(1632, 1824)), seed=11)


def test_one_corrected_site_in_five_is_held_out_of_training():
    shape = (2, 192, 192)
    known = np.zeros(shape, bool)
    sites = [(y, x) for y in (4, 70, 136) for x in (4, 70, 136)]  # nine separate squares
    for y, x in sites:
        known[:, y:y + 30, x:x + 30] = True
    stack = np.zeros(shape, np.uint8)
    holdout = plan_holdout([(stack, known)], (2, 64, 64), 0.15, known, touched=True, inherited=None)
    assert [p.name for p in holdout.parts] == ["learned"]
    boxes = holdout.parts[0].boxes
    assert len(boxes) == 2, "sites 3 and 8 of nine"
    assert holdout.withheld.sum() == 2 * 2 * 30 * 30 and not (holdout.withheld & ~known).any()
    for box in boxes:  # each box scores its own site and gives the network context around it
        assert box.mask.sum() == 2 * 30 * 30 and crop(holdout.withheld, box.region)[box.mask].all()
        assert all(b - a > 30 for a, b in box.region[1:])
    assert holdout.train_regions[0] == ((0, 2), (0, 192), (0, 192)), "the corrections' stack trains everywhere"

    lone = np.zeros(shape, bool)
    lone[:, 50:150, 60:100] = True  # one region: its far fifth along y is held out
    single = plan_holdout([(stack, lone)], (2, 64, 64), 0.15, lone, touched=True, inherited=None)
    held = single.withheld
    assert held.sum() == pytest.approx(0.2 * lone.sum(), rel=0.05) and held[:, 149, 60:100].all() and not held[:, 50].any()


def test_the_lineage_block_is_found_by_its_voxels_and_left_out_of_training(chloroplast_crop):
    image, labels = chloroplast_crop
    config = TrainConfig(name="root", mode="instance", dims="3d", window=(2, 64, 64), voxel_size=(5, 5, 50))
    root = prepare(config, image, labels, previous=None)
    kept = root.holdout.kept_block
    assert kept == block_record(image, root.val_region) and kept["shape"] == list(image.shape)

    corrected = labels.copy()
    corrected[:, 100:140, 100:140] = 999  # a painted object
    continued = config.replace(name="v2", touched_only=True, touched_margin=4)
    material = prepare(continued, image[:, ::-1].copy(), corrected[:, ::-1].copy(), previous={"kept_block": kept,
                       "normalisation": root.normalisation.to_dict()}, auto_labels=labels[:, ::-1].copy(),
                       extra_pairs=[(image, labels)])
    assert [p.name for p in material.holdout.parts] == ["learned", "kept"]
    block = material.holdout.parts[1].boxes[0]
    assert (block.pair, block.region) == (1, root.val_region)
    assert material.extra[0].region == root.train_region, "the original pair trains beside the block, as before"
    assert material.holdout.kept_block == kept, "every version carries the first model's block on"

    other = image.copy()
    other[tuple(slice(a, b) for a, b in root.val_region)] ^= 1  # the same shape, other voxels in the block
    missing = prepare(continued, image[:, ::-1].copy(), corrected[:, ::-1].copy(), previous={"kept_block": kept,
                      "normalisation": root.normalisation.to_dict()}, auto_labels=labels[:, ::-1].copy(),
                      extra_pairs=[(other, labels)])
    assert [p.name for p in missing.holdout.parts] == ["learned"]
    assert "forgetting is not measured" in missing.holdout.note


def test_a_touched_only_continuation_scores_what_it_learns(tiny_models, tmp_path, unseen, chloroplast_crop):
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "chl", models / "chl")
    image, truth = unseen
    auto, _ = run_to_end(label_stack("chl", image, models_dir=models, settings=LabelSettings(precision="fp32")))
    # The user repaints the six largest objects (the 20-iteration parent finds few); each counts as reviewed,
    # also where the parent had been right.
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    fixed = np.isin(truth, ids[np.argsort(-sizes)][:6])
    corrected = np.where(fixed, truth.astype(np.uint32) + 1000 * (truth > 0), auto.labels).astype(np.uint32)
    parent = ModelStore(models).record("chl")
    config = continuation(parent, "chl-v2").replace(iterations=40, validate_every=5, iteration_save=40, lr=3e-3,
                                                    touched_only=True, touched_margin=2, workers=1,
                                                    pair_weights=(3.0, 1.0))
    trained, old = chloroplast_crop
    _, events = run_to_end(train(config, image, corrected, auto_labels=auto.labels, reviewed=fixed,
                                 extra_pairs=[(trained, old)], models_dir=models))
    note = next(e for e in events if isinstance(e, Started)).validation_note
    assert "held-out" in note and "block the first model was validated on" in note
    validations = [e for e in events if isinstance(e, Validation)]
    assert validations[0].iteration == 0 and validations[0].is_best, "the parent's score is the 'before' and the " \
        "first candidate for the best"
    trained_scores = [v.score for v in validations[1:]]
    assert len(set(trained_scores)) > 1, f"a validation score that never moves: {trained_scores}"
    assert all("learned_score" in v.metrics and "kept_score" in v.metrics for v in validations)
    assert all(v.score == pytest.approx((v.metrics["learned_score"] + v.metrics["kept_score"]) / 2)
               for v in validations)
    record = ModelStore(models).record("chl-v2")
    chosen = [v for v in validations if v.is_best][-1]
    assert (record.best_iteration, record.best_score) == (chosen.iteration, chosen.score)
    assert chosen.score > validations[0].score, "a version's best beats its parent's score"
    assert record.best_iteration not in (0, validations[1].iteration), \
        f"the best checkpoint is neither the parent nor merely the first one: {[(v.iteration, v.score) for v in validations]}"
    assert set(record.best_parts) == {"learned_score", "kept_score"} and record.before["validation_score"] == \
        pytest.approx(validations[0].score)
    rows = list(csv.DictReader(open(record.folder / "metrics.csv")))
    scored = [r for r in rows if r["validation_score"]]
    assert [int(r["iteration"]) for r in scored] == [v.iteration for v in validations]
    assert all(r["learned_score"] and r["kept_score"] for r in scored)
    described = json.loads((record.folder / "model.json").read_text())["validation"]
    assert [p["name"] for p in described["parts"]] == ["learned", "kept"]


def test_a_job_that_cannot_validate_says_so_and_keeps_its_final_weights(chloroplast_crop, models_dir):
    image, labels = chloroplast_crop
    corrected = labels.copy()
    corrected[1, 10, 10] = 77  # one corrected voxel: nothing to hold out beside it
    config = TrainConfig(name="lone", mode="instance", dims="3d", window=(2, 64, 64), voxel_size=(5, 5, 50),
                         touched_only=True, touched_margin=0, iterations=4, validate_every=2, iteration_save=4,
                         base_channels=4, depth=2, batch_size=1)
    _, events = run_to_end(train(config, image, corrected, auto_labels=labels, models_dir=models_dir))
    started = next(e for e in events if isinstance(e, Started))
    assert "cannot be validated" in started.validation_note and "too small to split" in started.validation_note
    assert not [e for e in events if isinstance(e, Validation)]
    record = ModelStore(models_dir).record("lone")
    assert (record.best_iteration, record.best_score) == (4, None), "the end of the schedule is kept as the best"


def test_a_version_that_never_beats_its_parent_keeps_the_parents_weights(tiny_models, tmp_path, plate_crop):
    """A continuation that only gets worse (a rate that wrecks the weights) ends with its parent's weights as its
    best, and its own last ones beside them: a round never hands back a model worse than it started from by its
    own validation."""
    import torch

    models = tmp_path / "models"
    shutil.copytree(tiny_models / "plate", models / "plate")
    store = ModelStore(models)
    parent = store.record("plate")
    image, labels = plate_crop
    config = continuation(parent, "plate-v2").replace(iterations=6, validate_every=3, iteration_save=6, lr=1.0,
                                                      workers=1, rehearse=0.0)
    _, events = run_to_end(train(config, image, labels * 3, models_dir=models))
    validations = [e for e in events if isinstance(e, Validation)]
    assert validations[0].iteration == 0 and validations[0].is_best
    assert all(v.score < validations[0].score and not v.is_best for v in validations[1:]), \
        f"the wrecking rate did not wreck: {[(v.iteration, v.score) for v in validations]}"
    record = store.record("plate-v2")
    assert (record.best_iteration, record.best_score) == (0, validations[0].score)
    assert record.iterations_done == 6 and record.parent == "plate" and record.kept_parent and not parent.kept_parent
    best, last = store.load_checkpoint(record, "best")["model"], store.load_checkpoint(record, "last")["model"]
    kept = store.load_checkpoint(parent, "best")["model"]
    assert all(torch.equal(best[k], kept[k]) for k in kept), "the version's best is its parent's weights"
    assert any(not torch.equal(last[k], kept[k]) for k in kept), "and its last weights are its own"
