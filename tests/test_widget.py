"""The training dock in a real napari viewer, driven through its public methods, on crops of the real stacks.

Every job is tiny (4-channel, 2-level networks, 64-pixel windows, tens of iterations, one CPU thread) so the
whole file runs in well under a minute on two shared cores.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from napari_plantbio_train.job.config import unsaved_layer
from napari_plantbio_train.job.config import TrainConfig
from napari_plantbio_train.job.events import Finished, Progress
from napari_plantbio_train.models.store import ModelStore

tifffile = pytest.importorskip("tifffile")
TrainWidget = pytest.importorskip("napari_plantbio_train._widgets.train_widget").TrainWidget

REPO = Path(__file__).resolve().parents[1]
JOB_TIMEOUT_MS = 120_000  # a generous ceiling for a few-second job on a busy machine, not a speed claim


@pytest.fixture(scope="module")
def chloroplast(chloroplast_crop) -> tuple[np.ndarray, np.ndarray]:
    """4 slices x 192 x 192 holding several chloroplasts (instance ids); synthetic where the real stack is absent."""
    image, labels = chloroplast_crop
    assert len(np.unique(labels)) > 2, "the crop must hold several objects"
    return image, labels


@pytest.fixture(scope="module")
def plate(plate_crop) -> tuple[np.ndarray, np.ndarray]:
    return plate_crop


TINY = dict(base_channels=4, depth=2, batch_size=2, workers=1, iteration_step=1, iterations=20,
            iteration_save=10, validate_every=10)


@pytest.fixture
def dock(make_napari_viewer, tmp_path):
    """A viewer with the widget docked in it, its models folder in the test's temporary folder."""
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train segmentation model")
    widget.form.set_values(models_dir=tmp_path / "models")
    return viewer, widget, tmp_path / "models"


def _train(qtbot, widget: TrainWidget) -> Finished:
    assert widget.start(), widget.status.text()
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert widget.error is None, widget.error
    assert isinstance(widget.last_event, Finished)
    return widget.last_event


# ----- the manifest -------------------------------------------------------------------------------------------
def test_manifest_builds_the_widget_in_napari(make_napari_viewer, npe2pm):
    with npe2pm.tmp_plugin(manifest=str(REPO / "napari.yaml")):
        viewer = make_napari_viewer()
        _, widget = viewer.window.add_plugin_dock_widget("napari-plantbio-train", "Train segmentation model")
    assert isinstance(widget, TrainWidget)
    viewer.add_image(np.zeros((8, 8), np.uint8), name="raw")
    assert [layer.name for layer in widget.image_picker.choices] == ["raw"]


def test_installed_package_exposes_its_manifest():
    """napari finds plugins through the installed distribution's entry point, not through the repository."""
    npe2 = pytest.importorskip("npe2")
    try:
        metadata.distribution("napari-plantbio-train")
    except metadata.PackageNotFoundError:
        pytest.skip("napari-plantbio-train is not pip-installed in this environment")
    manifest = npe2.PluginManifest.from_distribution("napari-plantbio-train")
    assert manifest.display_name == "PlantBio Train"
    assert [w.display_name for w in manifest.contributions.widgets] == [
        "Train segmentation model", "Auto-label with a model", "Evaluate labels", "Colour image to labels",
        "Surface meshes"]


