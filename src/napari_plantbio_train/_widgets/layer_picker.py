"""Combo boxes of the viewer's layers of one kind, kept in step with the layer list.

``layer_choice`` is magicgui's picker (the one a ``napari.layers.Image`` annotation gives), used by every dock;
``follow_layers`` and ``reset_keeping_pick`` keep it in step with its own viewer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from qtpy.QtWidgets import QWidget

if TYPE_CHECKING:
    import napari
    from magicgui.widgets import ComboBox
    from napari.layers import Layer

# The layer list's events after which napari itself resets a docked magicgui widget's choices.
LAYER_LIST_EVENTS = ("inserted", "removed", "reordered", "renamed")


def layer_choice(viewer: napari.Viewer, layer_type: type[Layer], accept: Callable[[Layer], bool] | None = None,
                 **options: Any) -> ComboBox:
    """magicgui's layer picker for ``layer_type``, reading its choices from ``viewer``.

    napari's own choices come from the viewer the widget is docked in, else ``napari.current_viewer()``: a form
    built before it is docked (or beside a second viewer, as in the tests) would list another viewer's layers. The
    picker keeps its value across a reset, so a rename or a new layer never changes the pick. ``accept`` is a
    further test on a fixed property of a layer (RGB images only, say)."""
    from magicgui.widgets import create_widget

    def layers(widget: ComboBox) -> list[Layer]:
        return [layer for layer in viewer.layers
                if isinstance(layer, widget.annotation) and (accept is None or accept(layer))]

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
