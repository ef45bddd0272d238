"""The auto-label dock's proofreading row: steps through the result's queue, likeliest error first, with one key
each to accept, erase or skip an object; tracks what the user reviews as they work; and retrains on it.

Keys are bound on the result layer (napari's own Labels keys stay as they are): ``A`` accepts the current
object, ``D`` erases it (both then move on), ``N`` jumps to the next entry. Every brush stroke, fill and erase
on the layer is added to the reviewed mask as napari reports it (``events.paint``), so a retrain trusts exactly
what the user looked at. "Retrain on corrections" runs the continuation as the command line in a child process
(no training in napari's process) and shows the round and its score before and after.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtWidgets import QGridLayout, QLabel, QPushButton, QWidget

from ..inference.review import accept, mark_edit, object_voxels
from ..inference.uncertainty import rank_objects
from ..job.config import ConfigError, TrainConfig
from ..job.events import Finished, Started, Validation, parts_text
from ..models.store import ModelRecord, ModelStore
from ..training.material import correction_round, round_number
from .common import StatusLine, StoppableWorker
from .corrections import auto_labels_of
from .job_process import ChildDied, JobFolder, train_in_child
from .layer_picker import level0
from .versions import next_version_name

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

KEYS = {"accept": "a", "erase": "d", "next": "n"}


@dataclass(frozen=True)
class Entry:
    """One object to look at: its id, where it is (voxels) and why it is in the queue, in words."""

    id: int
    centroid: tuple[float, ...]
    why: str


class ProofreadQueue(QWidget):
    """Holds the queue of the last result and the mask of what the user reviewed on its layer."""

    def __init__(self, viewer: napari.Viewer, models_dir: Callable[[], Path] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.models_dir = models_dir or (lambda: ModelStore().root)  # the dock's folder, read when needed
        self.entries: list[Entry] = []
        self.position = -1
        self.layer: Labels | None = None
        self.image: Image | None = None
        self.record: ModelRecord | None = None
        self.reviewed: np.ndarray | None = None
        self.corrected = False  # whether anything was added to ``reviewed`` (not rescanned at every stroke)
        self.worker: StoppableWorker | None = None
        self.round: int | None = None
        self.before: Validation | None = None
        self.after: Validation | None = None
        self.next_button = QPushButton(f"Next object [{KEYS['next'].upper()}]", enabled=False)
        self.accept_button = QPushButton(f"Accept [{KEYS['accept'].upper()}]", enabled=False)
        self.erase_button = QPushButton(f"Erase [{KEYS['erase'].upper()}]", enabled=False)
        self.retrain_button = QPushButton("Retrain on corrections", enabled=False)
        self.retrain_button.setToolTip("Continue the model as a new version trusting only what you corrected, "
                                       "erased or accepted here")
        self.info, self.round_info = QLabel(""), StatusLine()
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for column, button in enumerate((self.next_button, self.accept_button, self.erase_button)):
            layout.addWidget(button, 0, column)
        layout.addWidget(self.info, 1, 0, 1, 3)
        layout.addWidget(self.retrain_button, 2, 0, 1, 3)
        layout.addWidget(self.round_info, 3, 0, 1, 3)
        self.next_button.clicked.connect(lambda: self.next())
        self.accept_button.clicked.connect(lambda: self.accept())
        self.erase_button.clicked.connect(lambda: self.erase())
        self.retrain_button.clicked.connect(lambda: self.retrain())

    # ----- the queue --------------------------------------------------------------------------------------------
    def load(self, layer: Labels, uncertainty: Any, *, queue: Any = None, image: Image | None = None,
             record: ModelRecord | None = None) -> None:
        """Take a new result: its queue (``LabelResult.queue``; without one, its objects by doubt alone), the
        image it labelled and the model, for a retrain. The reviewed mask starts empty."""
        self._release()
        self.layer, self.image, self.record, self.position = layer, image, record, -1
        if queue is not None:
            self.entries = [Entry(e.id, tuple(e.centroid), f"{e.reason}, error score {e.score:.2f}") for e in queue]
        else:
            self.entries = [Entry(o.id, tuple(o.centroid), f"doubt {o.uncertainty:.2f}")
                            for o in rank_objects(np.asarray(layer.data), np.asarray(uncertainty))]
        self.reviewed, self.corrected = np.zeros(layer.data.shape, bool), False
        layer.events.paint.connect(self._on_paint)
        for action, key in KEYS.items():
            layer.bind_key(key, self._key_handler(action), overwrite=True)
        for button in (self.next_button, self.accept_button, self.erase_button):
            button.setEnabled(bool(self.entries))
        self._update_retrain()
        self.info.setText(f"{len(self.entries)} objects queued" if self.entries else "no objects")

    @property
    def current(self) -> Entry | None:
        """The object the keys act on: the last one jumped to."""
        return self.entries[self.position] if 0 <= self.position < len(self.entries) else None

    def next(self) -> Entry | None:
        """Centre the view on the next entry (its middle section) and select its id for napari's tools."""
        if not self._usable() or not self.entries:
            return None
        self.position = (self.position + 1) % len(self.entries)
        target = self.entries[self.position]
        world = np.asarray(target.centroid) * self.layer.scale + self.layer.translate
        camera = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera  # napari 0.9
        camera.center = tuple(world[-3:] if world.size >= 3 else world)
        if world.size == 3:
            self.viewer.dims.set_point(0, float(world[0]))
        self.layer.selected_label = target.id
        self.info.setText(f"{self.position + 1} / {len(self.entries)}: id {target.id}, {target.why}")
        return target

    def accept(self) -> int:
        """Mark the current object reviewed as it is, then go to the next; returns its voxels (0: none)."""
        target = self.current
        if target is None or not self._usable():
            return 0
        voxels = accept(self.layer.data, self.reviewed, target.id)
        self.corrected = self.corrected or voxels > 0
        self.next()
        self._update_retrain()
        return voxels

    def erase(self) -> int:
        """Erase the current object (one undoable edit, so napari's undo brings it back), then go to the next;
        the erased voxels count as reviewed through the paint event. Returns the voxels erased."""
        target = self.current
        if target is None or not self._usable():
            return 0
        where = object_voxels(self.layer.data, target.id)
        if where[0].size:
            self.layer.data_setitem(where, 0)
        self.next()
        return int(where[0].size)

    def _on_paint(self, event: Any) -> None:
        """napari's record of an edit: masked boxes (brush, fill, polygon) or multi-indices (``data_setitem``)."""
        if self.reviewed is None:
            return
        for atom in event.value:
            if hasattr(atom, "slice_key"):
                mark_edit(self.reviewed, atom.slice_key, atom.mask)
            else:
                mark_edit(self.reviewed, atom[0])
        self.corrected = True
        self._update_retrain()

    def _key_handler(self, action: str) -> Callable[[Any], None]:
        def handler(_layer: Any) -> None:
            getattr(self, action)()

        handler.__doc__ = f"Proofreading: {action} the current object" if action != "next" else \
            "Proofreading: jump to the next object in the queue"
        return handler

    def _usable(self) -> bool:
        return self.layer is not None and self.layer in self.viewer.layers

    def _release(self) -> None:
        """Leave the previous result layer as napari made it: no paint tracking, no keys of ours."""
        if self.layer is None:
            return
        self.layer.events.paint.disconnect(self._on_paint)
        for key in KEYS.values():
            self.layer.bind_key(key, None)

    # ----- retraining ---------------------------------------------------------------------------------------------
    def retrain_job(self) -> tuple[TrainConfig, dict[str, Any], JobFolder]:
        """The continuation of the result's model on the corrected layer and what its child process reads; raises
        ``ConfigError`` naming what is missing."""
        if self.record is None or self.image is None or self.image not in self.viewer.layers:
            raise ConfigError("image", "the image this result was labelled from is gone: label it again first")
        if not self._usable():
            raise ConfigError("labels", "the auto-label result layer was removed: label again first")
        kept = auto_labels_of(self.layer)
        if kept is None:
            raise ConfigError("auto_labels", f"{self.layer.name!r} lost the model's own labels it came from")
        if self.reviewed is None or not self.corrected:
            raise ConfigError("reviewed", "nothing is corrected yet: paint, erase or accept objects first")
        name = next_version_name(self.record.name, ModelStore(self.models_dir()).names())
        config = correction_round(self.record, name)
        folder = JobFolder()
        data = {"image": folder.stage("image", level0(self.image)), "labels": folder.stage("labels", self.layer.data),
                "auto_labels": folder.stage("auto_labels", kept[1]),
                "reviewed": folder.stage("reviewed", self.reviewed.astype(np.uint8))}
        return config, data, folder

    def retrain(self) -> bool:
        """Start "Retrain on corrections" in a child process; False (and why, in the round line) if it cannot."""
        if self.worker is not None:
            return False
        try:
            config, data, folder = self.retrain_job()
        except ConfigError as error:
            self.round_info.say(str(error), error=True)
            return False
        self.round, self.before, self.after = round_number(self.record), None, None
        stop = threading.Event()
        worker = create_worker(train_in_child, config, data, models_dir=self.models_dir(), folder=folder, stop=stop,
                               _start_thread=False, _ignore_errors=True, _worker_class=StoppableWorker)
        worker.stop_event = stop
        worker.yielded.connect(self._on_train_event)
        worker.errored.connect(self._on_train_error)
        worker.finished.connect(self._on_train_finished)
        self.worker = worker
        self.retrain_button.setEnabled(False)
        self.round_info.say(f"Round {self.round}: training {config.name} on your corrections…")
        worker.start()
        return True

    def _on_train_event(self, event: Any) -> None:
        if isinstance(event, Started):
            self.round_info.say(f"Round {self.round}: training {event.model_dir.name}"
                                f"{'; ' + event.validation_note if event.validation_note else ''}…")
        elif isinstance(event, Validation):
            if event.iteration == 0 and not event.is_best:
                self.before = event
            elif event.is_best:
                self.after = event
            self.round_info.say(self.score_text())
        elif isinstance(event, Finished):
            self.round_info.say(f"{self.score_text()}\n{event.reason.capitalize()}: {event.model_dir.name} saved; "
                                "label again with it for the next round.")

    def score_text(self) -> str:
        """``Round 2: before 0.410 (learned 0.2, kept 0.6) → best 0.530 (…)`` as far as the job got."""
        def score(event: Validation | None) -> str:
            return "…" if event is None else f"{event.score:.3f}{parts_text(event.metrics)}"

        return f"Round {self.round}: before {score(self.before)} → best {score(self.after)}"

    def _on_train_error(self, error: BaseException) -> None:
        text = str(error) if isinstance(error, (ConfigError, ChildDied)) else f"{type(error).__name__}: {error}"
        self.round_info.say(f"Round {self.round} failed: {text}", error=True)

    def _on_train_finished(self) -> None:
        self.worker = None
        self._update_retrain()

    def _update_retrain(self) -> None:
        self.retrain_button.setEnabled(self.worker is None and self.record is not None and self.image is not None
                                       and self.corrected)