# ----- the form -----------------------------------------------------------------------------------------------
def test_pickers_follow_the_layer_list_and_voxel_size_follows_the_image(dock):
    viewer, widget, _ = dock
    stack = viewer.add_image(np.zeros((3, 16, 16), np.uint8), name="stack", scale=(40.0, 6.0, 5.0))
    viewer.add_labels(np.zeros((3, 16, 16), np.uint16), name="truth")
    assert [layer.name for layer in widget.image_picker.choices] == ["stack"]
    assert [layer.name for layer in widget.labels_picker.choices] == ["truth"]
    assert widget.build_config().voxel_size == (5.0, 6.0, 40.0)
    assert widget.build_config().dims == "3d"

    flat = viewer.add_image(np.zeros((16, 16), np.uint8), name="slice", scale=(2.0, 3.0))
    assert [layer.name for layer in widget.image_picker.choices] == ["stack", "slice"]
    assert widget.image_picker.value == stack, "adding a layer must not change the pick"

    widget.image_picker.value = flat
    config = widget.build_config()
    assert (config.dims, config.voxel_size[:2]) == ("2d", (3.0, 2.0))

    stack.name = "renamed"
    assert widget.image_picker.native.itemText(0) == "renamed"
    viewer.layers.remove(flat)
    assert [layer.name for layer in widget.image_picker.choices] == ["renamed"]
    assert widget.image_picker.value == stack


def test_form_round_trips_every_field(dock):
    _, widget, models = dock
    values = dict(name="roundtrip", mode="instance", dims="2d", voxel_size=(4.0, 5.0, 30.0), window=(96, 128),
                  gpus=0, workers=1, lr=3e-4, iteration_step=2, iteration_save=7, iterations=70, batch_size=3,
                  time_limit_min=2.5, validate_every=5, base_channels=8, depth=3, stem_stride=2, contour_width=6,
                  data_workers=2)
    widget.form.set_values(**values)
    config = widget.build_config()
    assert {k: getattr(config, k) for k in values} == values
    assert widget.form.models_folder() == models


def test_config_errors_show_beside_their_fields_and_start_nothing(dock, chloroplast):
    viewer, widget, models = dock
    image, labels = chloroplast
    viewer.add_image(image, name="raw", scale=(40.0, 10.0, 10.0))
    viewer.add_labels(labels, name="truth")
    (models / "taken").mkdir(parents=True)
    (models / "taken" / "model.json").write_text(json.dumps({"format": 1}))
    widget.form.set_values(name="taken", mode="instance", dims="3d", window=(2, 512, 64), **TINY)
    widget.form.lr.value = "fast"

    assert not widget.start()
    assert widget.worker is None and not widget.running
    assert "already exists" in widget.form.error_text("name")
    assert "not a number" in widget.form.error_text("lr")
    assert widget.form.error_text("mode") == ""
    assert widget.train_button.text() == "Train"

    # Fixing the name and the rate clears their messages on the next attempt; the window is checked once the
    # other fields are sane, and says the size that fits.
    widget.form.set_values(name="fresh", lr=1e-3)
    assert not widget.start()
    assert widget.form.error_text("name") == "" and widget.form.error_text("lr") == ""
    assert "larger than the image" in widget.form.error_text("window")
    assert not (models / "fresh").exists()


def test_missing_layers_are_reported_beside_the_pickers(dock):
    _, widget, _ = dock
    widget.form.set_values(name="nothing", **TINY)
    assert not widget.start()
    assert "pick an Image layer" in widget.form.error_text("image")
    assert "pick a Labels layer" in widget.form.error_text("labels")


def test_colour_painted_labels_are_pointed_at_the_conversion(dock):
    viewer, widget, _ = dock
    viewer.add_image(np.zeros((16, 16, 3), np.uint8), name="painted", rgb=True)
    widget.form.set_values(name="colours", **TINY)
    assert not widget.start()
    assert "Colour image to labels" in widget.form.error_text("labels")
    assert "'painted'" in widget.form.error_text("labels")


