"""The dock widget that scores a segmentation layer against a ground-truth layer and exports the numbers.

It only reads the two layers and the choices, calls ``evaluate`` and ``object_statistics`` (fast enough to run
in the GUI thread), and shows or writes what they return. Problems are shown in the dock, never raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (QAbstractItemView, QCheckBox, QComboBox, QFileDialog, QFormLayout, QHeaderView, QLabel,
                            QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from ..evaluation.evaluate import (evaluate, format_score, object_statistics, write_object_statistics_csv,
                                   write_scores_csv)
from ..job.voxels import voxel_size_from_scale
from .common import StatusLine
from .layer_picker import follow_layers, layer_choice, level0, reset_keeping_pick

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer



class EvaluateWidget(QWidget):
    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.result_picker = layer_choice(napari_viewer, Labels)
        self.truth_picker = layer_choice(napari_viewer, Labels)
        self.mode = QComboBox()
        self.mode.addItems(["instance", "semantic"])
        self.per_slice = QCheckBox("per slice (2D)")
        self.per_slice.setToolTip("Match objects within each slice, for a 2D model whose ids change between slices")
        # Pixel scores are the same slice by slice or whole, so the choice only exists for objects.
        self.mode.currentTextChanged.connect(lambda mode: self.per_slice.setEnabled(mode == "instance"))
        self.voxel_label = QLabel()
        self.result_picker.changed.connect(self._show_voxel_size)

        self.evaluate_button = QPushButton("Evaluate")
        self.evaluate_button.clicked.connect(lambda: self.evaluate())
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["metric", "value"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.export_scores_button = QPushButton("Export scores CSV…")
        self.export_scores_button.clicked.connect(lambda: self.export_scores())
        self.export_scores_button.setEnabled(False)
        self.export_objects_button = QPushButton("Export object statistics CSV…")
        self.export_objects_button.setToolTip("Size, bounding box and centroid of each object of the result layer")
        self.export_objects_button.clicked.connect(lambda: self.export_object_statistics())
        self.status = StatusLine()

        form = QFormLayout()
        form.addRow("Result", self.result_picker.native)
        form.addRow("Ground truth", self.truth_picker.native)
        form.addRow("Mode", self.mode)
        form.addRow("", self.per_slice)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.evaluate_button)
        layout.addWidget(self.table, stretch=1)
        layout.addWidget(self.export_scores_button)
        layout.addWidget(self.voxel_label)
        layout.addWidget(self.export_objects_button)
        layout.addWidget(self.status)

        self.scores: dict[str, float] | None = None
        follow_layers(napari_viewer, self)
        self._show_voxel_size()

    def reset_choices(self, *_args: Any) -> None:
        """The pickers re-read the viewer's layers (``follow_layers`` calls it on each change of the list)."""
        reset_keeping_pick(self.result_picker, self.truth_picker)

    def evaluate(self) -> dict[str, float] | None:
        """Score the result layer against the ground truth and show the scores; None (and why) if it cannot."""
        self._show_scores(None)
        result, truth = self.result_picker.value, self.truth_picker.value
        if result is None or truth is None:
            self._set_status("Pick a result and a ground-truth Labels layer (open or paint them first).", error=True)
            return None
        mode, per_slice = self.mode.currentText(), self.per_slice.isChecked() and self.per_slice.isEnabled()
        try:
            scores = evaluate(np.asarray(level0(result)), np.asarray(level0(truth)), mode, per_slice=per_slice)
        except ValueError as error:
            self._set_status(f"Cannot score {result.name!r} against {truth.name!r}: {error}", error=True)
            return None
        self._show_scores(scores)
        how = f"{mode}{', per slice' if per_slice else ''}"
        self._set_status(f"Scored {result.name!r} against {truth.name!r} ({how}).")
        return scores

    def table_rows(self) -> list[tuple[str, str]]:
        """The table as shown: (metric, formatted value) pairs."""
        return [(self.table.item(row, 0).text(), self.table.item(row, 1).text())
                for row in range(self.table.rowCount())]

    def export_scores(self, path: str | Path | None = None) -> Path | None:
        """Write the last scores as CSV to ``path``, or where a file dialog says; the path written, or None."""
        if self.scores is None:
            self._set_status("Evaluate first: there are no scores to export.", error=True)
            return None
        result = self.result_picker.value
        path = path or self._ask_path("Export scores", f"{result.name if result else 'result'} scores.csv")
        if path is None:
            return None
        try:
            write_scores_csv(self.scores, path)
        except OSError as error:
            self._set_status(f"Could not write {path}: {error}", error=True)
            return None
        self._set_status(f"Scores written to {path}.")
        return Path(path)

    def export_object_statistics(self, path: str | Path | None = None) -> Path | None:
        """Measure every object of the result layer and write one CSV line per object; the path, or None."""
        layer = self.result_picker.value
        if layer is None:
            self._set_status("Pick a result Labels layer to measure.", error=True)
            return None
        path = path or self._ask_path("Export object statistics", f"{layer.name} objects.csv")
        if path is None:
            return None
        try:
            rows = object_statistics(np.asarray(level0(layer)), voxel_size_nm(layer))
            write_object_statistics_csv(rows, path)
        except (ValueError, OSError) as error:
            self._set_status(f"Could not export the objects of {layer.name!r}: {error}", error=True)
            return None
        self._set_status(f"{len(rows)} objects of {layer.name!r} written to {path}.")
        return Path(path)

    def _show_scores(self, scores: dict[str, float] | None) -> None:
        """A failed evaluation clears the table, so old numbers are never read as the new pair's."""
        self.scores = scores
        items = list(scores.items()) if scores else []
        self.table.setRowCount(len(items))
        for row, (name, value) in enumerate(items):
            shown = QTableWidgetItem(format_score(value))
            shown.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            shown.setToolTip(repr(value))
            self.table.setItem(row, 0, QTableWidgetItem(name))
            self.table.setItem(row, 1, shown)
        self.export_scores_button.setEnabled(scores is not None)

    def _show_voxel_size(self, *_args: Any) -> None:
        layer = self.result_picker.value
        if layer is None:
            self.voxel_label.setText("Voxel size: pick a result layer")
            return
        x, y, z = voxel_size_nm(layer)
        sizes = f"x {x:g} · y {y:g}" + (f" · z {z:g}" if layer.ndim >= 3 else "")
        self.voxel_label.setText(f"Voxel size (the layer's scale, read as nm): {sizes}")

    def _ask_path(self, title: str, name: str) -> Path | None:
        chosen, _ = QFileDialog.getSaveFileName(self, title, str(Path.cwd() / name), "CSV files (*.csv)")
        if not chosen:
            return None
        path = Path(chosen)
        return path if path.suffix else path.with_suffix(".csv")

    def _set_status(self, text: str, *, error: bool = False) -> None:
        self.status.say(text, error=error)


def voxel_size_nm(layer: Layer) -> tuple[float, float, float]:
    """(x, y, z) from napari's (…, z, y, x) scale, which this package takes to be nm; a 2D layer gets z = 1."""
    return voxel_size_from_scale(layer.scale)

