"""The auto-label dock's proofreading row: steps through the result's queue, likeliest error first, with one key
each to accept, erase or skip an object; tracks what the user reviews as they work; and retrains on it.

Keys are bound on the result layer (napari's own Labels keys stay as they are): ``A`` accepts the current
object, ``D`` erases it (both then move on), ``N`` jumps to the next entry. Every brush stroke, fill and erase
on the layer is added to the reviewed mask as napari reports it (``events.paint``), so a retrain trusts exactly
what the user looked at; napari's undo takes back what the undone edit marked (and redo marks it again), while a
voxel reviewed before that edit stays reviewed (``inference.review.ReviewedEdits``, told after every change of
the layer which edits napari can still undo or redo). "Retrain on corrections" runs the continuation as the
command line in a child process (no training in napari's process) and shows the round and its score before and
after.

When the continuation is saved the dock labels again with it, as two ``predict`` children: first the blocks
around everything reviewed and the queue's next entries (``inference.relabel.round_regions``, ``--near``), merged
into the layer at once, then the whole stack in the background, which replaces every label the user has not
reviewed (a full relabel's labels, whose objects no block face cut: ``job_process.relabel_in_child`` says why).
Each merge leaves every reviewed voxel as the user left it, with its id (``merge_relabelled``); the labels the
model gave become the new version's, and the next round continues it.

Correcting while a round runs (the simplest safe design): the retrain takes a snapshot of the labels and the
reviewed mask when it starts, so the user keeps painting while it trains and relabels. Every edit made meanwhile
goes into the reviewed mask as any other, so the relabelling, which reads the mask when it merges, never writes
over it, and the next round trains on it. One round at a time: "Retrain on corrections" is enabled again once
the relabelling is done, and then trains on all corrections so far.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QGridLayout, QLabel, QPushButton, QWidget

from ..inference.label import LabelSettings
from ..inference.proofreading import queue_for
from ..inference.relabel import merge_relabelled, round_regions
from ..inference.review import ReviewedEdits, mostly_reviewed, object_voxels
from ..inference.uncertainty import rank_objects
from ..job.config import ConfigError, TrainConfig
from ..job.events import Finished, Started, Validation, parts_text
from ..models.store import ModelRecord, ModelStore
from ..training.material import correction_round, round_number
from .common import StatusLine, StoppableWorker, camera_of, stops_on_destroy
from .corrections import AUTO_LABEL_KEY, auto_label_metadata, auto_labels_of
from .job_process import ChildDied, JobFolder, Relabelled, relabel_in_child, train_in_child
from .layer_picker import level0
from .versions import next_version_name

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

KEYS = {"accept": "a", "erase": "d", "next": "n"}
NEXT_RELABELLED_FIRST = 10  # queue entries after the current one whose blocks are relabelled first


@dataclass(frozen=True)
class Entry:
    """One object to look at: its id, where it is (voxels) and why it is in the queue, in words."""

    id: int
    centroid: tuple[float, ...]
    why: str


def _entries(queue: Any, labels: Any, uncertainty: Any) -> list[Entry]:
    """The dock's entries from an error queue (``QueueEntry``s) or, without one, the objects ranked by doubt."""
    if queue is not None:
        return [Entry(e.id, tuple(e.centroid), f"{e.reason}, error score {e.score:.2f}") for e in queue]
    return [Entry(o.id, tuple(o.centroid), f"doubt {o.uncertainty:.2f}")
            for o in rank_objects(np.asarray(labels), np.asarray(uncertainty))]


def _next_entries(record: ModelRecord, labels: np.ndarray, image: Any, uncertainty: np.ndarray,
                  reviewed: np.ndarray | None) -> list[Entry]:
    """The queue of a relabelled layer, off napari's thread (tens of seconds on a large stack): ranked as a new
    result's would be (by doubt alone for a semantic model), without the objects lying mostly in what the user
    reviewed."""
    queue = queue_for(record, labels, image, uncertainty)[1] if record.config.mode == "instance" else None
    entries = _entries(queue, labels, uncertainty)
    if reviewed is None:
        return entries
    done = mostly_reviewed(labels, reviewed)
    return [e for e in entries if not done[e.id]]


