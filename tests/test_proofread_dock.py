"""The proofreading row of the auto-label dock in a real viewer: one key each to accept, erase or skip the
current object, the reviewed mask growing as the user paints, and the retrain job it builds from both."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy import ndimage
from napari.utils.key_bindings import coerce_keybinding

from napari_plantbio_train._widgets.corrections import AUTO_LABEL_KEY, auto_label_metadata
from napari_plantbio_train._widgets.proofread import KEYS, ProofreadQueue
from napari_plantbio_train.inference.label import label_stack
from napari_plantbio_train.inference.proofreading import QueueEntry
from napari_plantbio_train.inference.relabel import round_regions
from napari_plantbio_train.inference.review import mostly_reviewed
from napari_plantbio_train.job.config import ConfigError
from napari_plantbio_train.job.events import Validation, run_to_end
from napari_plantbio_train.models.store import ModelStore
from napari_plantbio_train.training.material import ROUND_MINUTES, round_number
from test_relabel import SETTINGS, same_partition

JOB_TIMEOUT_MS = 240_000  # a 20-iteration continuation in a child, on a slow shared CPU
# Blocks of a quarter of the 4 x 192 x 192 crop's planes, and thresholds at which the 20-iteration model finds
# objects: test_relabel.py's, so the dock's rounds can be compared with a full relabel in-process.
RELABEL_BLOCK_VOXELS = SETTINGS.block_voxels
RELABEL_OPTIONS = ["--precision", "fp32", "--fg-threshold", "0.3", "--seed-threshold", "0.0", "--min-size", "1"]


def entry(object_id: int, centroid: tuple[float, ...]) -> QueueEntry:
    return QueueEntry(object_id, 0.9, 0.1, 0.9, 0.2, 0.3, "unlike the training objects", centroid, 16)


@pytest.fixture
def queue(make_napari_viewer):
    """Three square objects on two slices, queued 2, 3, 1."""
    viewer = make_napari_viewer()
    labels = np.zeros((2, 40, 40), np.uint32)
    labels[:, 2:6, 2:6], labels[:, 10:14, 10:14], labels[:, 20:24, 30:34] = 1, 2, 3
    image = viewer.add_image(np.random.default_rng(0).random(labels.shape, np.float32), name="raw")
    layer = viewer.add_labels(labels, name="raw [chl]", metadata=auto_label_metadata("chl", "raw [chl]", labels))
    widget = ProofreadQueue(viewer)
    widget.load(layer, np.zeros(labels.shape, np.float32), image=image,
                queue=[entry(2, (0.5, 11.5, 11.5)), entry(3, (0.5, 21.5, 31.5)), entry(1, (0.5, 3.5, 3.5))])
    return viewer, layer, widget


def press(layer, action: str) -> None:
    """What napari runs for the key bound on the layer."""
    layer.keymap[coerce_keybinding(KEYS[action])](layer)


def test_keys_accept_erase_and_jump_on_the_current_object(queue):
    viewer, layer, widget = queue
    press(layer, "next")
    assert widget.current.id == 2 and layer.selected_label == 2
    np.testing.assert_allclose(viewer.scene.camera.center[-2:], (11.5, 11.5))
    press(layer, "accept")  # object 2 reviewed as it is, the view moves on to 3
    assert widget.reviewed[layer.data == 2].all() and widget.reviewed.sum() == 32
    assert widget.current.id == 3 and (layer.data == 2).sum() == 32
    press(layer, "erase")  # object 3 gone, its voxels reviewed (through napari's paint event), on to 1
    assert not (layer.data == 3).any() and widget.reviewed[:, 20:24, 30:34].all()
    assert widget.current.id == 1 and widget.reviewed.sum() == 64
    layer.undo()  # napari's undo brings the erased object back
    assert (layer.data == 3).sum() == 32


def test_painting_adds_to_the_reviewed_region_as_it_happens(queue):
    _, layer, widget = queue
    assert not widget.reviewed.any() and not widget.retrain_button.isEnabled()
    layer.brush_size = 3
    layer.paint((1, 30, 10), 5)
    painted = layer.data == 5
    assert painted.any() and widget.reviewed[painted].all()
    assert widget.reviewed.sum() == painted.sum(), "only what was painted"
    layer.fill((0, 3, 3), 7)  # a fill replaces object 1 on its slice
    assert widget.reviewed[0, 2:6, 2:6].all() and not widget.reviewed[1, 2:6, 2:6].any()


def test_undo_takes_back_what_the_undone_edit_marked(queue):
    _, layer, widget = queue
    layer.brush_size = 3
    layer.paint((0, 30, 10), 5)
    first = widget.reviewed.copy()
    press(layer, "next")
    press(layer, "accept")  # object 2, for good
    layer.fill((0, 12, 12), 9)  # object 2 on slice 0, already reviewed: the fill marks nothing new
    layer.paint((0, 30, 12), 6)  # overlaps the first stroke
    second = widget.reviewed & ~first & ~(layer.data == 9)
    assert second.any()
    layer.undo()  # the second stroke: only its own new voxels go
    np.testing.assert_array_equal(widget.reviewed, first | (layer.data == 2) | (layer.data == 9))
    layer.undo()  # the fill: object 2 stays accepted
    assert widget.reviewed[:, 10:14, 10:14].all() and (layer.data[:, 10:14, 10:14] == 2).all()
    layer.redo()
    layer.redo()
    assert widget.reviewed[second].all()
    layer.undo()
    layer.undo()
    layer.undo()  # the first stroke too: only the accepted object is left
    np.testing.assert_array_equal(widget.reviewed, layer.data == 2)
    press(layer, "erase")  # object 3 (next after 2), through napari's data_setitem
    assert widget.reviewed[:, 20:24, 30:34].all()
    layer.undo()
    np.testing.assert_array_equal(widget.reviewed, layer.data == 2)
    assert widget.retrain_button.isEnabled() == (widget.record is not None)
    layer.paint((1, 35, 35), 4)  # a new edit: what was undone is undone for good
    assert not widget.reviewed[:, 20:24, 30:34].any() and widget.reviewed[1, 35, 35]


def test_relabelling_goes_near_the_corrections_first_and_keeps_every_edit(make_napari_viewer, qtbot, tiny_models,
                                                                          chloroplast_crop):
    viewer = make_napari_viewer()
    image, truth = chloroplast_crop
    raw = viewer.add_image(image, name="raw")
    auto = truth.astype(np.uint32)
    layer = viewer.add_labels(auto.copy(), name="raw [chl]", metadata=auto_label_metadata("chl", "raw [chl]", auto))
    corner = next(i + 1 for i, box in enumerate(ndimage.find_objects(auto))
                  if box is not None and box[1].stop <= 48 and box[2].stop <= 48)  # an object in one block's plane
    widget = ProofreadQueue(viewer, lambda: tiny_models)
    widget.load(layer, np.zeros(auto.shape, np.float32), image=raw, record=ModelStore(tiny_models).record("chl"),
                queue=[entry(corner, (1.5, 10.0, 10.0))], options=RELABEL_OPTIONS)
    widget.block_voxels = RELABEL_BLOCK_VOXELS
    widget.next()
    widget.accept()
    layer.brush_size = 5
    layer.paint((1, 50, 20), 77)  # a correction of its own
    parts: list[tuple[bool, np.ndarray]] = []
    widget.relabelled.connect(lambda whole: parts.append((whole, layer.data.copy())))
    assert widget.relabel("chl") and widget.relabel("chl") is False, "one relabelling at a time"
    assert not widget.retrain_button.isEnabled(), "no retrain while the layer is relabelled"
    reviewed_at_start = widget.reviewed.copy()
    layer.paint((3, 60, 40), 88)  # made while the relabelling runs
    before, reviewed = layer.data.copy(), widget.reviewed.copy()
    qtbot.waitUntil(lambda: widget.relabelling is None, timeout=JOB_TIMEOUT_MS)
    assert [whole for whole, _ in parts] == [False, True], widget.round_info.text()
    near = np.zeros(auto.shape, bool)
    for core in widget._near:
        near[tuple(slice(a, b) for a, b in core)] = True
    # What round_regions chose from the corrections at Train (on this small stack a ring's windows are a large
    # share of the whole stack's, so not every ring fits the first part's budget).
    chosen = round_regions(auto.shape, reviewed_at_start, auto, [], (2, 64, 64), overlap=0.5)
    assert all(near[tuple(slice(a, b) for a, b in box)].all() for box in chosen)
    assert near[reviewed_at_start].any() and not near.all(), "the blocks around the corrections, not the whole stack"
    first = parts[0][1]
    np.testing.assert_array_equal(first[~near], before[~near])  # the rest waits for the whole stack's pass
    assert (first[near & ~reviewed] != before[near & ~reviewed]).any(), "the near blocks are the new model's"
    for _, labels in parts:
        np.testing.assert_array_equal(labels[reviewed], before[reviewed])  # corrections and their ids, as left
    after = layer.data
    assert (after[~near] != before[~near]).any() and (after[before == 88] == 88).all()
    # The final labels are a full relabel's wherever the user reviewed nothing (objects no core face cut), less
    # the objects merge_relabelled drops for lying mostly in what they reviewed.
    full, _ = run_to_end(label_stack("chl", image, models_dir=tiny_models, settings=SETTINGS))
    dropped = mostly_reviewed(full.labels.astype(np.int64), reviewed)
    expected = np.where(dropped[full.labels], 0, full.labels)
    assert same_partition(after[~reviewed], expected[~reviewed])
    np.testing.assert_array_equal(layer.metadata["plantbio_auto_label"]["labels"], after)  # the next round's base
    assert widget.retrain_button.isEnabled() and "Round" in widget.round_info.text()
    # The queue is the relabelled layer's, ranked again: ids it now holds, none lying in what was reviewed.
    qtbot.waitUntil(lambda: widget.requeueing is None, timeout=JOB_TIMEOUT_MS)
    present = set(np.unique(after[after > 0]).tolist())
    ids = [e.id for e in widget.entries]
    assert ids and set(ids) <= present and widget.position == -1, widget.info.text()
    assert all((after == i)[reviewed].sum() * 2 < (after == i).sum() for i in ids)
    assert all("error score" in e.why for e in widget.entries) and "objects queued by chl" in widget.info.text()


def test_retrain_job_continues_the_model_on_what_was_reviewed(queue, tiny_models):
    viewer, layer, widget = queue
    widget.models_dir = lambda: tiny_models
    widget.record = ModelStore(tiny_models).record("chl")
    with pytest.raises(ConfigError) as caught:
        widget.retrain_job()
    assert caught.value.field == "reviewed"
    assert widget.retrain() is False and "nothing is corrected yet" in widget.round_info.text()
    widget.next()
    widget.accept()
    assert widget.retrain_button.isEnabled()
    config, data, folder = widget.retrain_job()
    try:
        assert config.name == "chl-v2" and config.init_from == "chl" and config.touched_only
        assert config.time_limit_min == ROUND_MINUTES, "a round is short whatever the parent's iterations"
        reviewed = np.load(data["reviewed"])
        np.testing.assert_array_equal(reviewed > 0, layer.data == 2)
        np.testing.assert_array_equal(np.load(data["auto_labels"]), np.load(data["labels"]))
    finally:
        folder.close()
    assert round_number(widget.record) == 1
    widget.round = 1
    widget._on_train_event(Validation(0, 0.25, {"learned_score": 0.1, "kept_score": 0.4}, False))
    widget._on_train_event(Validation(50, 0.5, {"learned_score": 0.6, "kept_score": 0.4}, True))
    assert widget.round_info.text() == ("Round 1: before 0.250 (learned 0.100, kept 0.400) → "
                                        "best 0.500 (learned 0.600, kept 0.400)")
    # A round whose steps never beat the parent's weights keeps them, and says so.
    widget._on_train_event(Validation(0, 0.45, {"learned_score": 0.3, "kept_score": 0.6}, True))
    widget._on_train_event(Validation(50, 0.37, {"learned_score": 0.2, "kept_score": 0.54}, False))
    assert widget.round_info.text() == ("Round 1: before 0.450 (learned 0.300, kept 0.600) → best 0.450 (learned "
                                        "0.300, kept 0.600) (so far no step beat the parent: the version keeps the "
                                        "parent's weights)")
    viewer.layers.remove(layer)
    with pytest.raises(ConfigError, match="removed"):
        widget.retrain_job()


def test_retrain_on_corrections_runs_the_round_in_a_child(make_napari_viewer, qtbot, tiny_models, tmp_path,
                                                          chloroplast_crop):
    models = tmp_path / "models"
    shutil.copytree(tiny_models / "chl", models / "chl")
    viewer = make_napari_viewer()
    image, truth = chloroplast_crop
    raw = viewer.add_image(image, name="raw")
    auto = truth.astype(np.uint32)
    layer = viewer.add_labels(auto.copy(), name="raw [chl]", metadata=auto_label_metadata("chl", "raw [chl]", auto))
    found = ndimage.find_objects(auto)
    ids = [i + 1 for i, box in enumerate(found) if box is not None][:10]
    widget = ProofreadQueue(viewer, lambda: models)
    widget.load(layer, np.zeros(auto.shape, np.float32), image=raw, record=ModelStore(models).record("chl"),
                queue=[entry(i, tuple((s.start + s.stop) / 2 for s in found[i - 1])) for i in ids])
    widget.next()
    for _ in ids[:-1]:
        widget.accept()  # sites enough that one in five is held out to score "learned"
    widget.erase()
    widget.block_voxels, widget.options = RELABEL_BLOCK_VOXELS, RELABEL_OPTIONS
    assert widget.retrain(), widget.round_info.text()
    assert not widget.retrain_button.isEnabled() and widget.retrain() is False, "one round at a time"
    layer.brush_size = 5
    layer.paint((2, 100, 100), 99)  # the user keeps correcting while the round trains
    during = layer.data == 99
    parts: list[bool] = []
    widget.relabelled.connect(parts.append)
    qtbot.waitUntil(lambda: widget.worker is None, timeout=JOB_TIMEOUT_MS)
    text = widget.round_info.text()
    assert ModelStore(models).record("chl-v2").parent == "chl", text
    assert widget.before is not None and widget.before.iteration == 0, text
    assert text.startswith(f"Round 1: before {widget.before.score:.3f}") and "chl-v2 saved" in text
    qtbot.waitUntil(lambda: widget.relabelling is None, timeout=JOB_TIMEOUT_MS)  # then relabelled with chl-v2
    assert parts and parts[0] is False, widget.round_info.text()
    assert (layer.data[during] == 99).all() and widget.reviewed[during].all(), "kept for the next round"
    assert widget.record.name == "chl-v2" and "Retrain for round 2" in widget.round_info.text()
    assert widget.retrain_button.isEnabled()
    # Round 2's queue is ranked by the new version (and its thread is done before the viewer goes).
    qtbot.waitUntil(lambda: widget.requeueing is None, timeout=JOB_TIMEOUT_MS)
    assert "objects queued by chl-v2" in widget.info.text() or "no objects left" in widget.info.text()


def test_a_round_that_kept_its_parents_weights_leaves_the_labels_and_moves_on(make_napari_viewer, tiny_models,
                                                                               tmp_path, plate_crop):
    """A version whose steps never beat its parent labels as the layer is labelled already: the dock relabels
    nothing (the user waits for nothing more), says so, and the next round continues the version."""
    from napari_plantbio_train.training.loop import train
    from napari_plantbio_train.training.material import continuation

    models = tmp_path / "models"
    shutil.copytree(tiny_models / "plate", models / "plate")
    store = ModelStore(models)
    image, truth = plate_crop
    config = continuation(store.record("plate"), "plate-v2").replace(iterations=4, validate_every=2,
                                                                     iteration_save=4, lr=1.0, rehearse=0.0)
    run_to_end(train(config, image, truth * 3, models_dir=models))
    version = store.record("plate-v2")
    assert version.best_iteration == 0, "the wrecking rate did not wreck"
    viewer = make_napari_viewer()
    raw = viewer.add_image(image, name="raw")
    auto = ndimage.label(truth)[0].astype(np.uint32)
    layer = viewer.add_labels(auto.copy(), name="raw [plate]", metadata=auto_label_metadata("plate", "raw [plate]",
                                                                                           auto))
    widget = ProofreadQueue(viewer, lambda: models)
    widget.load(layer, np.zeros(auto.shape, np.float32), image=raw, record=store.record("plate"))
    layer.data[:4, :4] = 7  # a correction of the user's, which stays
    before = layer.data.copy()
    widget.round, widget.trained = 1, "plate-v2"
    widget._on_train_event(Validation(0, 0.6, {}, True))
    widget._on_train_event(Validation(4, 0.2, {}, False))
    widget._on_train_finished()
    assert widget.relabelling is None and widget.trained is None, "nothing relabelled"
    np.testing.assert_array_equal(layer.data, before)
    assert widget.record.name == "plate-v2" and round_number(widget.record) == 2
    assert layer.metadata[AUTO_LABEL_KEY]["model"] == "plate-v2"
    text = widget.round_info.text()
    assert "plate-v2 saved with plate's weights: your labels stand" in text and "Retrain for round 2" in text