# ----- training in the worker ---------------------------------------------------------------------------------
CASES = {
    "instance-3d": dict(data="chloroplast", layer_dims=3, mode="instance", dims="3d", window=(2, 64, 64)),
    "instance-2d": dict(data="chloroplast", layer_dims=3, mode="instance", dims="2d", window=(64, 64)),
    "semantic-2d": dict(data="plate", layer_dims=2, mode="semantic", dims="2d", window=(64, 64)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_training_runs_to_the_end_with_curve_previews_and_a_saved_model(dock, qtbot, request, case):
    viewer, widget, models = dock
    spec = CASES[case]
    image, labels = request.getfixturevalue(spec["data"])
    scale = (40.0, 10.0, 10.0) if spec["layer_dims"] == 3 else (8.0, 8.0)
    translate = (80.0, 500.0, -300.0) if spec["layer_dims"] == 3 else (500.0, -300.0)
    raw = viewer.add_image(image, name="raw", scale=scale, translate=translate)
    viewer.add_labels(labels, name="truth", scale=scale, translate=translate)
    name = f"tiny-{case}"
    widget.form.set_values(name=name, mode=spec["mode"], dims=spec["dims"], window=spec["window"], **TINY)

    finished = _train(qtbot, widget)

    assert (finished.iteration, finished.stopped, finished.reason) == (20, False, "completed")
    assert [i for i, _ in widget.loss_points] == list(range(1, 21))
    assert all(np.isfinite(loss) for _, loss in widget.loss_points)
    assert [i for i, _ in widget.score_points] == [10, 20]
    assert widget.train_button.text() == "Train" and widget.form.isEnabled()

    preview = widget.last_preview
    assert preview is not None and preview.iteration == 20
    probabilities = widget.previews.layers["probabilities"]
    predicted = widget.previews.layers["labels"]
    assert probabilities.name == f"{name} preview probabilities" and probabilities in viewer.layers
    assert probabilities.visible and predicted.visible  # created hidden at the click, shown by the first preview
    assert predicted.name == f"{name} preview labels" and predicted in viewer.layers
    offset = np.asarray(preview.offset, float)[-spec["layer_dims"]:]
    for layer in (probabilities, predicted):
        assert layer.ndim == raw.ndim
        np.testing.assert_allclose(layer.scale, raw.scale)
        np.testing.assert_allclose(layer.translate, np.asarray(translate) + offset * np.asarray(scale))
    assert predicted.data.shape == preview.labels.shape[-spec["layer_dims"]:]
    assert 0.0 <= float(probabilities.data.min()) and float(probabilities.data.max()) <= 1.0

    folder = models / name
    assert widget.model_dir == folder
    for file in ("model.json", "config.json", "metrics.csv"):
        assert (folder / file).is_file(), file
    assert list((folder / "checkpoints").glob("*.pt"))
    assert name in ModelStore(models).names()
    saved = TrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
    assert (saved.mode, saved.dims, saved.image, saved.labels) == (spec["mode"], spec["dims"], unsaved_layer("raw"),
                                                                   unsaved_layer("truth"))
    assert saved.voxel_size == (scale[-1], scale[-2], scale[0] if spec["layer_dims"] == 3 else 1.0)


def _start_endless_plate_job(dock, plate, name: str, qtbot, points: int = 2):
    """A semantic job on the plate crop that would run for ever, started and seen producing losses."""
    viewer, widget, models = dock
    image, labels = plate
    raw = viewer.add_image(image, name="raw")
    viewer.add_labels(labels, name="truth")
    widget.form.set_values(name=name, mode="semantic", window=(64, 64), **{**TINY, "iterations": 100_000})
    assert widget.start()
    qtbot.waitUntil(lambda: len(widget.loss_points) >= points, timeout=JOB_TIMEOUT_MS)
    return viewer, widget, models, raw


def test_stop_mid_way_leaves_a_loadable_checkpoint(dock, qtbot, plate):
    viewer, widget, models, raw = _start_endless_plate_job(dock, plate, "stopped", qtbot, points=3)
    assert widget.train_button.text() == "Stop"
    widget.train_button.click()
    assert widget.train_button.text() == "Stopping…"
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)

    finished = widget.last_event
    assert isinstance(finished, Finished)
    assert finished.stopped and finished.reason == "stopped" and finished.iteration < 100_000
    if widget.last_preview is None:  # stopped before the first preview: its placeholder layers are gone too
        assert not [layer.name for layer in viewer.layers if "preview" in layer.name]
    model, record = ModelStore(models).load_model("stopped", which="last")
    assert record.iterations_done == finished.iteration
    assert sum(p.numel() for p in model.parameters()) > 0
    assert widget.train_button.text() == "Train"


def test_gui_keeps_processing_events_while_training(dock, qtbot, chloroplast):
    from qtpy.QtCore import QTimer

    viewer, widget, _ = dock
    image, labels = chloroplast
    viewer.add_image(image, name="raw", scale=(40.0, 10.0, 10.0))
    viewer.add_labels(labels, name="truth")
    widget.form.set_values(name="responsive", mode="instance", dims="3d", window=(2, 64, 64), **TINY)
    ticks_while_running, redraws_while_running = [], []

    def tick() -> None:
        if widget.running and isinstance(widget.last_event, Progress):
            ticks_while_running.append(widget.last_event.iteration)
            redraws_while_running.append(widget.plot.redraws)

    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
    timer.start()
    try:
        _train(qtbot, widget)
    finally:
        timer.stop()
    # The GUI thread ran the timer many times and saw training advance between ticks, and the curve was
    # redrawn while the job was still running: the job is not running in (or blocking) the GUI thread.
    assert len(ticks_while_running) >= 5
    assert len(set(ticks_while_running)) >= 3
    assert max(redraws_while_running) >= 1


def test_training_from_napari_with_window_processes(dock, qtbot, plate):
    """Window-drawing processes started from inside napari's threaded Qt process (spawned, fed only plain
    arrays): the job trains as usual."""
    viewer, widget, models = dock
    image, labels = plate
    viewer.add_image(image, name="raw")
    viewer.add_labels(labels, name="truth")
    widget.form.set_values(name="spawned", mode="semantic", dims="2d", window=(64, 64), data_workers=1,
                           **{**TINY, "iterations": 8, "validate_every": 8})
    assert widget.build_config().data_workers == 1
    finished = _train(qtbot, widget)
    assert (finished.iteration, finished.reason) == (8, "completed")
    assert [i for i, _ in widget.loss_points] == list(range(1, 9))
    assert ModelStore(models).record("spawned").iterations_done == 8


def test_removing_the_picked_image_stops_the_job(dock, qtbot, plate):
    viewer, widget, models, raw = _start_endless_plate_job(dock, plate, "orphan", qtbot)
    viewer.layers.remove(raw)
    assert "'raw' was removed" in widget.status.text()
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert isinstance(widget.last_event, Finished) and widget.last_event.reason == "stopped"
    assert "orphan" in ModelStore(models).names()


def test_closing_the_dock_stops_the_job(dock, qtbot, plate):
    viewer, widget, models, raw = _start_endless_plate_job(dock, plate, "undocked", qtbot)
    viewer.window.remove_dock_widget(widget)
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert isinstance(widget.last_event, Finished) and widget.last_event.stopped
    assert ModelStore(models).record("undocked").iterations_done < 100_000
    widget.deleteLater()


def test_closing_the_viewer_stops_the_job_with_a_checkpoint(dock, qtbot, plate):
    viewer, widget, models, raw = _start_endless_plate_job(dock, plate, "closed", qtbot)
    worker = widget.worker
    viewer.close()
    assert worker.stop_event.is_set()
    qtbot.waitUntil(lambda: not worker.is_running, timeout=JOB_TIMEOUT_MS)
    record = ModelStore(models).record("closed")
    assert 2 <= record.iterations_done < 100_000


def test_engine_errors_at_run_time_show_in_the_dock(dock, qtbot, plate):
    viewer, widget, models = dock
    image, _ = plate
    viewer.add_image(image, name="raw")
    viewer.add_labels(np.zeros(image.shape, np.uint8), name="unpainted")
    widget.form.set_values(name="empty", mode="semantic", window=(64, 64), **TINY)
    assert widget.start()  # the form is fine; only the engine looks inside the labels
    qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert widget.error is not None
    assert "empty" in widget.status.text()
    assert "empty" in widget.form.error_text("labels")
    assert widget.train_button.text() == "Train" and widget.form.isEnabled()
    assert "empty" not in ModelStore(models).names()


def test_a_dock_job_on_layers_from_files_reruns_headless_from_its_config(dock, qtbot, tmp_path):
    """The model folder's config.json names the files the layers came from, so the command line re-runs it."""
    from napari_plantbio_train.cli import main
    from napari_plantbio_train.io.synthetic import make_stack

    viewer, widget, models = dock
    stack = make_stack((1, 96, 96), seed=2)
    tifffile.imwrite(tmp_path / "em.tif", stack.image[0])
    tifffile.imwrite(tmp_path / "em_labels.tif", stack.semantic[0])
    image = viewer.open(str(tmp_path / "em.tif"), plugin="napari-plantbio-train")[0]
    labels = viewer.open(str(tmp_path / "em_labels.tif"), plugin="napari-plantbio-train")[0]
    widget.form.set_values(name="from-files", mode="semantic", dims="2d", window=(32, 32), image=image,
                           labels=labels, **{**TINY, "iterations": 4, "validate_every": 4, "iteration_save": 4})
    _train(qtbot, widget)
    saved = models / "from-files" / "config.json"
    recorded = TrainConfig.from_dict(json.loads(saved.read_text()))
    assert (recorded.image, recorded.labels) == (str(tmp_path / "em.tif"), str(tmp_path / "em_labels.tif"))
    assert main(["train", "--config", str(saved), "--name", "again", "--models-dir", str(models), "--quiet"]) == 0
    assert ModelStore(models).record("again").config.image == recorded.image


def test_a_removed_dock_stops_reading_the_models_folder(make_napari_viewer, tmp_path, qtbot):
    """napari's remove_dock_widget hands the widget to Python with no parent, and the garbage collector may delete
    it at any moment: its polls must have stopped by then (one deleted mid-poll once aborted the process). A
    dock shown again polls again."""
    import gc

    from napari_plantbio_train._widgets.label_widget import AutoLabelWidget
    from napari_plantbio_train._widgets.train_widget import TrainWidget

    viewer = make_napari_viewer(show=True)
    train, label = TrainWidget(viewer), AutoLabelWidget(viewer, models_dir=tmp_path)
    train.form.set_values(models_dir=tmp_path)
    polls = [train.form.continue_from._poll, label._poll]
    for widget in (train, label):
        viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: train.isVisible() and label.isVisible())
    assert all(p.isActive() for p in polls)
    for widget in (train, label):
        viewer.window.remove_dock_widget(widget)
    assert not any(p.isActive() for p in polls)
    (tmp_path / "new-model").mkdir()  # a change that a running poll would re-read
    viewer.window.add_dock_widget(label)
    qtbot.waitUntil(label.isVisible)
    assert label._poll.isActive() and not polls[0].isActive()
    del train, label, widget, polls
    gc.collect()
    qtbot.wait(2500)  # past a poll's interval: nothing fires on a deleted widget


def test_a_timer_slot_on_a_deleted_widget_ends_quietly(qtbot):
    from qtpy.QtWidgets import QLabel

    from napari_plantbio_train._widgets.common import unless_deleted

    label = QLabel("x")
    label.deleteLater()
    qtbot.waitUntil(lambda: not _alive(label))

    @unless_deleted
    def touch() -> str:
        return label.text()

    @unless_deleted
    def other() -> None:
        raise RuntimeError("a real error")

    assert touch() is None
    with pytest.raises(RuntimeError, match="a real error"):
        other()


def _alive(widget) -> bool:
    try:
        widget.objectName()
        return True
    except RuntimeError:
        return False