class ProofreadQueue(QWidget):
    """Holds the queue of the last result and the mask of what the user reviewed on its layer."""

    relabelled = Signal(bool)  # a part of a round's relabelling was merged into the layer (True: the whole)
    requeued = Signal(int)  # the queue was rebuilt for the relabelled layer: this many entries

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
        self.review: ReviewedEdits | None = None
        self.corrected = False  # whether anything was added to ``reviewed`` (not rescanned at every stroke)
        self.worker: StoppableWorker | None = None
        self.relabelling: StoppableWorker | None = None
        self.trained: str | None = None  # the version the running round saved
        self.options: list[str] = []  # the ``predict`` options the result was labelled with
        self.block_voxels = LabelSettings.block_voxels  # blocks of a round's relabelling (tests make them small)
        self._near: tuple = ()  # cores of the part relabelled first
        self._doubt: np.ndarray | None = None  # the round's new uncertainty, part by part, for the next queue
        self.requeueing: Any = None  # the worker ranking the relabelled layer's objects
        self._running_stops = stops_on_destroy(self)  # a round's children end with the dock
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
             record: ModelRecord | None = None, options: list[str] | None = None) -> None:
        """Take a new result: its queue (``LabelResult.queue``; without one, its objects by doubt alone), the
        image it labelled and the model, for a retrain, and the ``predict`` options it was labelled with, for
        the relabelling after it. The reviewed mask starts empty."""
        self._release()
        self.layer, self.image, self.record, self.position = layer, image, record, -1
        self.options = list(options or [])
        self.entries = _entries(queue, layer.data, uncertainty)
        self.review, self.corrected = ReviewedEdits(layer.data.shape), False
        layer.events.paint.connect(self._on_paint)
        layer.events.set_data.connect(self._on_data)  # napari's undo and redo refresh the layer, and say no more
        for action, key in KEYS.items():
            layer.bind_key(key, self._key_handler(action), overwrite=True)
        for button in (self.next_button, self.accept_button, self.erase_button):
            button.setEnabled(bool(self.entries))
        self._update_retrain()
        self.info.setText(f"{len(self.entries)} objects queued" if self.entries else "no objects")

    @property
    def reviewed(self) -> np.ndarray | None:
        """What the user reviewed on the layer (painted, erased, accepted), undone edits taken back."""
        if self.review is None:
            return None
        self._sync_history()
        return self.review.mask

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
        camera_of(self.viewer).center = tuple(world[-3:] if world.size >= 3 else world)
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
        voxels = self.review.accept(self.layer.data, target.id)
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
        if self.review is None:
            return
        self._sync_history()  # an undo napari did not refresh for (a hidden layer) is settled before this edit
        self.review.add(_edit_key(event.value), [(atom.slice_key, atom.mask) if hasattr(atom, "slice_key")
                                                 else (atom[0], None) for atom in event.value])
        self.corrected = True
        self._update_retrain()

    def _on_data(self, _event: Any = None) -> None:
        if self.review is not None and self._sync_history():
            self.corrected = bool(self.review.mask.any())
            self._update_retrain()

    def _sync_history(self) -> bool:
        """Tell the reviewed mask which edits napari can undo and redo now (its own history is the only record
        of an undo: ``Labels.undo`` emits no event of its own)."""
        if self.review is None or self.layer is None:
            return False
        return self.review.sync({_edit_key(item) for item in getattr(self.layer, "_undo_history", ())},
                                {_edit_key(item) for item in getattr(self.layer, "_redo_history", ())})

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
        self.layer.events.set_data.disconnect(self._on_data)
        if self.relabelling is not None:
            self.relabelling.stop_event.set()  # its parts were for this layer
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
        self._running_stops.add(stop)
        worker.yielded.connect(self._on_train_event)
        worker.errored.connect(self._on_train_error)
        worker.finished.connect(self._on_train_finished)
        self.worker = worker
        self.retrain_button.setEnabled(False)
        self.round_info.say(f"Round {self.round}: training {config.name} on your corrections "
                            f"(up to {config.time_limit_min:g} min)…")
        worker.start()
        return True

    def _on_train_event(self, event: Any) -> None:
        if isinstance(event, Started):
            self.trained = None
            self.round_info.say(f"Round {self.round}: training {event.model_dir.name}"
                                f"{'; ' + event.validation_note if event.validation_note else ''}…")
        elif isinstance(event, Validation):
            if event.iteration == 0:
                self.before = event
            if event.is_best:
                self.after = event
            self.round_info.say(self.score_text())
        elif isinstance(event, Finished):
            self.trained = event.model_dir.name
            self.round_info.say(f"{self.score_text()}\n{event.reason.capitalize()}: {event.model_dir.name} saved; "
                                "relabelling near your corrections first…")

    def score_text(self) -> str:
        """``Round 2: before 0.410 (learned 0.2, kept 0.6) → best 0.530 (…)`` as far as the job got."""
        def score(event: Validation | None) -> str:
            return "…" if event is None else f"{event.score:.3f}{parts_text(event.metrics)}"

        text = f"Round {self.round}: before {score(self.before)} → best {score(self.after)}"
        if self.after is not None and self.after.iteration == 0 and self.before is not None:
            text += " (so far no step beat the parent: the version keeps the parent's weights)"
        return text

    def _on_train_error(self, error: BaseException) -> None:
        text = str(error) if isinstance(error, (ConfigError, ChildDied)) else f"{type(error).__name__}: {error}"
        self.round_info.say(f"Round {self.round} failed: {text}", error=True)

    def _on_train_finished(self) -> None:
        if self.worker is not None:
            self._running_stops.discard(self.worker.stop_event)
        self.worker = None
        if self.trained is not None and self._usable() and self.image in self.viewer.layers:
            record = ModelStore(self.models_dir()).record(self.trained)
            if record.kept_parent:
                self._kept_parent(record)
            else:
                self.relabel(self.trained)
        self._update_retrain()

    def _kept_parent(self, record: ModelRecord) -> None:
        """A version that kept its parent's weights (no step beat them on what it held out) labels the stack as
        the layer is labelled already: nothing to relabel or rank again, so the user waits for nothing more; the
        next round continues it, on all corrections so far."""
        kept = self.layer.metadata.get(AUTO_LABEL_KEY)
        if isinstance(kept, dict):
            kept.update(model=record.name)
        self.record, self.trained = record, None
        self.round_info.say(f"{self.score_text()}\n{record.name} saved with {record.parent}'s weights: your labels "
                            f"stand, nothing to relabel. Keep correcting, then Retrain for round "
                            f"{round_number(record)}.")

    # ----- relabelling --------------------------------------------------------------------------------------------
    def relabel(self, model: str) -> bool:
        """Label the layer again with ``model``: near the corrections and the next entries first, then the whole
        stack, each part merged as it comes (``_on_relabelled``); False if a relabelling is running already."""
        if self.relabelling is not None or not self._usable() or self.image is None:
            return False
        record = ModelStore(self.models_dir()).record(model)
        self.trained = model  # the version the layer's model labels will be, once it is done
        labels = np.asarray(self.layer.data)
        upcoming = [e.id for e in self.entries[self.position + 1:self.position + 1 + NEXT_RELABELLED_FIRST]]
        regions = round_regions(_stack3(labels).shape, _stack3(self.reviewed), _stack3(labels), upcoming,
                                record.window, overlap=_overlap(self.options))
        folder = JobFolder()
        image = folder.stage("image", level0(self.image))
        options = [*self.options, "--block-voxels", str(int(self.block_voxels))]
        stop = threading.Event()
        worker = create_worker(relabel_in_child, model, image, regions, options, models_dir=self.models_dir(),
                               stop=stop, _start_thread=False, _ignore_errors=True, _worker_class=StoppableWorker)
        worker.stop_event = stop
        self._running_stops.add(stop)
        target = self.layer
        worker.yielded.connect(lambda event: self._on_relabelled(event, target, record))
        worker.errored.connect(self._on_relabel_error)
        worker.finished.connect(lambda: self._on_relabel_finished(folder))
        self.relabelling, self._near, self._doubt = worker, (), None
        self._update_retrain()
        worker.start()
        return True

    def _on_relabelled(self, event: Any, target: Labels, record: ModelRecord) -> None:
        """Merge a part into the layer, on napari's thread, around the reviewed voxels as they are now (edits made
        while the round ran included)."""
        if not isinstance(event, Relabelled) or target is not self.layer or not self._usable():
            return
        data = self.layer.data
        current = np.asarray(data)
        view, reviewed = _stack3(current), _stack3(self.reviewed)
        new = np.asarray(event.labels).reshape(view.shape)
        if event.uncertainty is not None:
            if self._doubt is None or self._doubt.shape != view.shape:
                self._doubt = np.zeros(view.shape, np.float32)
            doubt = np.asarray(event.uncertainty, np.float32).reshape(view.shape)
            for core in event.cores:
                where = tuple(slice(a, b) for a, b in core)
                self._doubt[where] = doubt[where]
        # New ids start above every id in the layer (the near part's included): a reviewed voxel keeps its id,
        # and no new object shares it.
        merge_relabelled(view, new, event.cores, reviewed)
        if not event.whole:
            self._near = event.cores
        if current is not data:  # a result on disk: write the merged labels back
            data[...] = current
        self.layer.refresh()
        share = sum(np.prod([b - a for a, b in core]) for core in event.cores) / max(view.size, 1)
        part = "the whole stack" if event.whole else "near your corrections and the next objects"
        self.round_info.say(f"{self.score_text()}\nRelabelled {part} with {record.name} ({len(event.cores)} "
                            f"block(s), {100 * share:.0f}% of the stack)"
                            + ("; the whole stack in the background…" if not event.whole else "."))
        self.relabelled.emit(event.whole)

    def _on_relabel_error(self, error: BaseException) -> None:
        text = str(error) if isinstance(error, (ConfigError, ChildDied)) else f"{type(error).__name__}: {error}"
        self.round_info.say(f"Round {self.round}: relabelling failed: {text}", error=True)

    def _on_relabel_finished(self, folder: JobFolder) -> None:
        """The round is over: the layer's model labels are the new version's (so the next round's corrections are
        told from them), and the next round continues that version, on all corrections so far."""
        folder.close()
        if self.relabelling is not None:
            self._running_stops.discard(self.relabelling.stop_event)
        self.relabelling = None
        if self._usable() and self.trained is not None and self._near:
            kept = self.layer.metadata.get(AUTO_LABEL_KEY)
            fresh = auto_label_metadata(self.trained, self.layer.name, self.layer.data)[AUTO_LABEL_KEY]
            if isinstance(kept, dict):
                kept.update(model=fresh["model"], labels=fresh["labels"])
            self.record = ModelStore(self.models_dir()).record(self.trained)
            self.round_info.say(f"{self.round_info.text()}\nRound {self.round} done: keep correcting, then "
                                f"Retrain for round {round_number(self.record)}.")
            self.requeue()
        self.trained = None
        self._update_retrain()

    def requeue(self) -> bool:
        """Rank the relabelled layer's objects again, as a new result's queue, in a thread: the old queue's ids
        and reasons are the old version's. Objects the user reviewed already stay out of it. False if there is
        no uncertainty of the new version to rank by."""
        if self._doubt is None or self.record is None or self.image is None or not self._usable():
            return False
        labels = np.array(self.layer.data)  # a copy: the user goes on painting meanwhile
        doubt, self._doubt = self._doubt.reshape(labels.shape), None
        reviewed = self.reviewed
        worker = create_worker(_next_entries, self.record, labels, level0(self.image), doubt,
                               None if reviewed is None else reviewed.copy(), _start_thread=False)
        target = self.layer
        worker.returned.connect(lambda entries: self._on_requeued(entries, target))
        worker.errored.connect(lambda error: self.round_info.say(f"The new queue failed: {error}", error=True))
        worker.finished.connect(lambda: setattr(self, "requeueing", None))
        self.requeueing = worker
        self.info.setText(f"{self.info.text()} (ranking the relabelled objects…)")
        worker.start()
        return True

    def _on_requeued(self, entries: list[Entry], target: Labels) -> None:
        if target is not self.layer or not self._usable():
            return
        self.entries, self.position = entries, -1
        for button in (self.next_button, self.accept_button, self.erase_button):
            button.setEnabled(bool(entries))
        self.info.setText(f"{len(entries)} objects queued by {self.record.name if self.record else 'the model'}"
                          if entries else "no objects left to review")
        self.requeued.emit(len(entries))

    def _update_retrain(self) -> None:
        self.retrain_button.setEnabled(self.worker is None and self.relabelling is None and self.record is not None
                                       and self.image is not None and self.corrected)


def _edit_key(item: Any) -> frozenset[int]:
    """One napari history item, whichever of its queues it is in (undo moves the same atoms, reversed)."""
    return frozenset(id(atom) for atom in item)


def _overlap(options: list[str]) -> float:
    """The window overlap of the ``predict`` options a result was labelled with (``label_widget.predict_options``),
    which sizes a round's first part: its budget is a share of a whole labelling's windows."""
    if "--overlap" in options[:-1]:
        return float(options[options.index("--overlap") + 1])
    return float(LabelSettings.overlap)


def _stack3(array: np.ndarray | None) -> np.ndarray | None:
    """A (Y, X) array as one slice of a stack (a view), so 2D and 3D layers merge alike."""
    return array if array is None or array.ndim == 3 else array[np.newaxis]
