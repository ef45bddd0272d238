"""The dock widget that trains a model on layers open in napari.

It only gathers the form into a ``TrainConfig``, hands a snapshot of the data to the engine's ``train``
generator in a napari worker thread, and shows what the generator yields. Nothing here computes. A job of several
processes runs as a program of its own, followed by ``job_process.train_in_processes`` in the same worker.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QLabel, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from .. import planning
from ..io.files import size_text
from ..job.config import ConfigError, TrainConfig
from ..job.events import CheckpointSaved, Finished, Preview, Progress, Started, Validation, ViewPreview, parts_text
from ..job.kinds import score_name
from ..models.store import ModelStore
from ..runtime.hardware import processes_per_machine
from ..training.loop import train
from .common import DockState, JobState, StatusLine, StoppableWorker, follow, row, stops_on_destroy
from .corrections import auto_labels_of, touched_problems
from .job_process import ChildDied, JobFolder, train_in_child
from .layer_picker import level0
from .loss_plot import REDRAW_INTERVAL_MS, LossPlot
from .train_form import TrainForm
from .preview_layers import PreviewLayers
from .view_preview import ViewPreviewRow, placed_preview

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer



@dataclass(frozen=True)
class Placement:
    """Where the training image sits in the world, read once in the GUI thread when the job starts."""

    scale: np.ndarray
    translate: np.ndarray
    ndim: int


class TrainWidget(QWidget):
    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.form = TrainForm(napari_viewer)
        self.image_picker = self.form.image
        self.labels_picker = self.form.labels

        self.train_button = QPushButton("Train")
        self.train_button.clicked.connect(self._on_button)
        self.resume_button = QPushButton("Resume")
        self.resume_button.setToolTip("Continue the model of this name from its last checkpoint")
        self.resume_button.clicked.connect(lambda: self.resume())
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.progress.setValue(0)
        self.rate_label = QLabel()
        # Its text changes every iteration; a size hint that followed the text would re-lay out the window.
        self.rate_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.status = StatusLine()
        background, foreground = _theme_colours(napari_viewer)
        self.plot = LossPlot(background=background, foreground=foreground)
        self.view_preview = ViewPreviewRow(napari_viewer)  # predictions where the user looks (view_preview.py)

        layout = QVBoxLayout(self)
        layout.addWidget(self.form)
        layout.addWidget(row(self.train_button, self.resume_button))
        layout.addWidget(self.progress)
        layout.addWidget(self.rate_label)
        layout.addWidget(self.view_preview)
        layout.addWidget(self.status)
        layout.addWidget(self.plot, stretch=1)

        self.worker: StoppableWorker | None = None
        # The job's state, the one thing the buttons and the progress bar's words follow (_draw_state).
        self.state = DockState()
        self.state.changed.connect(self._draw_state)
        self._outcome: JobState | None = None  # what the job's Finished event said: done or stopped
        self.config: TrainConfig | None = None
        self.last_event: Any = None
        self.started: Started | None = None  # the running (or last) job's start
        self.last_preview: Preview | None = None
        self.model_dir: Path | None = None
        self.error: BaseException | None = None
        self.previews = PreviewLayers(napari_viewer, "preview", "magma")  # the held-out block's (preview_layers.py)
        self._inputs: tuple[Layer, ...] | None = None
        self._placement: Placement | None = None
        self._pending_progress: Progress | None = None
        self._progress_timer = QTimer(self)
        self._progress_timer.setSingleShot(True)
        self._progress_timer.setInterval(REDRAW_INTERVAL_MS)
        self._progress_timer.timeout.connect(self._show_progress)
        self._running_stops = stops_on_destroy(self)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        self.form.name.changed.connect(self._update_resume)
        follow(self.form.dock_settings.models_dir_changed, self, "_update_resume")
        self._update_resume()
        self._handlers = {Started: self._on_started, Progress: self._on_progress, Validation: self._on_validation,
                          Preview: self._on_preview, ViewPreview: self.view_preview.show,
                          CheckpointSaved: self._on_checkpoint,
                          Finished: self._on_finished_event}

    # ----- readable state -------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.worker is not None

    @property
    def loss_points(self) -> list[tuple[int, float]]:
        return self.plot.loss_points

    @property
    def score_points(self) -> list[tuple[int, float]]:
        return self.plot.score_points

    def build_config(self) -> TrainConfig:
        """The form as a job; raises the first field that cannot be read (the data is not checked here)."""
        config, errors = self.form.read()
        if errors:
            raise errors[0]
        return config

    # ----- control --------------------------------------------------------------------------------------------
    def start(self, *, resume: bool = False) -> bool:
        """Check everything the engine would check, mark each wrong field, and start only if none is wrong.

        ``resume`` continues the model named in the form from its last checkpoint (its own job, with this form's
        layers, iteration total, time limit and hardware)."""
        if self.running:
            return False
        self.form.clear_errors()
        self._set_status("")
        config, errors = self.form.read()
        models_dir = self.form.models_folder()
        if resume:
            config = _resumed(config, models_dir, errors)
        image_layer, labels_layer = self.image_picker.value, self.labels_picker.value
        colour = [layer.name for layer in self.viewer.layers if getattr(layer, "rgb", False)]
        errors += _layer_problems(image_layer, labels_layer, colour)
        errors += self.form.pairs.problems(config)
        labels_shape = level0(labels_layer).shape if labels_layer is not None else None
        errors += touched_problems(config, labels_layer, labels_shape)
        errors += planning.problems(config, image_shape=level0(image_layer).shape if image_layer is not None else None,
                                    labels_shape=labels_shape, models_dir=models_dir, resume=resume)
        if errors:
            elsewhere = self.form.show_errors(_unique(errors))
            self._set_status("Fix the fields marked in red." if not elsewhere else
                             "\n".join(str(e) for e in elsewhere), error=True)
            return False

        self.form.remember()  # the next dock starts from this job's choices
        extra_layers = self.form.pairs.layers()
        # The model's own result, kept aside by the auto-label dock; nothing edits it, so it needs no copy.
        corrected = auto_labels_of(labels_layer) if config.touched_only else None
        processes = processes_per_machine(config)
        in_process = self.form.in_process.value and processes == 1
        stop = threading.Event()
        # The job gets a snapshot, taken here in the GUI thread: layers may be painted or removed while it trains,
        # and napari objects must not be read from another thread. A child process gets files (a layer's own file
        # where it has one, else one .npy), this process copies.
        if in_process:
            extra_pairs = [(np.array(level0(i), copy=True), np.array(level0(lab), copy=True))
                           for i, lab in extra_layers]
            run, args = train, (config, np.array(level0(image_layer), copy=True),
                                np.array(level0(labels_layer), copy=True))
            kwargs = dict(extra_pairs=extra_pairs, auto_labels=corrected[1] if corrected is not None else None,
                          resume=resume)
        else:
            folder = JobFolder()
            data = {"image": folder.stage("image", level0(image_layer)),
                    "labels": folder.stage("labels", level0(labels_layer)),
                    "extra_images": [folder.stage(f"image_{i + 2}", level0(a)) for i, (a, _) in enumerate(extra_layers)],
                    "extra_labels": [folder.stage(f"labels_{i + 2}", level0(b)) for i, (_, b) in enumerate(extra_layers)]}
            if corrected is not None:
                data["auto_labels"] = folder.stage("auto_labels", corrected[1])
            run, args, kwargs = train_in_child, (config, data), dict(resume=resume, folder=folder)
        self._placement = Placement(np.asarray(image_layer.scale, float), np.asarray(image_layer.translate, float),
                                    level0(image_layer).ndim)
        self._inputs = (image_layer, labels_layer, *(layer for pair in extra_layers for layer in pair))
        self.config, self.last_event, self.last_preview, self.model_dir, self.error = config, None, None, None, None
        self.previews.prepare(config.name, self._placement.ndim, self._placement.scale, self._placement.translate)
        self.view_preview.begin(image_layer, self._placement, config.name, stop)
        self.plot.reset(score_name(config.mode))

        # By default the command line trains in a child process and the worker follows its events: a crash there
        # (a kernel's segmentation fault, memory) ends the child, never napari with the user's unsaved labels.
        worker = create_worker(run, *args, models_dir=models_dir, stop=stop, **kwargs, _start_thread=False,
                               _ignore_errors=True, _worker_class=StoppableWorker)
        worker.stop_event = stop
        worker.yielded.connect(self._on_event)
        worker.errored.connect(self._on_error)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._on_worker_finished)
        self.worker, self.started, self._outcome = worker, None, None
        self._running_stops.add(stop)
        self.progress.setRange(0, config.iterations)
        self.progress.setValue(0)
        self.state.set(JobState.PREPARING)
        verb = "Resuming" if resume else "Preparing"
        self._set_status(f"{verb} {config.name}" + (f" as {processes} processes…" if processes > 1 else "…"))
        worker.start()
        return True

    def stop(self, reason: str = "") -> bool:
        """Ask the job to end after its current iteration; the engine then saves a checkpoint."""
        if self.worker is None:
            return False
        self.worker.stop_event.set()
        self.state.set(JobState.STOPPING)
        self._set_status(f"{reason + ': ' if reason else ''}stopping after this iteration and saving a checkpoint…")
        return True

    def _on_button(self) -> None:
        if self.running:
            self.stop()
        else:
            self.start()

    def resume(self) -> bool:
        """Continue the model named in the form from its last checkpoint (after a stop, a time limit or a crash)."""
        return self.start(resume=True)

    def _update_resume(self, *_args: Any) -> None:
        """Resume is offered for a model of this name that has a checkpoint, while nothing trains."""
        name = self.form.name.value.strip()
        folder = self.form.dock_settings.models_dir
        self.resume_button.setEnabled(not self.running and bool(name) and ModelStore(folder).exists(name))

    def event(self, event: QEvent) -> bool:
        """Closing the dock takes this widget out of the window (napari re-parents it to None): stop the job,
        whose progress would otherwise go on unseen."""
        if event.type() == QEvent.Type.ParentChange and self.parent() is None and self.running:
            self.stop("the dock was closed")
        return super().event(event)

    def _on_layer_removed(self, event: Any) -> None:
        layer = event.value
        if self.running and self._inputs is not None and any(layer == picked for picked in self._inputs):
            self.stop(f"layer {layer.name!r} was removed")

    # ----- events from the engine (delivered in the GUI thread) -----------------------------------------------
    def _on_event(self, event: Any) -> None:
        self.last_event = event
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _on_started(self, event: Started) -> None:
        self.started = event
        self.model_dir = event.model_dir
        self.view_preview.started(event.model_dir)
        if self.state.state == JobState.PREPARING:  # a stop asked while preparing stays a stop
            self.state.set(JobState.RUNNING)
        self.progress.setRange(0, event.total_iterations)
        self.progress.setValue(event.start_iteration)
        window = "×".join(str(w) for w in event.window)
        disk = "" if event.disk_bytes is None else f" Checkpoints take up to {size_text(event.disk_bytes)} of disk."
        note = f" It {event.validation_note}." if event.validation_note else ""
        plan = "".join(f"\n{line}" for line in event.plan)  # what the plan chose for the fields left on auto
        self._set_status(f"Training {event.model_dir.name} on the {event.device.upper()}, window {window}.{disk}"
                         f"{note}{plan}")

    def _on_progress(self, event: Progress) -> None:
        """Recorded at once, shown at most once a second: on a small CPU every repaint in the GUI thread takes
        time from the cores the training thread computes on."""
        self.plot.add_loss(event.iteration, event.loss)
        if event.eta_seconds is not None and event.seconds_per_iteration > 0:
            self.plot.expect(min(event.total, event.iteration + round(event.eta_seconds / event.seconds_per_iteration)))
        self._pending_progress = event
        if not self._progress_timer.isActive():
            self._progress_timer.start()

    def _show_progress(self) -> None:
        self._progress_timer.stop()
        event, self._pending_progress = self._pending_progress, None
        if event is None:
            return
        self.progress.setValue(event.iteration)
        left = f" · {_duration(event.eta_seconds)} left" if event.eta_seconds is not None else ""
        self.progress.setFormat(f"{event.iteration} / {event.total}{left}")
        waiting = event.data_seconds / event.seconds_per_iteration if event.seconds_per_iteration > 0 else 0.0
        self.rate_label.setText(f"loss {event.loss:.4f} · {event.seconds_per_iteration:.2f} s/it · "
                                f"lr {event.lr:.1e} · data wait {waiting:.0%}")

    def _on_validation(self, event: Validation) -> None:
        self.plot.add_score(event.iteration, event.score)
        name = score_name(self.config.mode) if self.config is not None else "score"
        when = "Before training" if event.iteration == 0 else f"Iteration {event.iteration}"
        self._set_status(f"{when}: {name} {event.score:.3f}{parts_text(event.metrics)}"
                         f"{' (kept as the best weights)' if event.is_best else ''} on what is held out.")

    def _on_checkpoint(self, event: CheckpointSaved) -> None:
        if event.reason in ("stop", "final"):
            self._set_status(f"Checkpoint saved at iteration {event.iteration}.")

    def _on_finished_event(self, event: Finished) -> None:
        self._show_progress()
        self.model_dir = event.model_dir
        best = f"; best score {event.best_score:.3f}" if event.best_score is not None else ""
        total = self.started.total_iterations if self.started is not None else event.iteration
        self._outcome = JobState.STOPPED if event.reason == "stopped" else JobState.DONE
        self.progress.setFormat(f"{event.iteration} / {total} · {event.reason}")
        self._set_status(f"{event.reason.capitalize()} at iteration {event.iteration}{best}. "
                         f"Model saved in {event.model_dir}.")

    def _on_preview(self, event: Preview) -> None:
        """Show the held-out block's prediction exactly over the block of the image it was predicted from."""
        self.last_preview = event
        placement = self._placement
        if placement is None or self.worker is None or self.worker.stop_event.is_set():
            return  # once stopping (dock or viewer closing), a late preview must not add layers to a dead window
        foreground, labels, translate = placed_preview(event, placement)
        self.previews.show(foreground, labels, placement.scale, translate, self.worker.stop_event)

    def _on_error(self, error: BaseException) -> None:
        """napari also shows the error as a notification (its worker relays ``errored``)."""
        self.error = error
        if isinstance(error, ConfigError):
            self.form.show_errors([error])
            self._set_status(f"Training could not start: {error}", error=True)
        elif isinstance(error, ChildDied):
            self._set_status(str(error), error=True)
        else:
            self._set_status(f"Training failed: {type(error).__name__}: {error}", error=True)

    def _on_returned(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)

    def _on_worker_finished(self) -> None:
        self.previews.remove_unfilled()
        self.view_preview.end()
        if self.worker is not None:
            self._running_stops.discard(self.worker.stop_event)
        stopped = self.worker is not None and self.worker.stop_event.is_set()
        self.worker = None
        self._inputs = None
        self.state.set(JobState.FAILED if self.error is not None else
                       self._outcome or (JobState.STOPPED if stopped else JobState.DONE))
        # Re-reading the models folder takes tens of milliseconds: in a later turn of the event loop, so the
        # viewer answers input in between.
        self.plot.redraw(fit=True)
        QTimer.singleShot(0, self.form.continue_from.refresh)  # the new model can be continued from at once

    def _draw_state(self, state: JobState) -> None:
        """Buttons, form and the progress bar's words for a state; the numbers come from the job's events."""
        self.train_button.setText({JobState.PREPARING: "Stop", JobState.RUNNING: "Stop",
                                   JobState.STOPPING: "Stopping…"}.get(state, "Train"))
        self.train_button.setEnabled(state != JobState.STOPPING)
        self.form.setEnabled(not state.active)
        self._update_resume()
        if state in (JobState.PREPARING, JobState.FAILED) or (not state.active and self._outcome is None):
            self.progress.setFormat("preparing…" if state == JobState.PREPARING else state.value)

    def _set_status(self, text: str, *, error: bool = False) -> None:
        self.status.say(text, error=error)


