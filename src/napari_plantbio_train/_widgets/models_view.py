"""The models of the models folder side by side: a table of what each is, their validation curves on one axis
for the ones ticked, and rename/delete with a confirmation. It only shows and asks: the listing, the curves and
the changes are models/catalogue.py's, which refuses a model a training job is writing; ``in_use`` adds the
models the hosting dock's own job is using (a labelling job holds no lock)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (QInputDialog, QMessageBox, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout,
                            QWidget)

from ..job.config import ConfigError
from ..models.catalogue import ModelSummary, delete_model, rename_model, summaries, validation_curve
from ..models.store import ModelStore
from .common import StatusLine, row, unless_deleted

COLUMNS = ("model", "mode", "dims", "voxel size", "iterations", "best score", "parent", "date")


def ask_yes(parent: QWidget, title: str, question: str) -> bool:
    return QMessageBox.question(parent, title, question) == QMessageBox.StandardButton.Yes


def ask_name(parent: QWidget, title: str, current: str) -> str | None:
    text, ok = QInputDialog.getText(parent, title, "New name:", text=current)
    return text.strip() if ok and text.strip() else None


class ModelsView(QWidget):
    """``confirm(title, question)`` and ``new_name(title, current)`` default to dialogs; tests pass answers.
    ``changed`` is called after a rename or delete, so the hosting dock re-lists its models at once."""

    def __init__(self, root: str | Path, *, in_use: Callable[[], set[str]] = set,
                 confirm: Callable[[str, str], bool] | None = None,
                 new_name: Callable[[str, str], str | None] | None = None,
                 changed: Callable[[], object] = lambda: None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store = ModelStore(root)
        self.in_use, self.changed = in_use, changed
        self.confirm = confirm or (lambda title, question: ask_yes(self, title, question))
        self.new_name = new_name or (lambda title, current: ask_name(self, title, current))
        self.rows: list[ModelSummary] = []
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(120)
        self.figure = Figure(figsize=(4.0, 2.4), dpi=90)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.axes = self.figure.add_subplot(111)
        # The curves are drawn on the next turn of the event loop, on a timer this widget owns: matplotlib's
        # draw_idle schedules its own, which fired on a canvas already deleted when a dock closed (a traceback
        # from _draw_idle in the test log).
        self._draw_timer = QTimer(self)
        self._draw_timer.setSingleShot(True)
        self._draw_timer.setInterval(0)
        self._draw_timer.timeout.connect(self._draw)
        self.rename_button, self.delete_button = QPushButton("Rename…"), QPushButton("Delete…")
        self.status = StatusLine()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in (self.table, self.canvas, row(self.rename_button, self.delete_button), self.status):
            layout.addWidget(widget)
        self.table.itemChanged.connect(self._on_item_changed)
        self.rename_button.clicked.connect(lambda: self.rename())
        self.delete_button.clicked.connect(lambda: self.delete())
        self.refresh()

    @unless_deleted
    def _draw(self) -> None:
        self.canvas.draw()

    # ----- what is shown ------------------------------------------------------------------------------------------
    def set_root(self, root: str | Path) -> None:
        self.store = ModelStore(root)
        self.refresh()

    def refresh(self) -> list[str]:
        """Re-read the folder; ticks and the selection stay on models that are still there."""
        ticked, selected = set(self.ticked()), self.selected()
        self.rows = summaries(self.store)
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.rows))
        for i, summary in enumerate(self.rows):
            for j, text in enumerate(_cells(summary)):
                item = QTableWidgetItem(text)
                if j == 0:
                    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                    item.setCheckState(Qt.CheckState.Checked if summary.name in ticked else Qt.CheckState.Unchecked)
                self.table.setItem(i, j, item)
        self.table.blockSignals(False)
        self.table.resizeColumnsToContents()
        if selected is not None:
            self.select(selected) if selected in self.names() else self.table.clearSelection()
        self.plot()
        return self.names()

    def names(self) -> list[str]:
        return [summary.name for summary in self.rows]

    def ticked(self) -> list[str]:
        return [summary.name for i, summary in enumerate(self.rows)
                if self.table.item(i, 0) is not None and self.table.item(i, 0).checkState() == Qt.CheckState.Checked]

    def tick(self, name: str, on: bool = True) -> None:
        self.table.item(self.names().index(name), 0).setCheckState(
            Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def selected(self) -> str | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.rows[rows[0].row()].name if rows and rows[0].row() < len(self.rows) else None

    def select(self, name: str) -> None:
        self.table.selectRow(self.names().index(name))

    def plot(self) -> dict[str, list[tuple[int, float]]]:
        """The ticked models' validation curves on one axis; returns what was drawn, by model."""
        self.axes.clear()
        drawn = {name: validation_curve(self.store, name) for name in self.ticked()}
        for name, points in drawn.items():
            self.axes.plot([i for i, _ in points], [s for _, s in points], marker="o", markersize=3, label=name)
        scores = {summary.score_name for summary in self.rows if summary.name in drawn}
        self.axes.set_xlabel("iteration", fontsize=8)
        self.axes.set_ylabel(" / ".join(sorted(scores)) or "validation score", fontsize=8)
        self.axes.tick_params(labelsize=8)
        if any(drawn.values()):
            self.axes.legend(fontsize=7)
        else:  # never matplotlib's empty -0.04..0.04 axes
            self.axes.set_xlim(0, 1)
            self.axes.set_ylim(0, 1)
            self.axes.text(0.5, 0.5, "tick models to compare their validation curves" if not drawn else
                           "the ticked models logged no validation", transform=self.axes.transAxes,
                           ha="center", va="center", fontsize=8, alpha=0.7)
        self._draw_timer.start()
        return drawn

    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if item.column() == 0:
            self.plot()

    # ----- changes ------------------------------------------------------------------------------------------------
    def delete(self, name: str | None = None) -> bool:
        """Delete the model (the selected one by default) once confirmed; False, and why, when it is not."""
        name = name or self.selected()
        if not self._free(name, "delete"):
            return False
        if not self.confirm("Delete model", f"Delete {name!r} and its checkpoints from {self.store.root}? "
                                            "This cannot be undone."):
            return False
        return self._change(lambda: delete_model(self.store, name), f"Deleted {name!r}.")

    def rename(self, name: str | None = None, new_name: str | None = None) -> bool:
        """Rename the model (asking for the new name unless given); False, and why, when it is not renamed."""
        name = name or self.selected()
        if not self._free(name, "rename"):
            return False
        new_name = new_name or self.new_name("Rename model", name)
        if not new_name or new_name == name:
            return False
        if not self.confirm("Rename model", f"Rename {name!r} to {new_name!r}?"):
            return False
        return self._change(lambda: rename_model(self.store, name, new_name), f"Renamed {name!r} to {new_name!r}.")

    def _free(self, name: str | None, verb: str) -> bool:
        if name is None:
            self.status.say(f"Pick a model in the table to {verb}.", error=True)
            return False
        if name in self.in_use():
            self.status.say(f"Cannot {verb} {name!r}: a job of this dock is using it; wait for it to end.",
                            error=True)
            return False
        return True

    def _change(self, change: Callable[[], Path], done: str) -> bool:
        try:
            change()
        except (ConfigError, OSError) as exc:
            self.status.say(f"{exc}", error=True)
            return False
        self.refresh()
        self.changed()
        self.status.say(done)
        return True


def _cells(summary: ModelSummary) -> tuple[str, ...]:
    voxel = "×".join(f"{v:g}" for v in summary.voxel_size) if summary.voxel_size else "—"
    score = f"{summary.best_score:.3f} ({summary.score_name})" if summary.best_score is not None else "—"
    return (summary.name, summary.mode, summary.dims, voxel, str(summary.iterations), score,
            summary.parent or "—", summary.date)
