"""What every dock shares: the colours of an error and a warning, the status line, the stoppable worker, and
row/column holders for forms. Qt only; nothing here computes."""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from enum import Enum
from typing import Any

from napari.qt.threading import GeneratorWorker
from psygnal import Signal, SignalInstance
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from .settings import DockSettings

ERROR_STYLE = "color: #ff5c5c;"
WARNING_STYLE = "color: #f0b429;"


class StatusLine(QLabel):
    """A dock's one line of news: wrapped, selectable (so an error can be copied), red for an error."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

    def say(self, text: str, *, error: bool = False) -> None:
        self.setStyleSheet(ERROR_STYLE if error else "")
        self.setText(text)


class StoppableWorker(GeneratorWorker):
    """napari's task manager calls ``quit`` (its cancel button, closing the viewer): for a job that must mean
    "stop at the next step" (training saves a checkpoint, labelling shuts its block pool down), not dropping the
    generator between two events."""

    stop_event: threading.Event

    def quit(self) -> None:
        self.stop_event.set()


def stops_on_destroy(widget: QObject) -> set[threading.Event]:
    """The stop events of a dock's running jobs, all set when the dock is deleted (its window closed, napari
    quitting): a job then ends its child and its thread instead of outliving the Qt objects it reports to. The
    set is read by a closure, never through the widget, which is half gone by then."""
    stops: set[threading.Event] = set()

    def set_all(*_: Any) -> None:
        for stop in list(stops):
            stop.set()

    widget.destroyed.connect(set_all)
    return stops


def error_label() -> QLabel:
    """A red message under a field, hidden until the field is wrong."""
    label = QLabel()
    label.setWordWrap(True)
    label.setStyleSheet(ERROR_STYLE)
    label.setVisible(False)
    return label


def row(*widgets: QWidget) -> QWidget:
    """Widgets side by side; combo boxes take the spare width."""
    holder = QWidget()
    layout = QHBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget, stretch=1 if isinstance(widget, QComboBox) else 0)
    return holder


def column(*widgets: QWidget) -> QWidget:
    holder = QWidget()
    layout = QVBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.setSpacing(1)
    for widget in widgets:
        layout.addWidget(widget)
    return holder


def follow(signal: SignalInstance, widget: QWidget, method: str) -> None:
    """Call ``widget.method(value)`` on each emission while the widget lives. An evented setting outlives the docks
    that show it: a dock closed (its Qt object deleted) or collected is disconnected at the next emission instead
    of raising inside another dock's change."""
    ref = weakref.ref(widget)

    def call(value: Any) -> None:
        target = ref()
        try:
            if target is None:
                raise RuntimeError("collected")
            target.objectName()  # raises RuntimeError once Qt deleted the widget
        except RuntimeError:
            signal.disconnect(call)
            return
        getattr(target, method)(value)

    signal.connect(call)


def unless_deleted(slot: Callable[..., Any]) -> Callable[..., Any]:
    """A timer's slot that ends quietly when its widget's Qt object is deleted while it runs.

    A dock napari removed belongs to Python, and the garbage collector may delete it at any allocation, also
    inside a slot of its own: matplotlib's draw then raised "wrapped C/C++ object of type FigureCanvasQTAgg has
    been deleted" from the models view (a fresh clone's test run), and outside pytest PyQt6 aborts on that.
    Any other error is raised as before."""

    @functools.wraps(slot)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return slot(*args, **kwargs)
        except RuntimeError as error:
            if "has been deleted" not in str(error):
                raise
            return None

    return guarded


class _WhileShown(QObject):
    def __init__(self, widget: QWidget, timer: QTimer) -> None:
        super().__init__(widget)
        self._timer = timer

    def eventFilter(self, _watched: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Hide:
            self._timer.stop()
        elif event.type() == QEvent.Type.Show and not self._timer.isActive():
            self._timer.start()
        return False


def poll_while_shown(widget: QWidget, timer: QTimer) -> None:
    """Run a widget's polling ``timer`` only while the widget is shown (it starts running, for a widget never
    shown, as in a hidden viewer).

    A dock nobody sees needs no re-reading of the models folder, and a removed one must not: napari's
    ``remove_dock_widget`` hands the dock's widget to Python with no parent, and the garbage collector deleted it
    while its poll was re-reading the folder (benchmarks/widget_responsiveness.py: "wrapped C/C++ object of type
    ContinueFromBox has been deleted" in the slot, and PyQt6 aborted the process). Being removed hides it first.
    """
    widget.installEventFilter(_WhileShown(widget, timer))
    timer.start()


class ModelsFolderField(QWidget):
    """The models folder, the same in every dock: editing it here (Enter, leaving the field, or the browse
    button) changes the one setting, and every dock showing it follows."""

    def __init__(self, settings: DockSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.edit = QLineEdit(str(settings.models_dir))
        self.edit.setToolTip("Folder that holds one sub-folder per trained model; the same for every dock")
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.setToolTip("Choose the models folder")
        browse.clicked.connect(lambda: self.browse())
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit, stretch=1)
        layout.addWidget(browse)
        self.edit.editingFinished.connect(lambda: settings.set_models_dir(self.edit.text()))
        follow(settings.models_dir_changed, self, "_show")

    def browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Models folder", self.edit.text())
        if folder:
            self.settings.set_models_dir(folder)

    def _show(self, folder: Any) -> None:
        if self.edit.text() != str(folder):
            self.edit.setText(str(folder))


class JobState(str, Enum):
    """Where a dock's job is; the dock's buttons and progress bar are drawn from this alone."""

    IDLE = "idle"
    PREPARING = "preparing"  # started: reading, planning, loading the model, launching the child
    RUNNING = "running"  # the engine said it started
    STOPPING = "stopping"  # the user (or a closed dock, a removed layer) asked it to stop
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        return self in (JobState.PREPARING, JobState.RUNNING, JobState.STOPPING)


_ENDS = {JobState.DONE, JobState.STOPPED, JobState.FAILED}
_MOVES = {
    JobState.IDLE: {JobState.PREPARING},
    JobState.PREPARING: {JobState.RUNNING, JobState.STOPPING, *_ENDS},
    JobState.RUNNING: {JobState.STOPPING, *_ENDS},
    JobState.STOPPING: _ENDS,
    **{end: {JobState.PREPARING} for end in _ENDS},
}


class DockState:
    """One evented value per dock (careamics-napari's pattern): the job's state, which the widgets subscribe to,
    instead of each handler setting buttons and guessing the state back from a progress bar. A move the job
    cannot make (done to running) raises: a dock that lost track of its job is a bug to see, not to draw."""

    changed = Signal(object)  # the new JobState

    def __init__(self) -> None:
        self._state = JobState.IDLE

    @property
    def state(self) -> JobState:
        return self._state

    def set(self, state: JobState) -> None:
        if state == self._state:
            return
        if state not in _MOVES[self._state]:
            raise ValueError(f"a job cannot go from {self._state.value} to {state.value}")
        self._state = state
        self.changed.emit(state)


def camera_of(viewer: Any) -> Any:
    """The viewer's camera: ``viewer.scene.camera`` from napari 0.9 on (``viewer.camera`` warns there), the old
    attribute before."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
