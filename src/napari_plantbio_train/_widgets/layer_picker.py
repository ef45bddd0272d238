"""A combo box of the viewer's layers of one kind, kept in step with the layer list."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from qtpy.QtWidgets import QComboBox, QWidget

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer


class LayerPicker(QComboBox):
    """Holds layer objects rather than names, so a rename or a duplicate name never picks the wrong layer.

    The list follows insertions, removals, moves and renames; the current choice survives all of them except
    its own removal.
    """

    def __init__(self, viewer: napari.Viewer, layer_type: type[Layer], parent: QWidget | None = None,
                 accept: Callable[[Layer], bool] | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._layer_type = layer_type
        self._accept = accept  # a further test on fixed properties of a layer (e.g. RGB images only)
        self._layers: list[Layer] = []
        events = viewer.layers.events
        events.inserted.connect(self._on_inserted)
        events.removed.connect(self.refresh)
        events.moved.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        # napari holds these slots weakly and drops them if this widget is deleted first.
        self.refresh()

    @property
    def value(self) -> Layer | None:
        index = self.currentIndex()
        return self._layers[index] if 0 <= index < len(self._layers) else None

    @value.setter
    def value(self, layer: Layer | None) -> None:
        if layer is None:
            self.setCurrentIndex(-1)
            return
        if layer not in self._layers:
            raise ValueError(f"{layer.name!r} is not a {self._layer_type.__name__} layer of this viewer")
        self.setCurrentIndex(self._layers.index(layer))

    def choices(self) -> list[Layer]:
        return list(self._layers)

    def _on_inserted(self, event) -> None:
        event.value.events.name.connect(self.refresh)
        self.refresh()

    def refresh(self, *_args) -> None:
        current = self.value
        self._layers = [layer for layer in self._viewer.layers if isinstance(layer, self._layer_type)
                        and (self._accept is None or self._accept(layer))]
        self.blockSignals(True)
        self.clear()
        self.addItems([layer.name for layer in self._layers])
        if current in self._layers:
            self.setCurrentIndex(self._layers.index(current))
        elif self._layers:
            self.setCurrentIndex(0)
        self.blockSignals(False)
        # Emitted once, after the list is rebuilt, and only when the chosen layer really changed.
        if self.value != current:
            self.currentIndexChanged.emit(self.currentIndex())


def level0(layer: Layer) -> Any:
    """The full-resolution array of a layer (the first level of a multiscale one), as the layer holds it: numpy,
    dask or zarr pass through unread."""
    return layer.data[0] if layer.multiscale else layer.data


def source_of(layer: Layer) -> str:
    """What a job records for a layer: the file napari opened it from, so ``train --config`` can re-run the job
    headless, or a note that no file holds it (a layer painted or computed in this session)."""
    from ..job.config import unsaved_layer

    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else unsaved_layer(layer.name)
