"""A lineage's first data kept in its folder (training/rehearsal.py): a new model writes it, each version copies
it, and a round on corrections alone practises it and scores whether it forgot."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_plantbio_train.inference.label import LabelSettings, label_stack
from napari_plantbio_train.inference.proofreading import MAX_OBJECTS
from napari_plantbio_train.job.config import ConfigError, TrainConfig
from napari_plantbio_train.job.events import Started, Validation, run_to_end
from napari_plantbio_train.models.store import ModelStore
from napari_plantbio_train.training.holdout import block_record
from napari_plantbio_train.training.loop import train
from napari_plantbio_train.training.material import correction_round
from napari_plantbio_train.training.rehearsal import (REHEARSAL_FILE, REHEARSAL_VOXELS, read_rehearsal,
                                                      rehearsal_crop)
from napari_plantbio_train.training.sampling import crop


@pytest.mark.parametrize("shape, block, window", [
    ((10, 2341, 1097), ((0, 10), (1990, 2341), (0, 1097)), (4, 128, 128)),  # the chloroplast stack's left half
    ((12, 256, 256), ((0, 12), (0, 256), (208, 256)), (4, 128, 128)),  # the sample: small, kept whole but a strip
    ((1, 3000, 3000), ((0, 1), (0, 3000), (0, 450)), (1, 256, 256)),  # a large 2D image
    ((500, 5000, 5000), ((0, 500), (0, 5000), (4250, 5000)), (8, 256, 256)),  # a stack far beyond the budget
])
def test_the_crop_holds_a_block_at_its_end_and_training_beside_it_within_the_budget(shape, block, window):
    region, inside = rehearsal_crop(shape, block, window)
    lengths = [b - a for a, b in region]
    assert np.prod(lengths) <= max(REHEARSAL_VOXELS, np.prod(window) * 2)
    assert all(w <= n <= s for w, n, s in zip(window, lengths, shape))
    for (a, b), (c, d), (e, f) in zip(inside, region, block):
        assert 0 <= a < b <= d - c and e <= c + a and c + b <= f, "the block inside the crop is the first block's"
    cut = 1 if block[1] != (0, shape[1]) else 2
    held, size = inside[cut], lengths[cut]
    assert held[0] == 0 or held[1] == size, "the block stays at one end of the crop"
    assert size - (held[1] - held[0]) >= window[cut], "a window of training beside the block"


def _corrected_round(tiny_models, tmp_path, chloroplast_crop):
    """(models folder, parent, other tissue, its corrected labels, the auto-labels, the fixed mask): corrections on
    other tissue (the crop mirrored), and no copy of the first pair given: the dock's round."""
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "chl", models / "chl")
    parent = ModelStore(models).record("chl")
    image, labels = chloroplast_crop
    other = image[:, ::-1].copy()
    auto, _ = run_to_end(label_stack("chl", other, models_dir=models, settings=LabelSettings(precision="fp32")))
    truth = labels[:, ::-1]
    ids, sizes = np.unique(truth[truth > 0], return_counts=True)
    fixed = np.isin(truth, ids[np.argsort(-sizes)][:6])
    corrected = np.where(fixed, truth.astype(np.uint32) + 1000 * (truth > 0), auto.labels).astype(np.uint32)
    return models, parent, other, corrected, auto.labels, fixed


