"""The training dock's view preview: tell the job where the user looks, and show what it predicted there.

The job does the work (training/view.py, in its own process or thread); this row only writes the request file
into the model folder, debounced, when the viewer's slice or centre moves and when "Preview here" is pressed, and
swaps the arrays of a ``ViewPreview`` event into two layers placed like the image. Nothing here computes or
waits, so the event loop never stalls on a prediction.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QWidget

from ..job.events import Preview, ViewPreview
from ..training.view import ViewRequest, write_view_request
from .common import camera_of
from .preview_layers import PreviewLayers

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

DEBOUNCE_MS = 200  # a slider drag writes one request when it pauses, not one per slice


def view_request(viewer: napari.viewer.Viewer, image: Layer, asked: int, live: bool = True) -> ViewRequest:
    """Where the viewer looks, in voxels of ``image``: its current slice and the camera's centre."""
    point = np.asarray(viewer.dims.point, float)
    point[-2:] = np.asarray(camera_of(viewer).center, float)[-2:]
    data = np.asarray(image.world_to_data(point), float)
    z = int(round(data[-3])) if data.size >= 3 else 0
    return ViewRequest(z, float(data[-2]), float(data[-1]), asked, live)


def placed_preview(event: Preview | ViewPreview, placement: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A preview's foreground map and labels as layers of the image's dimensions, and their translate, so they lie
    exactly over the part of the image they were predicted from (``placement``: train_widget.Placement)."""
    probabilities = event.probabilities
    foreground = probabilities[0] if event.channel_names[:1] == ("foreground",) else 1.0 - probabilities[0]
    labels, offset = event.labels, np.asarray(event.offset, float)
    if placement.ndim == 2:  # the engine speaks (Z, Y, X); a 2D layer has no Z
        foreground, labels, offset = foreground[0], labels[0], offset[1:]
    return foreground.astype(np.float32, copy=False), labels, placement.translate + offset * placement.scale


class ViewPreviewRow(QWidget):
    """"Preview here" and what the last view preview cost; owns the two view preview layers."""

    def __init__(self, viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.button = QPushButton("Preview here")
        self.button.setToolTip("Predict the slices you are looking at with the weights of this moment (also done "
                               "at each validation)")
        self.button.setEnabled(False)
        self.button.clicked.connect(self.ask)
        # ilastik's "live update": on by default; off, the job predicts here only when asked (full training speed).
        self.live = QCheckBox("at each validation")
        self.live.setChecked(True)
        self.live.setToolTip("Also predict where you look at each validation (bounded to about a tenth of the "
                             "training time); off: only when you press Preview here")
        self.live.toggled.connect(lambda *_: self._write())
        self.label = QLabel()
        self.label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.button)
        layout.addWidget(self.live)
        layout.addWidget(self.label, stretch=1)

        self.previews = PreviewLayers(viewer, "view", "viridis")  # preview_layers.py
        self.last: ViewPreview | None = None
        self._image: Layer | None = None
        self._placement: Any = None  # train_widget.Placement of the running job
        self._folder: Path | None = None
        self._stop: threading.Event | None = None
        self._asked = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(DEBOUNCE_MS)
        self._timer.timeout.connect(self._write)
        viewer.dims.events.current_step.connect(self._moved)
        camera_of(viewer).events.center.connect(self._moved)

    # ----- the job's life, called by the dock ---------------------------------------------------------------------
    def begin(self, image: Layer, placement: Any, name: str, stop: threading.Event) -> None:
        """A job starts on ``image`` (GUI thread): its requests wait for the model folder (``started``)."""
        self._image, self._placement, self._stop = image, placement, stop
        self.previews.prepare(name, placement.ndim, placement.scale, placement.translate)
        self._folder, self._asked, self.last = None, 0, None
        self.label.setText("")

    def started(self, model_dir: Path) -> None:
        self._folder = Path(model_dir)
        self.button.setEnabled(True)
        self._write()

    def end(self) -> None:
        self._timer.stop()
        self._folder = self._image = None
        self.button.setEnabled(False)
        self.previews.remove_unfilled()

    # ----- requests -------------------------------------------------------------------------------------------
    def ask(self) -> None:
        """"Preview here": the job answers between two iterations."""
        self._asked += 1
        self._write()

    def _moved(self, *_args: Any) -> None:
        if self._folder is not None:
            self._timer.start()

    def _write(self) -> None:
        self._timer.stop()
        if self._folder is None or self._image is None or self._image not in self.viewer.layers:
            return
        write_view_request(self._folder, view_request(self.viewer, self._image, self._asked, self.live.isChecked()))

    # ----- showing ----------------------------------------------------------------------------------------------
    def show(self, event: ViewPreview) -> None:
        """The prediction over the part of the image it was predicted from, in two reused layers."""
        self.last = event
        placement = self._placement
        if placement is None or self._stop is None or self._stop.is_set():
            return  # once stopping (dock or viewer closing), a late preview must not add layers to a dead window
        foreground, labels, translate = placed_preview(event, placement)
        (z0, z1), (y0, y1), (x0, x1) = ((a, a + n) for a, n in zip(event.offset, event.labels.shape))
        slices = f"slice {z0}" if z1 - z0 == 1 else f"slices {z0}-{z1 - 1}"
        self.label.setText(f"View at iteration {event.iteration}: {slices}, {y1 - y0}×{x1 - x0} in "
                           f"{event.seconds:.2f} s")
        self.previews.show(foreground, labels, placement.scale, translate, self._stop)
