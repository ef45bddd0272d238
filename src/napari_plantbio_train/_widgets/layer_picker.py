"""Combo boxes of the viewer's layers of one kind, kept in step with the layer list.

``layer_choice`` is magicgui's picker (the one a ``napari.layers.Image`` annotation gives); the training form uses
it. ``LayerPicker`` is the older hand-written one, still used by the docks not yet on magicgui.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from qtpy.QtWidgets import QComboBox, QWidget

if TYPE_CHECKING:
    import napari
    from magicgui.widgets import ComboBox
    from napari.layers import Layer

# The layer list's events after which napari itself resets a docked magicgui widget's choices.
LAYER_LIST_EVENTS = ("inserted", "removed", "reordered", "renamed")


def layer_choice(viewer: napari.Viewer, layer_type: type[Layer], **options: Any) -> ComboBox:
    """magicgui's layer picker for ``layer_type``, reading its choices from ``viewer``.

    napari's own choices come from the viewer the widget is docked in, else ``napari.current_viewer()``: a form
    built before it is docked (or beside a second viewer, as in the tests) would list another viewer's layers. The
    picker keeps its value across a reset, so a rename or a new layer never changes the pick."""
    from magicgui.widgets import create_widget

    def layers(widget: ComboBox) -> list[Layer]:
        return [layer for layer in viewer.layers if isinstance(layer, widget.annotation)]

    return create_widget(annotation=layer_type, options={"choices": layers, **options})


def reset_keeping_pick(*pickers: ComboBox) -> None:
    """Re-read the pickers' layers. magicgui matches a combo box's items by their text: a renamed layer's item is
    dropped and added again at the end, and the pick jumps to another layer. So the items are rebuilt in the layer
    list's order, the pick is put back, and ``changed`` is emitted only when the picked layer really changed (its
    removal)."""
    for picker in pickers:
        before = picker.value
        with picker.changed.blocked():
            picker.native.clear()
            picker.reset_choices()
            if before is not None and any(layer is before for layer in picker.choices):
                picker.value = before
        if picker.value is not before:
            picker.changed.emit(picker.value)


def follow_layers(viewer: napari.Viewer, widget: QWidget, method: str = "reset_choices") -> None:
    """Call ``widget.method()`` after every change of the layer list, as napari does for a docked magicgui widget,
    for as long as the Qt widget lives."""
    from .common import follow

    for name in LAYER_LIST_EVENTS:
        follow(getattr(viewer.layers.events, name), widget, method)


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
