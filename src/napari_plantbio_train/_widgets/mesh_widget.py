"""The dock widget that turns a 3D Labels layer into surface meshes: shown as a Surface layer, or exported.

The layer's scale (z, y, x) is read as the voxel size in nm, so vertices come out in nm and the Surface layer
gets scale 1 and the labels' translate, overlaying the labels exactly. Meshing runs in the GUI thread (about
60 ms for a 190,000-voxel chloroplast, 2 s for a whole 10 x 2341 x 2195 stack of 62). Problems are shown in
the dock, never raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels, Surface
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QFormLayout, QPushButton, QSpinBox, QVBoxLayout, QWidget

from ..job.voxels import voxel_size_from_scale
from ..tools.meshes import FORMATS, Mesh, combine, export_meshes, object_meshes
from .common import StatusLine
from .layer_picker import follow_layers, layer_choice, level0, reset_keeping_pick

if TYPE_CHECKING:
    import napari



class MeshWidget(QWidget):
    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.labels_picker = layer_choice(napari_viewer, Labels)
        self.smoothing = QSpinBox()
        self.smoothing.setRange(0, 200)
        self.smoothing.setValue(10)
        self.smoothing.setToolTip("Taubin smoothing passes: removes the voxel staircase, keeps the volume")
        self.show_button = QPushButton("Show as surface")
        self.show_button.clicked.connect(lambda: self.show_surface())
        self.format = QComboBox()
        self.format.addItems([fmt.upper() for fmt in FORMATS])
        self.per_object = QCheckBox("one file per object")
        self.per_object.setChecked(True)
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(lambda: self.export())
        self.status = StatusLine()

        form = QFormLayout()
        form.addRow("Labels", self.labels_picker.native)
        form.addRow("Smoothing iterations", self.smoothing)
        form.addRow("Format", self.format)
        form.addRow("", self.per_object)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.show_button)
        layout.addWidget(self.export_button)
        layout.addWidget(self.status)
        layout.addStretch(1)
        follow_layers(napari_viewer, self)

    def reset_choices(self, *_args: object) -> None:
        """The picker re-reads the viewer's layers (``follow_layers`` calls it on each change of the list)."""
        reset_keeping_pick(self.labels_picker)

    def _stack(self) -> tuple[Labels, np.ndarray] | None:
        layer = self.labels_picker.value
        if layer is None:
            self._set_status("Pick a Labels layer (open or paint one first).", error=True)
            return None
        data = np.asarray(level0(layer))
        if data.ndim != 3:
            self._set_status(f"{layer.name!r} is {data.ndim}D: surface meshes need a 3D stack (z, y, x).",
                             error=True)
            return None
        return layer, data

    def meshes(self) -> dict[int, Mesh] | None:
        """Meshes of the picked layer's objects in nm, or None (and why, in the status line)."""
        if (picked := self._stack()) is None:
            return None
        layer, data = picked
        try:
            meshes = object_meshes(data, voxel_size_from_scale(layer.scale), self.smoothing.value())
        except (ValueError, RuntimeError, MemoryError) as error:
            self._set_status(f"Could not mesh {layer.name!r}: {error}", error=True)
            return None
        if not meshes:
            self._set_status(f"{layer.name!r} has no objects to mesh.", error=True)
            return None
        return meshes

    def show_surface(self) -> Surface | None:
        """Add (or refresh) the Surface layer '<labels name> surfaces', coloured like the labels."""
        meshes = self.meshes()
        if meshes is None:
            return None
        labels = self.labels_picker.value
        vertices, faces, values = combine(meshes)
        colors = labels.colormap.map(values.astype(np.int64))
        name = f"{labels.name} surfaces"
        translate = tuple(labels.translate[-3:])
        existing = self.viewer.layers[name] if name in self.viewer.layers else None
        if isinstance(existing, Surface):
            existing.vertex_colors = None  # colours for the old vertices would not fit the new ones
            existing.data = (vertices, faces, values)
            existing.vertex_colors = colors
            existing.translate = translate
            surface = existing
        else:
            surface = self.viewer.add_surface((vertices, faces, values), name=name, scale=(1, 1, 1),
                                              translate=translate, vertex_colors=colors)
        self._set_status(f"{len(meshes)} objects of {labels.name!r}: {len(vertices)} vertices, "
                         f"{len(faces)} triangles (nm).")
        return surface

    def export(self, path: str | Path | None = None, fmt: str | None = None,
               per_object: bool | None = None) -> list[Path] | None:
        """Write the meshes (in nm, x/y/z order) to ``path``, or where a dialog says; the files, or None."""
        fmt = (fmt or self.format.currentText()).lower()
        per_object = self.per_object.isChecked() if per_object is None else per_object
        if fmt.lstrip(".") not in FORMATS:
            self._set_status(f"Unknown mesh format {fmt!r}; choose one of {', '.join(FORMATS)}.", error=True)
            return None
        if self._stack() is None:
            return None
        path = path or self._ask_path(fmt, per_object)
        if path is None or (meshes := self.meshes()) is None:
            return None
        try:
            written = export_meshes(meshes, path, fmt, per_object)
        except (ValueError, OSError) as error:
            self._set_status(f"Could not write the meshes to {path}: {error}", error=True)
            return None
        where = Path(path) if per_object else written[0]
        self._set_status(f"{len(meshes)} objects written as {len(written)} {fmt.upper()} file(s) to {where}.")
        return written

    def _ask_path(self, fmt: str, per_object: bool) -> Path | None:
        name = self.labels_picker.value.name
        if per_object:
            chosen = QFileDialog.getExistingDirectory(self, "Folder for one mesh file per object", str(Path.cwd()))
        else:
            chosen, _ = QFileDialog.getSaveFileName(self, "Export meshes", str(Path.cwd() / f"{name}.{fmt}"),
                                                    f"{fmt.upper()} files (*.{fmt})")
        return Path(chosen) if chosen else None

    def _set_status(self, text: str, *, error: bool = False) -> None:
        self.status.say(text, error=error)
