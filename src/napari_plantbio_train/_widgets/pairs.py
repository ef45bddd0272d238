"""More image + labels pairs beside the training form's first one, each with its share of the windows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QDoubleSpinBox, QGridLayout, QLabel, QPushButton, QToolButton, QVBoxLayout, QWidget

from .. import planning
from ..io.checks import check_image, check_labels
from ..job.config import ConfigError, TrainConfig
from .common import error_label
from .layer_picker import follow_layers, layer_choice, level0, reset_keeping_pick, source_of

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

WEIGHT_TIP = "Share of the training windows drawn from this pair, relative to the other pairs' weights"
# What the engine's own checks of the first pair are called, and what they mean for an extra pair.
PAIR_FIELDS = {"image": "image", "labels": "labels", "window": "window", "dims": "image"}


def pair_field(index: int) -> str:
    """The error field of extra pair ``index`` (0 for the second pair of the form)."""
    return f"extra_pairs[{index}]"


def pair_problems(config: TrainConfig, index: int, image: Layer | None, labels: Layer | None) -> list[ConfigError]:
    """The first pair's rules for extra pair ``index``: both layers picked, a grey image, integer labels of the
    image's shape, an image the job's 2D/3D and window fit. The engine's own checks are reused on the pair's
    shapes, so a pair passes exactly when it would pass as the first one; each message names the pair."""
    field, pair = pair_field(index), f"pair {index + 2}"
    found = []
    if image is None:
        found.append(ConfigError(field, f"{pair}: pick an Image layer"))
    elif image.rgb:
        found.append(ConfigError(field, f"{pair}: {image.name!r} is an RGB image; a raw image must be one grey "
                                        "channel"))
    if labels is None:
        found.append(ConfigError(field, f"{pair}: pick a Labels layer matching its image"))
    if found:
        return found
    for check, layer, part in ((check_image, image, "image"), (check_labels, labels, "labels")):
        try:
            check(level0(layer), field=part)
        except ConfigError as error:
            found.append(ConfigError(field, f"{pair} {part} {layer.name!r}: {error.message}"))
    alone = config.replace(extra_images=(), extra_labels=(), pair_weights=None)
    for error in planning.problems(alone, image_shape=level0(image).shape, labels_shape=level0(labels).shape):
        if error.field in PAIR_FIELDS:
            found.append(ConfigError(field, f"{pair} {PAIR_FIELDS[error.field]}: {error.message}"))
    return found


def _weight_box() -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(0.0, 1000.0)
    box.setDecimals(2)
    box.setSingleStep(0.5)
    box.setValue(1.0)
    box.setToolTip(WEIGHT_TIP)
    return box


class PairRow(QWidget):
    """One extra pair: image and labels pickers, its weight, a remove button and its own error line."""

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        import napari.layers

        self.title = QLabel()
        # Nullable: a row can say "nothing picked yet" ("-----"), which its check then names, rather than guessing
        # the first layer of the list for a pair the user has not chosen.
        self.image = layer_choice(viewer, napari.layers.Image, nullable=True)
        self.labels = layer_choice(viewer, napari.layers.Labels, nullable=True)
        self.weight = _weight_box()
        self.remove_button = QToolButton()
        self.remove_button.setText("✕")
        self.remove_button.setToolTip("Remove this pair")
        self.error = error_label()
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 4, 0, 0)
        grid.setVerticalSpacing(1)
        grid.addWidget(self.title, 0, 0)
        grid.addWidget(self.image.native, 0, 1)
        grid.addWidget(self.weight, 0, 2)
        grid.addWidget(QLabel("labels"), 1, 0)
        grid.addWidget(self.labels.native, 1, 1)
        grid.addWidget(self.remove_button, 1, 2)
        grid.addWidget(self.error, 2, 0, 1, 3)
        grid.setColumnStretch(1, 1)
        follow_layers(viewer, self)

    def reset_choices(self, *_args: object) -> None:
        """The pickers re-read the viewer's layers (``follow_layers`` calls it on each change of the list)."""
        reset_keeping_pick(self.image, self.labels)


class ExtraPairs(QWidget):
    """The rows of extra pairs under the first one, and the first pair's weight once there is more than one.

    Weights are shares: with weights 2 and 1, two thirds of the windows come from the first pair, so a small
    corrected stack is not drowned by the larger stack the model was first trained on.
    """

    changed = Signal()

    def __init__(self, viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.rows: list[PairRow] = []
        self.first_weight = _weight_box()
        self.first_row = QWidget()
        first = QGridLayout(self.first_row)
        first.setContentsMargins(0, 0, 0, 0)
        first.addWidget(QLabel("Pair 1 weight"), 0, 0)
        first.addWidget(self.first_weight, 0, 1)
        first.setColumnStretch(0, 1)
        self.first_row.setVisible(False)
        self.add_button = QPushButton("Add image + labels pair")
        self.add_button.setToolTip("Train on several stacks at once, e.g. the corrected stack and the stack the "
                                   "model was first trained on")
        self.add_button.clicked.connect(lambda: self.add())
        self.error = error_label()  # about the pairs as a whole: their weights, their count
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(2)
        for widget in (self.first_row, self.add_button, self.error):
            self._layout.addWidget(widget)

    # ----- rows -----------------------------------------------------------------------------------------------
    def add(self, image: Layer | None = None, labels: Layer | None = None, weight: float = 1.0) -> PairRow:
        row = PairRow(self.viewer)
        if image is not None:
            row.image.value = image
        if labels is not None:
            row.labels.value = labels
        row.weight.setValue(weight)
        row.remove_button.clicked.connect(lambda: self.remove(row))
        self._layout.insertWidget(self._layout.indexOf(self.add_button), row)
        self.rows.append(row)
        self._renumber()
        return row

    def remove(self, row: PairRow) -> None:
        self.rows.remove(row)
        self._layout.removeWidget(row)
        row.setParent(None)
        row.deleteLater()
        self._renumber()

    def _renumber(self) -> None:
        for index, row in enumerate(self.rows):
            row.title.setText(f"Pair {index + 2} image")
        self.first_row.setVisible(bool(self.rows))
        self.changed.emit()

    # ----- values ---------------------------------------------------------------------------------------------
    def layers(self) -> list[tuple[Layer | None, Layer | None]]:
        return [(row.image.value, row.labels.value) for row in self.rows]

    def names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Where the extra images and labels come from, for the job's record: their files, or a note that a
        layer has none ('' where nothing is picked)."""
        pairs = self.layers()
        return (tuple(source_of(i) if i is not None else "" for i, _ in pairs),
                tuple(source_of(lab) if lab is not None else "" for _, lab in pairs))

    def weights(self) -> tuple[float, ...] | None:
        """Every pair's weight, the first pair's first; None with a single pair (nothing to balance)."""
        if not self.rows:
            return None
        return (self.first_weight.value(), *(row.weight.value() for row in self.rows))

    def problems(self, config: TrainConfig) -> list[ConfigError]:
        return [error for index, (image, labels) in enumerate(self.layers())
                for error in pair_problems(config, index, image, labels)]

    # ----- messages -------------------------------------------------------------------------------------------
    def error_label(self, field: str) -> QLabel | None:
        """Where a message about ``field`` goes: its row, or the line under the rows for the pairs as a whole."""
        for index, row in enumerate(self.rows):
            if field == pair_field(index):
                return row.error
        return self.error if field in ("extra_images", "extra_labels", "pair_weights") else None

    def clear_errors(self) -> None:
        for label in (self.error, *(row.error for row in self.rows)):
            label.clear()
            label.setVisible(False)
