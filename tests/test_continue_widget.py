"""Proofread and retrain in a real napari viewer: auto-label, correct the result layer, continue training the
model as a new version from the training dock, and find that version listed with its lineage.

The session's tiny models (conftest ``tiny_models``) are copied into each test's own models folder; the one
training job here runs 10 iterations of a 4-channel network on 4 x 192 x 192 crops.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import chloroplast_stack
from qtpy.QtCore import Qt

from napari_plantbio_train.job.config import unsaved_layer
from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.job.events import Finished
from napari_plantbio_train.models.store import ModelRecord, ModelStore
from napari_plantbio_train.training.material import FINE_TUNE_LR_FACTOR, INHERITED

widgets = pytest.importorskip("napari_plantbio_train._widgets.train_widget")
from napari_plantbio_train._widgets.corrections import AUTO_LABEL_KEY  # noqa: E402
from napari_plantbio_train._widgets.label_widget import AutoLabelWidget  # noqa: E402
from napari_plantbio_train._widgets.versions import lineage_name, next_version_name  # noqa: E402

TrainWidget = widgets.TrainWidget
JOB_TIMEOUT_MS = 120_000  # a generous ceiling for a few-second job on a busy machine, not a speed claim
SCALE = (50.0, 5.0, 5.0)  # the tiny chloroplast model's voxel size (x, y, z 5/5/50)
FAST = dict(iterations=10, iteration_save=10, validate_every=10, workers=1, batch_size=2)


@pytest.fixture
def models(tiny_models, tmp_path) -> Path:
    """This test's own copy of the tiny models: continuing must never write into the shared ones."""
    folder = tmp_path / "models"
    for name in ("chl", "plate"):
        shutil.copytree(tiny_models / name, folder / name)
    return folder


@pytest.fixture
def dock(make_napari_viewer, models):
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train segmentation model")
    widget.form.set_values(models_dir=models)
    return viewer, widget


@pytest.fixture(scope="module")
def unseen_crop() -> np.ndarray:
    """The chloroplast stack just left of the tiny model's training crop: tissue it never saw (synthetic tissue of
    another seed where the real stack is absent)."""
    return chloroplast_stack((slice(3, 7), slice(1872, 2064), slice(1632, 1824)), seed=11)[0]


def _record(name: str, lineage: tuple[str, ...] = ()) -> ModelRecord:
    return ModelRecord(name=name, folder=Path(name), config=TrainConfig(name=name), network={}, normalisation={},
                       classes=None, window=(64, 64), iterations_done=10, last="", best=None, best_score=None,
                       best_iteration=None, parent=lineage[-1] if lineage else None, lineage=lineage)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----- versions: names and lineage ----------------------------------------------------------------------------
def test_version_names_count_on_from_the_parent_and_skip_taken_ones():
    assert next_version_name("chloro", []) == "chloro-v2"
    assert next_version_name("chloro", ["chloro-v2", "chloro-v3"]) == "chloro-v4"
    assert next_version_name("chloro-v2", ["chloro", "chloro-v2"]) == "chloro-v3"
    long = "x" * 64
    assert next_version_name(long, []) == "x" * 61 + "-v2", "still a valid folder name"
    assert lineage_name(_record("chloro")) == "chloro"
    assert lineage_name(_record("chloro-v3", ("chloro", "chloro-v2"))) == "chloro-v3 (from chloro-v2 ← chloro)"


