"""The auto-label dock's "where to look" row: steps through the result's objects, most uncertain first."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from ..inference.uncertainty import RankedObject, rank_objects

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels


class ProofreadQueue(QWidget):
    """Holds the ranking of the last result; Next centres the view on the next object and selects its id, so
    the user can fix it with napari's own tools right away."""

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.ranked: list[RankedObject] = []
        self.position = -1
        self.layer: Labels | None = None
        self.next_button = QPushButton("Next uncertain object", enabled=False)
        self.info = QLabel("")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.next_button)
        layout.addWidget(self.info, stretch=1)
        self.next_button.clicked.connect(lambda: self.next())

    def load(self, layer: Labels, uncertainty: np.ndarray) -> None:
        self.layer, self.position = layer, -1
        self.ranked = rank_objects(np.asarray(layer.data), np.asarray(uncertainty))
        self.next_button.setEnabled(bool(self.ranked))
        self.info.setText(f"{len(self.ranked)} objects ranked by doubt" if self.ranked else "no objects")

    def next(self) -> RankedObject | None:
        if not self.ranked or self.layer is None or self.layer not in self.viewer.layers:
            return None
        self.position = (self.position + 1) % len(self.ranked)
        target = self.ranked[self.position]
        world = np.asarray(target.centroid) * self.layer.scale + self.layer.translate
        self.viewer.camera.center = tuple(world[-3:] if world.size >= 3 else world)
        if world.size == 3:  # show the object's middle section
            self.viewer.dims.set_point(0, float(world[0]))
        self.layer.selected_label = target.id
        self.info.setText(f"{self.position + 1} / {len(self.ranked)}: id {target.id}, doubt {target.uncertainty:.2f}")
        return target
