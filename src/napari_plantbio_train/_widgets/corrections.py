"""Proofread labels as training data: the auto-label dock keeps the result as the model gave it on the result
layer, and the training dock's "Trust only the regions I corrected" option compares the corrected layer with
it, so the engine can learn from the corrections alone."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSpinBox, QWidget

from ..job.config import ConfigError, TrainConfig

if TYPE_CHECKING:
    from napari.layers import Layer

AUTO_LABEL_KEY = "plantbio_auto_label"


def auto_label_metadata(model: str, name: str, labels: Any, original: Any = None,
                        folder: Any = None) -> dict[str, Any]:
    """Metadata for a new auto-label result layer: its labels before anyone edits them.

    napari paints into the layer's own array, so only a copy taken now still shows what the model said once
    the user has corrected it. An in-memory result is copied here, in the smallest integer type that holds its
    ids (usually a half or a quarter of the result's uint32), since it stays in memory as long as the layer
    does; a result a job process wrote brings its own copy on disk (``original``, a read-only zarr array) and
    the folder holding both (``folder``), removed with the layer.
    """
    if original is None:
        labels = np.asarray(labels)
        dtype = np.min_scalar_type(int(labels.max(initial=0))) if labels.dtype.kind in "iu" else labels.dtype
        original = labels.astype(dtype, copy=True)
    kept = {"model": model, "name": name, "labels": original}
    if folder is not None:
        kept["folder"] = str(folder)
    return {AUTO_LABEL_KEY: kept}


def auto_labels_of(layer: Layer | None) -> tuple[str, Any] | None:
    """(name of the auto-label result, its labels as the model gave them: numpy, or a zarr array on disk), when
    the layer is such a result."""
    kept = getattr(layer, "metadata", {}).get(AUTO_LABEL_KEY) if layer is not None else None
    if not isinstance(kept, dict) or not hasattr(kept.get("labels"), "shape"):
        return None
    return str(kept.get("name") or kept.get("model") or layer.name), kept["labels"]


def results_folder_of(layer: Layer | None) -> str | None:
    """The folder of a child's auto-label result that backs this layer, if any."""
    kept = getattr(layer, "metadata", {}).get(AUTO_LABEL_KEY) if layer is not None else None
    return kept.get("folder") if isinstance(kept, dict) else None


def touched_problems(config: TrainConfig, labels: Layer | None, labels_shape: tuple[int, ...] | None
                     ) -> list[ConfigError]:
    """Why the touched-regions option cannot be used with the picked labels (nothing when it is off)."""
    if not config.touched_only or labels is None:
        return []
    kept = auto_labels_of(labels)
    if kept is None:
        return [ConfigError("touched_only", f"{labels.name!r} is not an auto-label result, so there is nothing to "
                                            "tell your corrections from: pick the auto-label result layer you "
                                            "corrected, or untick this option")]
    if labels_shape is not None and tuple(kept[1].shape) != tuple(labels_shape):
        return [ConfigError("touched_only", f"{labels.name!r} has shape {tuple(labels_shape)} but the auto-label "
                                            f"result it came from had {tuple(kept[1].shape)}; the corrections "
                                            "cannot be located")]
    return []


class TouchedOption(QWidget):
    """The checkbox and the margin of context (pixels) kept around each correction."""

    def __init__(self, margin: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.checkbox = QCheckBox("Trust only the regions I corrected")
        self.checkbox.setToolTip("For an auto-label result you proofread: only where you changed it (and the "
                                 "margin around each change) counts in training; the rest is ignored")
        self.margin = QSpinBox()
        self.margin.setRange(0, 4096)
        self.margin.setValue(margin)
        self.margin.setSuffix(" px")
        self.margin.setToolTip("Pixels of context kept around each correction")
        self.margin.setMinimumWidth(self.margin.sizeHint().width())  # the checkbox's text gives way, not "px"
        self.margin.setEnabled(False)
        self.checkbox.toggled.connect(self.margin.setEnabled)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.checkbox, stretch=1)
        layout.addWidget(QLabel("margin"))
        layout.addWidget(self.margin)