# ----- the form -----------------------------------------------------------------------------------------------
def test_continue_from_prefills_the_parent_job_and_locks_what_it_inherits(dock, models):
    viewer, widget = dock
    form = widget.form
    box = form.continue_from
    assert box.itemText(0) == "(new model)" and box.names() == ["chl", "plate"]
    parent = ModelStore(models).record("chl")

    form.set_values(init_from="chl")
    config = widget.build_config()
    assert (config.init_from, config.name) == ("chl", "chl-v2")
    assert config.lr == pytest.approx(parent.config.lr * FINE_TUNE_LR_FACTOR)
    assert config.iterations == min(parent.config.iterations, 1000)
    assert {field: getattr(config, field) for field in INHERITED} == {
        field: getattr(parent.config, field) for field in INHERITED}
    locked = form.inherited_widgets()
    assert set(locked) == set(INHERITED)
    assert not any(w.enabled for ws in locked.values() for w in ws)
    viewer.add_image(np.zeros((16, 16), np.uint8), name="flat", scale=(2.0, 2.0))
    assert widget.build_config().dims == "3d", "a 2D image must not change what the parent's network is"

    shutil.copytree(models / "chl", models / "chl-v2")  # a version made elsewhere meanwhile
    box.refresh()
    assert box.record.name == "chl", "a re-read keeps the pick"
    form.set_values(init_from="plate")
    form.set_values(init_from="chl")
    assert form.name.value == "chl-v3"

    form.set_values(init_from=None)
    assert widget.build_config().init_from is None
    assert all(w.enabled for ws in locked.values() for w in ws)
    assert widget.build_config().dims == "2d", "a new model follows the image again"


def test_extra_pairs_carry_weights_and_are_checked_like_the_first(dock, chloroplast_crop):
    viewer, widget = dock
    image, labels = chloroplast_crop
    raw = viewer.add_image(image, name="raw", scale=SCALE)
    truth = viewer.add_labels(labels, name="truth")
    small = viewer.add_labels(labels[:, :64, :64], name="small")
    widget.form.set_values(name="two-pairs", mode="instance", dims="3d", window=(2, 64, 64), image=raw,
                           labels=truth, **FAST)
    assert widget.build_config().pair_weights is None, "one pair: nothing to balance"
    assert widget.form.pairs.first_row.isHidden()

    pairs = widget.form.pairs
    second = pairs.add(raw, small, weight=0.5)
    third = pairs.add(raw, truth, weight=3.0)
    pairs.first_weight.setValue(2.0)
    config = widget.build_config()
    assert config.pair_weights == (2.0, 0.5, 3.0)
    # Layers without a file are recorded as such (a layer opened from a file records its path).
    assert (config.extra_images, config.extra_labels) == ((unsaved_layer("raw"), unsaved_layer("raw")),
                                                           (unsaved_layer("small"), unsaved_layer("truth")))
    assert not pairs.first_row.isHidden()

    assert not widget.start() and widget.worker is None
    assert "pair 2 labels" in second.error.text() and "differs from the image" in second.error.text()
    assert third.error.text() == "", "a good pair is not blamed"

    pairs.remove(second)
    assert third.title.text() == "Pair 2 image", "pairs are renumbered"
    third.labels.value = None
    assert not widget.start()
    assert "pair 2: pick a Labels layer" in widget.form.error_text("extra_pairs[0]")
    pairs.remove(third)
    assert widget.build_config().pair_weights is None and pairs.first_row.isHidden()
    assert not (widget.form.models_folder() / "two-pairs").exists()


def test_trusting_corrections_needs_an_auto_label_result(dock, chloroplast_crop):
    viewer, widget = dock
    image, labels = chloroplast_crop
    raw = viewer.add_image(image, name="raw", scale=SCALE)
    truth = viewer.add_labels(labels, name="truth")  # painted by hand: no auto-label result to compare with
    widget.form.set_values(init_from="chl", image=raw, labels=truth, touched_only=True, **FAST)
    assert not widget.start()
    assert widget.worker is None and not widget.running
    assert "'truth' is not an auto-label result" in widget.form.error_text("touched_only")
    assert "Fix the fields marked in red" in widget.status.text()
    assert not (widget.form.models_folder() / "chl-v2").exists()