def test_a_correction_round_practises_the_first_data_and_scores_what_it_kept(tiny_models, tmp_path, chloroplast_crop):
    models, parent, other, corrected, auto_labels, fixed = _corrected_round(tiny_models, tmp_path, chloroplast_crop)
    kept = read_rehearsal(parent.folder)
    labels = chloroplast_crop[1]
    region = [tuple(r) for r in parent.kept_block["region"]]
    assert kept is not None and block_record(kept.stack, kept.block)["digest"] == parent.kept_block["digest"], \
        "the crop holds the very block the first model was validated on"
    assert kept.labels.dtype == labels.dtype and (crop(kept.labels, kept.block) == crop(labels, region)).all()

    config = correction_round(parent, "chl-v2").replace(iterations=12, validate_every=4, iteration_save=12,
                                                         time_limit_min=None, touched_margin=2, workers=1)
    assert config.rehearse == 0.5
    _, events = run_to_end(train(config, other, corrected, auto_labels=auto_labels, reviewed=fixed,
                                 models_dir=models))
    note = next(e for e in events if isinstance(e, Started)).validation_note
    assert "held-out" in note and "validation block, kept in its folder" in note
    validations = [e for e in events if isinstance(e, Validation)]
    assert validations and all({"learned_score", "kept_score"} <= set(v.metrics) for v in validations)
    version = ModelStore(models).record("chl-v2")
    assert (version.folder / REHEARSAL_FILE).read_bytes() == (parent.folder / REHEARSAL_FILE).read_bytes(), \
        "every version carries the lineage's first data on"
    # The first data's objects are the parent's already: the version adds only its corrections' (once each).
    rows = [tuple(r) for r in version.statistics["objects"]]
    assert len(rows) <= MAX_OBJECTS and {tuple(r) for r in parent.statistics["objects"]} <= set(rows)
    assert len(rows) == len(set(rows)), "no training object is counted twice"

    alone = config.replace(name="chl-v2b", rehearse=0.0)
    _, events = run_to_end(train(alone, other, corrected, auto_labels=auto_labels, reviewed=fixed,
                                 models_dir=models))
    note = next(e for e in events if isinstance(e, Started)).validation_note
    assert "forgetting is not measured" in note
    assert all("kept_score" not in v.metrics for v in events if isinstance(v, Validation))


def test_a_damaged_or_code_carrying_file_is_passed_over(tmp_path):
    (tmp_path / REHEARSAL_FILE).write_bytes(b"not a zip")
    assert read_rehearsal(tmp_path) is None
    np.savez(tmp_path / REHEARSAL_FILE, stack=np.array([object()], dtype=object), labels=np.zeros(1),
             block=np.zeros((3, 2)))
    assert read_rehearsal(tmp_path) is None, "an object array would need unpickling: never loaded"


@pytest.mark.parametrize("share", [1.0, -0.1, True])
def test_a_rehearse_share_outside_0_to_1_is_refused_by_name(share):
    errors = TrainConfig(name="x", mode="instance", dims="3d", rehearse=share).problems()
    assert [e.field for e in errors] == ["rehearse"] and isinstance(errors[0], ConfigError)


def test_a_rounds_before_takes_the_kept_blocks_score_from_its_parent_and_it_is_the_same(tiny_models, tmp_path,
                                                                                       chloroplast_crop,
                                                                                       monkeypatch):
    """The parent's best weights scored the kept block already: the version's "before" there is that score,
    the very number predicting the block again gives."""
    import napari_plantbio_train.training.setup as setup_module

    models, parent, other, corrected, auto_labels, fixed = _corrected_round(tiny_models, tmp_path, chloroplast_crop)
    config = correction_round(parent, "given").replace(iterations=2, validate_every=2, iteration_save=2,
                                                       time_limit_min=None, touched_margin=2, workers=1)
    import napari_plantbio_train.training.loop as loop_module

    seen = []
    score = loop_module.score_region
    monkeypatch.setattr(loop_module, "score_region", lambda *args: seen.append(args[5]) or score(*args))
    run_to_end(train(config, other, corrected, auto_labels=auto_labels, reviewed=fixed, models_dir=models))
    given = ModelStore(models).record("given")
    assert seen[0] == {"kept": parent.best_score} and given.before["kept_score"] == parent.best_score
    assert all(s is None for s in seen[1:]), "the version's own weights are always predicted"

    monkeypatch.setattr(setup_module, "parent_scores", lambda *args: {})
    run_to_end(train(config.replace(name="predicted"), other, corrected, auto_labels=auto_labels, reviewed=fixed,
                     models_dir=models))
    assert ModelStore(models).record("predicted").before == given.before
