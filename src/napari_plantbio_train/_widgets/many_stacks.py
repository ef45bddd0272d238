"""What a many-stack auto-label job labels: the image layers the user picks, or the stacks of a folder.

Only fields and the whole job's progress bar; the auto-label dock runs the job (one child, ``predict --image A
--image B --output-dir``) and shows each stack's progress on its own bar.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Select
from napari.layers import Image
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QGroupBox, QLineEdit, QProgressBar,
                            QPushButton, QWidget)

from ..inference.many import stacks_in_folder
from .common import row
from .layer_picker import follow_layers

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

LAYERS, FOLDER = "the image layers picked", "the stacks of a folder"


class ManyStacks(QGroupBox):
    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__("Many stacks in one job", parent)
        self.viewer = viewer
        self.source = QComboBox()
        self.source.addItems([LAYERS, FOLDER])
        # magicgui's multi-select, its choices the viewer's grey image layers, kept in step with the layer list.
        self.layers = Select(choices=self._image_choices)
        self.layers.native.setMinimumHeight(60)
        self.folder, self.pattern = QLineEdit(placeholderText="folder of stacks"), QLineEdit("*.tif")
        self.folder_button = QPushButton("Browse…")
        self.output = QLineEdit(placeholderText="beside the inputs")
        self.overwrite = QCheckBox("replace results of an earlier job")
        self.label_button = QPushButton("Label all")
        self.overall = QProgressBar(format="idle", value=0)
        form = QFormLayout(self)
        form.addRow("Label", self.source)
        form.addRow("Image layers", self.layers.native)
        form.addRow("Folder", row(self.folder, self.folder_button))
        form.addRow("Stacks matching", self.pattern)
        form.addRow("Results into", self.output)
        form.addRow(self.overwrite)
        form.addRow(self.label_button)
        form.addRow("All stacks", self.overall)
        self._form = form
        self.source.currentIndexChanged.connect(self._show_fields)
        self.folder_button.clicked.connect(self._browse)
        follow_layers(viewer, self)
        self._show_fields()

    @property
    def from_folder(self) -> bool:
        return self.source.currentText() == FOLDER

    def picked(self) -> list[Layer]:
        """The image layers picked, in the viewer's order."""
        chosen = self.layers.value or []
        return [layer for layer in self.viewer.layers if any(layer is c for c in chosen)]

    def pick(self, layers: list[Layer]) -> None:
        self.source.setCurrentText(LAYERS)
        self.layers.value = layers

    def folder_stacks(self) -> list[str]:
        """The folder's stacks; a ``ConfigError`` naming the field when there are none."""
        from ..job.config import ConfigError

        if not self.folder.text().strip():
            raise ConfigError("folder", "pick the folder whose stacks to label")
        return stacks_in_folder(self.folder.text().strip(), self.pattern.text().strip() or "*")

    def output_dir(self) -> Path:
        """Where a folder's results go: the output field, or the folder itself (named NAME_labels.tif there)."""
        return Path(self.output.text().strip() or self.folder.text().strip())

    def _image_choices(self, *_args: Any) -> list[tuple[str, Layer]]:
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, Image) and not layer.rgb and layer.ndim in (2, 3)]

    def reset_choices(self, *_args: Any) -> None:
        """The multi-select re-reads the viewer's layers (``follow_layers`` calls it on each change of the list)."""
        self.layers.reset_choices()

    def _show_fields(self, *_args: Any) -> None:
        folder = self.from_folder
        for field, shown in ((self.layers.native, not folder), (self.folder.parentWidget(), folder),
                             (self.pattern, folder), (self.output, folder), (self.overwrite, folder)):
            field.setVisible(shown)
            label = self._form.labelForField(field)
            if label is not None:
                label.setVisible(shown)

    def _browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "Folder of stacks", self.folder.text())
        if chosen:
            self.folder.setText(chosen)
