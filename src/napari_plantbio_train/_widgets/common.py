"""What every dock shares: the colours of an error and a warning, the status line, the stoppable worker, and
row/column holders for forms. Qt only; nothing here computes."""

from __future__ import annotations

import threading

from napari.qt.threading import GeneratorWorker
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

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
