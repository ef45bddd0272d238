"""Export and Import buttons under the auto-label dock's model list (bioimage.io packages, see exchange.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QPushButton, QWidget

from ..models.exchange import export_model, import_model
from ..models.store import ModelError, ModelStore


class ModelSharing(QWidget):
    """Buttons only: the packaging and every safety check live in exchange.py, shared with the CLI."""

    def __init__(self, store: ModelStore, selected: Callable[[], str | None], refresh: Callable[[], object],
                 report: Callable[..., None], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.store, self._selected, self._refresh, self._report = store, selected, refresh, report
        self.export_button, self.import_button = QPushButton("Export…"), QPushButton("Import…")
        self.export_button.setToolTip("Save the chosen model as a bioimage.io package (.zip) for a colleague")
        self.import_button.setToolTip("Add a model package (.zip) or model folder to the list")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.export_button)
        layout.addWidget(self.import_button)
        self.export_button.clicked.connect(lambda: self.export_to())
        self.import_button.clicked.connect(lambda: self.import_from())

    def export_to(self, path: str | Path | None = None) -> Path | None:
        name = self._selected()
        if name is None:
            self._report("Pick a model to export.", error=True)
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export model", f"{name}.zip", "Model package (*.zip)")
            if not path:
                return None
        try:
            written = export_model(self.store, name, Path(path))
        except (ModelError, OSError, ValueError) as exc:
            self._report(f"Export failed: {exc}", error=True)
            return None
        self._report(f"Exported {name!r} to {written}.")
        return Path(written)

    def import_from(self, path: str | Path | None = None, name: str | None = None) -> str | None:
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Import model", "", "Model package (*.zip)")
            if not path:
                return None
        try:
            imported = import_model(self.store, Path(path), name=name)
        except (ModelError, OSError, ValueError) as exc:
            self._report(f"Import failed: {exc}", error=True)
            return None
        self._refresh()
        self._report(f"Imported model {imported!r}.")
        return imported
