"""The dock widget that turns a colour-painted label image (the older tool's format) into a Labels layer.

Each colour becomes an id, shown in its original colour, with the map kept in ``layer.metadata["colour_map"]``.
The conversion is two linear passes over the pixels, fast enough for the GUI thread. Problems are shown in the
dock, never raised.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtWidgets import QFormLayout, QPushButton, QVBoxLayout, QWidget

from ..tools.colour_labels import labels_from_colours
from .common import StatusLine
from .layer_picker import follow_layers, layer_choice, level0, reset_keeping_pick

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels

TRANSPARENT = (0.0, 0.0, 0.0, 0.0)


def label_colormap(colour_map: dict[int, tuple[int, int, int]]) -> DirectLabelColormap:
    """Each id in its own colour, opaque; id 0 (the background) and ids not in the map transparent."""
    colours = {i: (*(channel / 255 for channel in colour), 1.0) for i, colour in colour_map.items() if i != 0}
    return DirectLabelColormap(color_dict={**colours, 0: TRANSPARENT, None: TRANSPARENT})


class ColourLabelsWidget(QWidget):
    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        # RGB(A) Image layers only; ``rgb`` is fixed when a layer is made, so there is no event to follow.
        self.image_picker = layer_choice(napari_viewer, Image, accept=lambda layer: bool(layer.rgb))
        self.image_picker.tooltip = ("RGB or RGBA Image layers: each class or object painted in its own colour, "
                                     "background black")
        self.convert_button = QPushButton("Convert to labels")
        self.convert_button.clicked.connect(lambda: self.convert())
        self.status = StatusLine()

        form = QFormLayout()
        form.addRow("Colour image", self.image_picker.native)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.convert_button)
        layout.addWidget(self.status)
        layout.addStretch(1)
        follow_layers(napari_viewer, self)

    def reset_choices(self, *_args: object) -> None:
        """The picker re-reads the viewer's layers (``follow_layers`` calls it on each change of the list)."""
        reset_keeping_pick(self.image_picker)

    def convert(self) -> Labels | None:
        """Add the picked colour image's Labels layer and return it; None (and why, in the dock) if it cannot."""
        image = self.image_picker.value
        if image is None:
            return self._fail("Pick an RGB Image layer: open the colour label image so napari shows it in colour.")
        data = level0(image)
        try:
            ids, colour_map = labels_from_colours(np.asarray(data))
        except ValueError as error:
            return self._fail(f"'{image.name}' cannot be converted: {error}")
        # An RGB layer's scale and translate already leave out the channel axis.
        labels = self.viewer.add_labels(
            ids, name=f"{image.name} labels", scale=image.scale, translate=image.translate,
            colormap=label_colormap(colour_map), metadata={"colour_map": colour_map},
        )
        count = len(colour_map) - 1
        found = f"{count} colours as ids 1..{count} ({ids.dtype})" if count else "no colour other than black"
        self.status.say(f"Added '{labels.name}': {found}, black as background 0.")
        return labels

    def _fail(self, message: str) -> None:
        self.status.say(message, error=True)
        return None
