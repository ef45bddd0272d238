"""The dock widget that auto-labels an image layer with a named model from the models folder.

It only gathers the choices into ``LabelSettings``, hands the layer's array (never the layer) to the engine's
``label_stack`` generator in a napari worker thread, shows what the generator yields and adds the result as
layers placed exactly over the image. Nothing here computes.
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QLabel, QProgressBar,
                            QPushButton, QSpinBox, QVBoxLayout, QWidget)

from ..inference.label import LabelResult, LabelSettings, label_stack
from ..job.config import ConfigError
from ..job.events import LabelFinished, LabelProgress, LabelStarted, StackStarted, StacksProgress
from ..job.kinds import POSTPROCESS_DEFAULTS
from ..models.store import ModelRecord, ModelStore
from .common import (WARNING_STYLE, DockState, JobState, ModelsFolderField, StatusLine, StoppableWorker, follow,
                     poll_while_shown, row, stops_on_destroy, unless_deleted)
from .corrections import auto_label_metadata
from .job_process import (ChildDied, JobFolder, StoredResult, labelled_in_child, labelled_many_in_child,
                          remove_stale_results, source_path)
from .layer_picker import follow_layers, layer_choice, level0, reset_keeping_pick
from .many_stacks import ManyStacks
from .model_info import channel_names, voxel_size_message
from .model_sharing import ModelSharing
from .models_view import ModelsView
from .proofread import ProofreadQueue
from .settings import settings_for
from .versions import describe_version, fill_model_box, folder_stamp

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

TTA = (("none", 0), ("4 (flips)", 4), ("8 (flips and transposes)", 8))
# (setting, label, decimals, maximum): the seeded watershed that splits an instance model's maps into objects, and
# the least mean probability an object (semantic: a region of a class) needs to be kept, in both modes.
POSTPROCESS_FIELDS = (("fg_threshold", "Foreground threshold", 3, 1.0), ("seed_threshold", "Seed threshold", 3, 1.0),
                      ("min_size", "Min object size (voxels)", 0, 1e9), ("seed_prominence", "Seed prominence", 3, 1e3),
                      ("fill_holes", "Fill holes (1 yes, 0 no)", 0, 1.0),
                      ("min_confidence", "Min object confidence", 3, 1.0))
BOTH_MODES = ("min_confidence",)
MAP_COLOURS = ("magenta", "green", "cyan", "yellow", "red", "blue")


@dataclass(frozen=True)
class _Job:
    """What the result needs from the GUI side, read once in the GUI thread when the job starts."""

    layer: Layer
    name: str  # of the labels layer: "<image layer> [<model>]"
    scale: np.ndarray
    translate: np.ndarray
    options: tuple[str, ...] = ()  # the ``predict`` options it was labelled with, for a proofreading round's relabel


class AutoLabelWidget(QWidget):
    POLL_MS = 2000  # how often the models folder and the image's scale are looked at again

    def __init__(self, napari_viewer: napari.viewer.Viewer, models_dir: str | Path | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        # The models folder is the docks' one setting (settings.py), unless a script gives this dock its own.
        self.dock_settings = settings_for(models_dir)
        self.store = ModelStore(self.dock_settings.models_dir)
        self.models_field = ModelsFolderField(self.dock_settings)
        self.image_picker = layer_choice(napari_viewer, Image)
        self.model_box, self.refresh_button = QComboBox(), QPushButton("Refresh")
        # Long model descriptions must not widen the dock: the box elides them, its popup shows them whole.
        self.model_box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model_box.setMinimumContentsLength(16)
        self.overlap = QDoubleSpinBox(minimum=0.0, maximum=0.95, singleStep=0.05, value=LabelSettings.overlap)
        self.tta = QComboBox()
        for text, value in TTA:
            self.tta.addItem(text, value)
        self.batch_size = QSpinBox(minimum=1, maximum=4096)
        self.post_group = QGroupBox("Post-processing")
        post_form = QFormLayout(self.post_group)
        self.post_boxes: dict[str, QDoubleSpinBox] = {}
        self._post_labels: dict[str, QLabel] = {}
        for key, text, decimals, top in POSTPROCESS_FIELDS:
            self.post_boxes[key] = QDoubleSpinBox(decimals=decimals, maximum=top, singleStep=0.05 if decimals else 1)
            self._post_labels[key] = QLabel(text)
            post_form.addRow(self._post_labels[key], self.post_boxes[key])
        self.post_boxes["min_confidence"].setToolTip(
            "Objects (semantic: regions of a class) whose mean probability is below this become background. A "
            "model sets it from the least sure object its validation block confirmed; 0 keeps everything.")
        self.show_maps = QCheckBox("show probability maps")
        self.show_doubt = QCheckBox("show uncertainty and rank objects by it")
        # Where the job runs: a separate program by default, so a crash can never close napari.
        self.in_process = QCheckBox("label in napari's own process (a crash there would close napari)")
        self.proofread = ProofreadQueue(napari_viewer, lambda: self.models_dir)
        self.label_button, self.cancel_button = QPushButton("Label"), QPushButton("Cancel", enabled=False)
        self.progress = QProgressBar(format="idle", value=0)
        self.warning, self.status = QLabel(wordWrap=True), StatusLine()

        layout = QFormLayout(self)
        layout.addRow("Image", self.image_picker.native)
        layout.addRow("Models folder", self.models_field)
        layout.addRow("Model", row(self.model_box, self.refresh_button))
        self.sharing = ModelSharing(self.store, lambda: self.model_box.currentData(), self.refresh_models,
                                    self._set_status)
        layout.addRow("", self.sharing)
        layout.addRow("Overlap", self.overlap)
        layout.addRow("Test-time augmentation", self.tta)
        layout.addRow("Samples per batch", self.batch_size)
        # Every picked image layer, or a folder's stacks, in one job: its own button, the whole job's bar.
        self.many = ManyStacks(napari_viewer)
        for widget in (self.post_group, self.show_maps, self.show_doubt, self.in_process, self.warning,
                       row(self.label_button, self.cancel_button), self.progress, self.status, self.many,
                       self.proofread):
            layout.addRow(widget)
        # The models side by side, folded away until wanted; never changing the model a job of this dock uses.
        self.models_view = ModelsView(self.dock_settings.models_dir, in_use=self.models_in_use,
                                      changed=lambda: self.refresh_models())
        self.models_group = QGroupBox("Models side by side", checkable=True, checked=False)
        QVBoxLayout(self.models_group).addWidget(self.models_view)
        self.models_view.setVisible(False)
        self.models_group.toggled.connect(self.models_view.setVisible)
        layout.addRow(self.models_group)

        self.worker: StoppableWorker | None = None
        # The job's state, the one thing the buttons and the progress bar's words follow (_draw_state).
        self.state = DockState()
        self.state.changed.connect(self._draw_state)
        self._counted = False  # the running (or last) job said how many windows it has: the bar shows them
        self.result: LabelResult | None = None
        self.error: BaseException | None = None
        self.last_event: Any = None
        self._records: dict[str, ModelRecord] = {}
        self._shown_postprocess: dict[str, float] = {}
        self._jobs: list[_Job] = []  # the running job's stacks that came from layers, in order
        self._index = 0  # the stack in progress
        self._stack_source = ""  # as the running many-stack job named it
        self._many = False  # the running (or last) job labels many stacks
        self._job_model: str | None = None  # the running job's model
        self._folder_stamp: tuple = ()
        self._results: dict[str, list[Layer]] = {}  # a child's result folder -> the layers reading from it
        remove_stale_results()
        self._running_stops = stops_on_destroy(self)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        self.refresh_button.clicked.connect(lambda: self.refresh_models())
        self.model_box.currentIndexChanged.connect(self._on_model_changed)
        self.image_picker.changed.connect(self.check_voxel_size)
        follow_layers(napari_viewer, self)
        self.label_button.clicked.connect(lambda: self.start())
        self.many.label_button.clicked.connect(lambda: self.start_many())
        self.cancel_button.clicked.connect(lambda: self.cancel())
        self._poll = QTimer(self, interval=self.POLL_MS)
        self._poll.timeout.connect(self._look_again)
        poll_while_shown(self, self._poll)
        follow(self.dock_settings.models_dir_changed, self, "_use_models_dir")
        self.refresh_models()
        self._on_model_changed()  # an empty list never says its index changed

    # ----- readable state -------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None

    @property
    def models_dir(self) -> Path:
        return self.store.root

    @property
    def _job(self) -> _Job | None:
        """The layer of the stack in progress (None for a folder's stacks)."""
        return self._jobs[self._index] if 0 <= self._index < len(self._jobs) else None

    @property
    def record(self) -> ModelRecord | None:
        """The picked model's description."""
        return self._records.get(self.model_box.currentData())

    def models_in_use(self) -> set[str]:
        """The model the running job labels with: the models view must not delete or rename it."""
        return {self._job_model} if self.running and self._job_model else set()

    def model_names(self) -> list[str]:
        return [self.model_box.itemData(i) for i in range(self.model_box.count())]

    def settings(self) -> LabelSettings:
        """The choices as engine settings; post-processing carries only the fields changed from the model's own
        values, so the model's exact saved numbers (not their rounding in a spin box) are used otherwise."""
        post = {}
        if self.record is not None and self.record.config.mode == "instance":
            post = {key: box.value() for key, box in self.post_boxes.items()
                    if box.value() != self._shown_postprocess.get(key)}
        return LabelSettings(overlap=self.overlap.value(), tta=self.tta.currentData(),
                             batch_size=self.batch_size.value(), postprocess=post)

    # ----- the models folder ----------------------------------------------------------------------------------
    def _use_models_dir(self, folder: Path) -> None:
        """Another dock (or this one's field) changed the models folder: list its models."""
        self.store = ModelStore(folder)
        self.sharing.store = self.store
        self.models_view.set_root(folder)
        self.refresh_models()

    def refresh_models(self) -> list[str]:
        """Re-read the models folder (created if missing); the picked model stays picked while it exists."""
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self._set_status(f"Cannot create the models folder {self.models_dir}: {error}", error=True)
        self._folder_stamp = folder_stamp(self.models_dir)
        before = self.record
        self._records = fill_model_box(self.model_box, self.store.records(), describe_version)
        self.models_view.refresh()
        if self.record != before:  # another model, or the same one retrained; edits for an unchanged one stay
            self._on_model_changed()
        if not self._records:
            self._set_status(f"No trained model in {self.models_dir}: train one first.")
        elif self.status.text().startswith("No trained model"):
            self._set_status("")
        return self.model_names()

    def select_model(self, name: str) -> None:
        index = self.model_box.findData(name)
        if index < 0:
            raise ValueError(f"no model named {name!r} in {self.models_dir}; models: {self.model_names()}")
        self.model_box.setCurrentIndex(index)

    def showEvent(self, event: Any) -> None:
        self.refresh_models()
        super().showEvent(event)

    @unless_deleted
    def _look_again(self) -> None:
        """What changes outside the dock: models trained or removed, the image's scale set in its controls."""
        if folder_stamp(self.models_dir) != self._folder_stamp:
            self.refresh_models()
        self.check_voxel_size()

    def _on_model_changed(self, *_args: Any) -> None:
        record = self.record
        # Before a model is picked the thresholds are the model's to say: blank and disabled, not 0.000.
        instance = record is None or record.config.mode == "instance"
        for key, box in self.post_boxes.items():  # a semantic model has no watershed to set
            box.setVisible(instance or key in BOTH_MODES)
            self._post_labels[key].setVisible(instance or key in BOTH_MODES)
        for box in self.post_boxes.values():
            box.setSpecialValueText("" if record is not None else " ")
            box.setEnabled(record is not None)
        if record is None:
            for box in self.post_boxes.values():
                box.setValue(box.minimum())  # shown as the blank special value
            self._shown_postprocess = {}
        else:
            self.batch_size.setValue(int(record.config.batch_size))
            saved = {**POSTPROCESS_DEFAULTS, **(record.postprocess or {})}
            for key, box in self.post_boxes.items():
                box.setValue(float(saved[key]))
            self._shown_postprocess = {key: box.value() for key, box in self.post_boxes.items()}
        self.check_voxel_size()

    def reset_choices(self, *_args: Any) -> None:
        """The image picker re-reads the viewer's layers (``follow_layers`` calls it on each change of the list)."""
        reset_keeping_pick(self.image_picker)

    def check_voxel_size(self, *_args: Any) -> str:
        """Compare the image layer's scale with the model's voxel size; returns the warning or hint shown."""
        layer, record = self.image_picker.value, self.record
        text, warn = ("", False) if layer is None or record is None else voxel_size_message(layer, record)
        if text != self.warning.text():
            self.warning.setStyleSheet(WARNING_STYLE if warn else "")
            self.warning.setText(text)
        return text

    # ----- control --------------------------------------------------------------------------------------------
    def start(self) -> bool:
        """Label the picked image with the picked model in a worker thread; False (and why) if it cannot start."""
        if self.running:
            return False
        layer, record = self.image_picker.value, self.record
        problem = ("Pick an Image layer to label (open one first)." if layer is None else
                   "Pick a model (train one first, or Refresh)." if record is None else
                   f"{layer.name!r} is an RGB image; convert it to one grey channel." if layer.rgb else
                   f"{layer.name!r} has {layer.ndim} dimensions; label a 2D image or a 3D stack."
                   if layer.ndim not in (2, 3) else "")
        if problem:
            self._set_status(problem, error=True)
            return False
        # The job gets the array (level 0; dask and zarr pass through unread, so a stack larger than memory is
        # read block by block), never the layer. Not copied: napari never edits an Image layer's array in place.
        # By default a child process labels it (the layer's own file, or one .npy of it) and writes the result as
        # zarr stores the layers then read lazily: a crash costs the child, a result larger than memory works.
        data = level0(layer)
        maps, doubt = self.show_maps.isChecked(), self.show_doubt.isChecked()
        if self.in_process.isChecked():
            run, args = label_stack, (record.name, data)
            kwargs: dict[str, Any] = dict(probabilities=True if maps else None, uncertainty=True if doubt else None,
                                          settings=self.settings())
        else:
            folder = JobFolder()
            run, args = labelled_in_child, (record, folder.stage("image", data), predict_options(self.settings()))
            kwargs = dict(probabilities=maps, uncertainty=doubt, lazy=_read_lazily(data), folder=folder)
        return self._launch(run, args, kwargs, record, [_job_for(layer, record, predict_options(self.settings()))],
                            f"Loading {record.name!r} to label {layer.name!r}…")

    def start_many(self) -> bool:
        """Label every picked image layer (results as layers), or every stack of the folder (results as files),
        in one child process, one stack after another; False (and why) if it cannot start."""
        if self.running:
            return False
        record, many = self.record, self.many
        try:
            if record is None:
                raise ConfigError("model", "pick a model (train one first, or Refresh)")
            options = predict_options(self.settings())
            if many.from_folder:
                images, layers = many.folder_stacks(), []
                kwargs: dict[str, Any] = dict(output_dir=many.output_dir())
                options += ["--overwrite"] if many.overwrite.isChecked() else []
                what = f"{len(images)} stacks of {many.folder.text().strip()}"
            else:
                layers = many.picked()
                if not layers:
                    raise ConfigError("image layers", "pick the image layers to label (open some first)")
                what = f"{len(layers)} image layers"
        except ConfigError as error:
            self._set_status(str(error), error=True)
            return False
        folder = JobFolder()
        if layers:
            arrays = [level0(layer) for layer in layers]
            images = [folder.stage(f"image_{i + 1}", data) for i, data in enumerate(arrays)]
            kwargs = dict(lazy=[_read_lazily(data) for data in arrays])
        return self._launch(labelled_many_in_child, (record, images, options), dict(folder=folder, **kwargs), record,
                            [_job_for(layer, record, options) for layer in layers],
                            f"Loading {record.name!r} to label {what}…")

    def _launch(self, run: Any, args: tuple, kwargs: dict[str, Any], record: ModelRecord, jobs: list[_Job],
                status: str) -> bool:
        """One worker for either kind of job; the events and the result come back to this dock's slots."""
        self._jobs, self._index, self._job_model = jobs, 0, record.name
        self._many = run is labelled_many_in_child
        self.result, self.error, self.last_event = None, None, None
        stop = threading.Event()
        worker = create_worker(run, *args, models_dir=self.models_dir, stop=stop, **kwargs, _start_thread=False,
                               _ignore_errors=True, _worker_class=StoppableWorker)
        worker.stop_event = stop
        worker.yielded.connect(self._on_event)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_worker_finished)
        self.worker = worker
        self._running_stops.add(stop)
        self._counted = False
        self.state.set(JobState.PREPARING)
        self._set_status(status)
        worker.start()
        return True

    def cancel(self, reason: str = "") -> bool:
        """Ask the engine to stop; it drops everything half done, so no layer is added."""
        if self.worker is None:
            return False
        self.worker.stop_event.set()
        self.state.set(JobState.STOPPING)
        self._set_status(f"{reason + ': ' if reason else ''}cancelling…")
        return True

    def event(self, event: QEvent) -> bool:
        """Closing the dock re-parents this widget to None: cancel a job whose result nobody would see."""
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and self.running:
            self.cancel("the dock was closed")
        return super().event(event)

    def _on_layer_removed(self, event: Any) -> None:
        if self.running and any(job.layer is event.value for job in self._jobs):
            self.cancel(f"layer {event.value.name!r} was removed")
        # A child's result lives in zarr stores of this session: they go when no layer shows them any more.
        for folder, layers in list(self._results.items()):
            if event.value in layers:
                layers.remove(event.value)
            if not any(layer in self.viewer.layers for layer in layers):
                del self._results[folder]
                shutil.rmtree(folder, ignore_errors=True)

    # ----- events from the engine (delivered in the GUI thread) -----------------------------------------------
    def _on_event(self, event: Any) -> None:
        self.last_event = event
        if isinstance(event, LabelStarted):
            self._counted = True
            if self.state.state == JobState.PREPARING:  # a cancel asked while loading stays a cancel
                self.state.set(JobState.RUNNING)
            self.progress.setRange(0, max(1, event.windows))
            self.progress.setValue(0)
            self.progress.setFormat("%v / %m windows")
            self._set_status(f"Labelling {self._stack_name()!r} on the {event.device.upper()} ({event.precision}): "
                             f"{event.windows} windows in {event.blocks} block(s).")
        elif isinstance(event, StackStarted):
            self._index, self._stack_source = event.index, event.source
            self.many.overall.setRange(0, 1000)
            self.many.overall.setFormat(f"stack {event.index + 1} / {event.stacks}")
        elif isinstance(event, StacksProgress) and not self._stopping():
            self.many.overall.setValue(round(1000 * event.overall_done))
            self.many.overall.setFormat(f"stack {event.index + 1} / {event.stacks}, job %p%")
        elif isinstance(event, LabelProgress) and not self._stopping():
            self.progress.setValue(event.windows_done)
            if event.stage == "join":
                self.progress.setFormat("joining objects across blocks…")
        elif isinstance(event, LabelFinished):
            self.progress.setFormat("cancelled" if event.cancelled else f"done in {event.seconds:.1f} s")

    def _on_returned(self, returned: LabelResult | StoredResult | list | None) -> None:
        if isinstance(returned, list):
            self._on_many_returned(returned)
            return
        stored = returned if isinstance(returned, StoredResult) else None
        result = stored.result if stored is not None else returned
        self.result = result
        if result is None or result.labels is None or self._stopping():  # cancelled, or ended just as it was
            if stored is not None and stored.folder is not None:
                shutil.rmtree(stored.folder, ignore_errors=True)
            self._set_status("Cancelled; no layer was added.")
            return
        self._add_result(self._job, result, stored)
        objects = f", {result.objects} objects" if result.objects is not None else ""
        self._set_status(f"Added {self._job.name!r} ({result.seconds:.1f} s{objects}).")

    def _on_many_returned(self, returned: list) -> None:
        """A many-stack job's results: each finished layer's as a labels layer over it, a folder's as the files
        written; a stopped job keeps the stacks it finished."""
        self.result = returned
        stopped = f"Stopped after {len(returned)} of {len(self._jobs) or 'the'} stacks: " if self._stopping() else ""
        if not self._jobs:
            where = returned[0].parent if returned else self.many.output_dir()
            self._set_status(f"{stopped}Wrote {len(returned)} result(s) into {where}.")
            return
        for job, stored in zip(self._jobs, returned):
            self._add_result(job, stored.result, stored)
        self._set_status(f"{stopped}Added {len(returned)} labels layer(s): "
                         + ", ".join(repr(job.name) for job in self._jobs[:len(returned)]) + ".")

    def _add_result(self, job: _Job, result: LabelResult, stored: StoredResult | None) -> Layer:
        """The result as layers placed exactly over the image it came from."""
        where = {"scale": job.scale, "translate": job.translate}
        added = []
        if result.probabilities is not None:  # under the labels, each map in its own colour, adding up
            maps = _lazy(result.probabilities)
            for i, (channel, visible) in enumerate(channel_names(result.record)):
                added.append(self.viewer.add_image(maps[i], name=f"{job.name} {channel}", blending="additive",
                                      colormap=MAP_COLOURS[i % len(MAP_COLOURS)], contrast_limits=(0.0, 1.0),
                                      opacity=0.7, visible=visible, **where))
        if result.uncertainty is not None:
            added.append(self.viewer.add_image(_lazy(result.uncertainty), name=f"{job.name} uncertainty",
                                               colormap="inferno", blending="additive", contrast_limits=(0.0, 1.0),
                                               opacity=0.6, **where))
        # The result as the model gave it stays on the layer, so that training on the corrected layer can tell
        # the user's corrections from the rest ("Trust only the regions I corrected" in the training dock).
        kept = auto_label_metadata(result.record.name, job.name, result.labels,
                                   original=stored.original if stored is not None else None,
                                   folder=stored.folder if stored is not None else None)
        labels = self.viewer.add_labels(result.labels, name=job.name, opacity=0.5, metadata=kept, **where)
        if stored is not None and stored.folder is not None:
            self._results[str(stored.folder)] = [*added, labels]
        if result.uncertainty is not None and result.record.config.mode == "instance":
            self.proofread.load(labels, result.uncertainty, queue=result.queue, image=job.layer, record=result.record,
                                options=list(job.options))
        return labels

    def _on_error(self, error: BaseException) -> None:
        self.error = error
        if isinstance(error, ConfigError):  # a choice, or the image, does not suit the model
            self._set_status(f"Labelling could not start: {error}", error=True)
        elif isinstance(error, ChildDied):
            self._set_status(str(error), error=True)
        else:
            self._set_status(f"Labelling failed: {type(error).__name__}: {error}", error=True)

    def _on_worker_finished(self) -> None:
        if self.worker is not None:
            self._running_stops.discard(self.worker.stop_event)
        cancelled = self._stopping() or (isinstance(self.last_event, LabelFinished) and self.last_event.cancelled)
        self.worker, self._jobs, self._job_model = None, [], None
        self.state.set(JobState.FAILED if self.error is not None else
                       JobState.STOPPED if cancelled else JobState.DONE)

    def _draw_state(self, state: JobState) -> None:
        """Buttons and the progress bar's words for a state; the numbers come from the job's events."""
        self.label_button.setEnabled(not state.active)
        self.many.label_button.setEnabled(not state.active)
        self.cancel_button.setEnabled(state in (JobState.PREPARING, JobState.RUNNING))
        if state == JobState.PREPARING:
            self.progress.setRange(0, 0)  # busy until the engine says how many windows there are
            self.progress.setFormat("preparing…")
            self.many.overall.setRange(0, 1)
            self.many.overall.setValue(0)
            self.many.overall.setFormat("preparing…" if self._many else "idle")
        elif not state.active and (state == JobState.FAILED or not self._counted):
            self.progress.setRange(0, 1)  # nothing was counted (or it failed): no half-full bar left behind
            self.progress.setValue(0)
            self.progress.setFormat(state.value)
        if not state.active and state != JobState.IDLE and self._many:
            self.many.overall.setFormat(state.value if state != JobState.DONE else "done: %p%")

    def _stack_name(self) -> str:
        job = self._job
        return job.name if job is not None else Path(self._stack_source.rstrip("/\\")).name

    def _stopping(self) -> bool:
        return self.worker is not None and self.worker.stop_event.is_set()

    def _set_status(self, text: str, *, error: bool = False) -> None:
        self.status.say(text, error=error)


def _job_for(layer: Layer, record: ModelRecord, options: list[str]) -> _Job:
    return _Job(layer, f"{layer.name} [{record.name}]", np.array(layer.scale, float), np.array(layer.translate, float),
                tuple(options))


def _read_lazily(data: Any) -> bool:
    """A stack the child reads from its own file (or dask): its result stays on disk, read lazily, too."""
    return source_path(data) is not None or type(data).__module__.startswith("dask")


def predict_options(settings: LabelSettings) -> list[str]:
    """The dock's choices as ``predict`` options for a child process (the same settings the engine takes)."""
    options = ["--overlap", repr(float(settings.overlap)), "--tta", str(settings.tta), "--precision",
               settings.precision, "--checkpoint", settings.which]
    if settings.batch_size is not None:
        options += ["--batch-size", str(int(settings.batch_size))]
    for key, value in settings.postprocess.items():
        options += [f"--{key.replace('_', '-')}", repr(float(value))]
    return options


def _lazy(array: Any) -> Any:
    """A zarr array as dask, so that a channel of it is shown slice by slice instead of read whole."""
    if type(array).__module__.startswith("zarr"):
        import dask.array as da

        return da.from_zarr(array)
    return array