# ----- the whole loop -----------------------------------------------------------------------------------------
def test_proofread_and_continue_makes_a_listed_version(make_napari_viewer, models, qtbot, chloroplast_crop,
                                                       unseen_crop, monkeypatch):
    monkeypatch.setattr(AutoLabelWidget, "POLL_MS", 100)
    viewer = make_napari_viewer()
    labeller = AutoLabelWidget(viewer, models_dir=models)
    trainer = TrainWidget(viewer)
    viewer.window.add_dock_widget(labeller, name="Auto-label with a model")
    viewer.window.add_dock_widget(trainer, name="Train segmentation model")
    trained_image, trained_labels = chloroplast_crop
    old = viewer.add_image(trained_image, name="trained on", scale=SCALE)
    old_truth = viewer.add_labels(trained_labels, name="its labels", scale=SCALE)
    new = viewer.add_image(unseen_crop, name="new", scale=SCALE)

    # Auto-label the unseen crop (a 20-iteration model needs low thresholds to find objects).
    labeller.image_picker.value = new
    labeller.select_model("chl")
    for key, value in (("fg_threshold", 0.3), ("seed_threshold", 0.0), ("min_size", 1)):
        labeller.post_boxes[key].setValue(value)
    assert labeller.start(), labeller.status.text()
    qtbot.waitUntil(lambda: not labeller.running, timeout=JOB_TIMEOUT_MS)
    result = viewer.layers["new [chl]"]
    kept = result.metadata[AUTO_LABEL_KEY]
    assert kept["model"] == "chl" and kept["name"] == "new [chl]"
    np.testing.assert_array_equal(kept["labels"], result.data)
    assert kept["labels"] is not result.data

    # Proofread with napari's own editing call: delete the largest object, paint a missed one.
    ids, sizes = np.unique(result.data[result.data > 0], return_counts=True)
    assert ids.size > 0, "the tiny model found no object to correct"
    result.data_setitem(np.nonzero(result.data == ids[np.argmax(sizes)]), 0)
    free = [(y, x) for y in range(0, 177, 16) for x in range(0, 177, 16)
            if not result.data[:, y:y + 16, x:x + 16].any()]
    assert free, "no background left to paint an object in"
    y, x = free[0]
    box = np.zeros(result.data.shape, bool)
    box[:, y:y + 16, x:x + 16] = True
    result.data_setitem(np.nonzero(box), int(ids.max()) + 1)
    assert not np.array_equal(kept["labels"], result.data), "the kept copy shows the model's own result"

    # Continue from the model on the corrected crop plus the pair it was trained on.
    parent_files = _snapshot(models / "chl")
    form = trainer.form
    form.set_values(models_dir=models, init_from="chl", image=new, labels=result, touched_only=True,
                    touched_margin=8, **FAST)
    form.pairs.add(old, old_truth, weight=1.0)
    form.pairs.first_weight.setValue(2.0)
    assert form.name.value == "chl-v2"
    assert trainer.start(), trainer.status.text()
    qtbot.waitUntil(lambda: not trainer.running, timeout=JOB_TIMEOUT_MS)
    assert trainer.error is None, trainer.error
    assert isinstance(trainer.last_event, Finished) and trainer.last_event.iteration == 10

    version = ModelStore(models).record("chl-v2")
    assert (version.parent, version.lineage) == ("chl", ("chl",))
    config = version.config
    assert (config.init_from, config.touched_only, config.touched_margin) == ("chl", True, 8)
    assert config.auto_labels == unsaved_layer("new [chl]")
    assert (config.extra_images, config.extra_labels, config.pair_weights) == ((unsaved_layer("trained on"),),
                                                                               (unsaved_layer("its labels"),),
                                                                               (2.0, 1.0))
    assert _snapshot(models / "chl") == parent_files, "the parent is never written to"

    box = form.continue_from
    qtbot.waitUntil(lambda: "chl-v2" in box.names(), timeout=10_000)  # re-read just after the job's end
    assert box.itemText(box.findData("chl-v2")) == "chl-v2 (from chl)"
    assert "Continued from chl" in box.itemData(box.findData("chl-v2"), Qt.ItemDataRole.ToolTipRole)
    assert form.name.value == "chl-v3", "the next job suggests the next free version"
    qtbot.waitUntil(lambda: "chl-v2" in labeller.model_names(), timeout=10_000)
    text = labeller.model_box.itemText(labeller.model_box.findData("chl-v2"))
    assert text.startswith("chl-v2 (from chl) — instance, 3d, voxel x/y/z 5/5/50 nm, 10 iterations")
