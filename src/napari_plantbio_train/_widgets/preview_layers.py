"""The two layers a preview is shown in (its foreground map and its labels), reused from one preview to the next.

Both previews of the training dock (the held-out block's, train_widget.py; where the user looks, view_preview.py)
show the same way: napari needs 70-600 ms to create a layer (its controls, its visual), which, done as a preview
arrives, freezes the viewer mid-training. So the layers are created hidden and one voxel big when the job starts,
while the user expects the click to take a moment; a preview then only swaps data in (the labels a turn of the
event loop after the map, so input waiting between them is handled) and shows each layer once.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

KINDS = ("probabilities", "labels")


class PreviewLayers:
    """One preview's layers, named ``<model> <what> probabilities`` and ``<model> <what> labels``."""

    def __init__(self, viewer: napari.viewer.Viewer, what: str, colormap: str) -> None:
        self.viewer, self.what, self.colormap = viewer, what, colormap
        self.layers: dict[str, Layer] = {}
        self._unfilled: set[str] = set()  # created as placeholders, not yet given a preview
        self._name = "model"
        viewer.layers.events.removed.connect(self._on_removed)

    def prepare(self, name: str, ndim: int, scale: np.ndarray, translate: np.ndarray) -> None:
        """A job of model ``name`` starts: its layers exist (hidden placeholders) before its first preview; a new
        model gets new layers, the same model again keeps its last previews until new ones arrive."""
        if name != self._name:
            self.layers, self._name = {}, name
        if all(self.layers.get(kind) in self.viewer.layers for kind in KINDS):
            self._unfilled = set()
            return
        for kind, dtype in zip(KINDS, (np.float32, np.uint32)):
            self.update(kind, np.zeros((1,) * ndim, dtype), scale, translate, visible=False)
        self._unfilled = {kind for kind, layer in self.layers.items() if layer.data.size == 1}

    def show(self, foreground: np.ndarray, labels: np.ndarray, scale: np.ndarray, translate: np.ndarray,
             stop: threading.Event) -> None:
        """A preview's map now and its labels in the next turn of the event loop (unless the job was stopped
        meanwhile: the dock or the viewer may be closing)."""
        self.update("probabilities", foreground, scale, translate)
        QTimer.singleShot(0, lambda: None if stop.is_set() else self.update("labels", labels, scale, translate))

    def update(self, kind: str, data: np.ndarray, scale: np.ndarray, translate: np.ndarray,
               visible: bool = True) -> None:
        """Swap ``data`` into the layer, so the user's contrast, colour and visibility stick; each assignment
        redraws, so the placement is set only when it moved (a new job, or the view preview following the view)."""
        layer = self.layers.get(kind)
        if layer is not None and layer in self.viewer.layers:
            if not (np.array_equal(layer.scale, scale) and np.array_equal(layer.translate, translate)):
                layer.scale, layer.translate = scale, translate
            layer.data = data
            if kind in self._unfilled and data.size > 1:  # a placeholder's first real preview: show it once
                self._unfilled.discard(kind)
                layer.visible = True
            return
        where: dict[str, Any] = dict(name=f"{self._name} {self.what} {kind}", scale=scale, translate=translate,
                                     visible=visible)
        if kind == "labels":
            self.layers[kind] = self.viewer.add_labels(data, opacity=0.45, **where)
        else:
            self.layers[kind] = self.viewer.add_image(data, colormap=self.colormap, blending="additive",
                                                      contrast_limits=(0.0, 1.0), opacity=0.6, **where)

    def remove_unfilled(self) -> None:
        """A job that ended before its first preview leaves no empty layers behind."""
        for kind in list(self._unfilled):
            layer = self.layers.pop(kind, None)
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._unfilled = set()

    def _on_removed(self, event: Any) -> None:
        for kind, layer in list(self.layers.items()):
            if layer is event.value:
                del self.layers[kind]