def _resumed(config: TrainConfig, models_dir: Path, errors: list[ConfigError]) -> TrainConfig:
    """The job a resumed model continues: its own, with the form's layers, budget and hardware."""
    store = ModelStore(models_dir)
    if not store.exists(config.name):
        errors.append(ConfigError("name", f"there is no model named {config.name!r} in {models_dir} to resume"))
        return config
    record = store.record(config.name)
    kept = {field: getattr(config, field) for field in RESUME_FROM_FORM}
    if config.iterations <= record.iterations_done:
        errors.append(ConfigError("iterations", f"{config.name!r} has trained {record.iterations_done} iterations: "
                                                "raise the iteration total to continue it"))
    return record.config.replace(**kept)


RESUME_FROM_FORM = ("image", "labels", "extra_images", "extra_labels", "iterations", "time_limit_min", "gpus",
                    "workers", "cpu_processes", "data_workers")


CONVERT = "Plugins > PlantBio Train > Colour image to labels"


def _layer_problems(image: Layer | None, labels: Layer | None, colour_layers: list[str]) -> list[ConfigError]:
    """What is wrong with the picked layers; colour images are the older tool's way of saving labels, so
    they get pointed at the conversion rather than just refused."""
    found = []
    if image is None:
        found.append(ConfigError("image", "pick an Image layer to train on (open one first)"))
    elif image.rgb:
        found.append(ConfigError("image", f"{image.name!r} is an RGB image: if it holds labels painted in colours, "
                                          f"turn it into a Labels layer with {CONVERT}; a raw image must be one "
                                          "grey channel"))
    if labels is None:
        hint = (f"; {', '.join(repr(n) for n in colour_layers)} looks like colour-painted labels: convert it with "
                f"{CONVERT}" if colour_layers else " (open or paint one)")
        found.append(ConfigError("labels", f"pick a Labels layer matching the image{hint}"))
    return found


def _unique(errors: list[ConfigError]) -> list[ConfigError]:
    seen, out = set(), []
    for error in errors:
        if (error.field, error.message) not in seen:
            seen.add((error.field, error.message))
            out.append(error)
    return out


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _theme_colours(viewer: napari.viewer.Viewer) -> tuple[str, str]:
    """Match the plot to napari's theme so the dock does not show a white block in a dark window."""
    from napari.utils.theme import available_themes, get_theme

    name = viewer.theme if viewer.theme in available_themes() else "dark"
    theme = get_theme(name)
    return theme.background.as_hex(), theme.text.as_hex()
