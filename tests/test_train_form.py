"""The training form on magicgui: its layer pickers follow the viewer they were made for, docked or not, and a
field's message sits under the field, whole."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import ComboBox
from qtpy.QtCore import QPoint
from qtpy.QtWidgets import QApplication

from napari_plantbio_train.job.config import ConfigError, unsaved_layer
from napari_plantbio_train._widgets.train_widget import TrainWidget


def _names(picker: ComboBox) -> list[str]:
    return [picker.native.itemText(i) for i in range(picker.native.count())]


def test_docked_pickers_follow_their_viewer_and_not_another(make_napari_viewer):
    viewer, other = make_napari_viewer(), make_napari_viewer()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="train")
    other.add_image(np.zeros((8, 8), np.uint8), name="elsewhere")  # the current viewer now: never listed here
    assert isinstance(widget.image_picker, ComboBox) and widget.image_picker.choices == ()

    first = viewer.add_image(np.zeros((8, 8), np.uint8), name="first")
    viewer.add_labels(np.zeros((8, 8), np.uint8), name="truth")
    row = widget.form.pairs.add()
    second = viewer.add_image(np.zeros((8, 8), np.uint8), name="second")
    assert _names(widget.image_picker) == ["first", "second"]
    assert _names(widget.labels_picker) == ["truth"]
    assert row.image.value is None, "a new pair row waits for the user's pick"
    assert [layer.name for layer in row.image.choices if layer is not None] == ["first", "second"]
    assert [layer.name for layer in row.labels.choices if layer is not None] == ["truth"]
    assert widget.image_picker.value is first, "a new layer keeps the pick"

    row.image.value = second
    second.name = "renamed"
    assert _names(widget.image_picker) == ["first", "renamed"] and row.image.value is second
    viewer.layers.remove(first)
    assert _names(widget.image_picker) == ["renamed"] and widget.image_picker.value is second
    assert widget.build_config().image == unsaved_layer("renamed")


def test_a_message_sits_under_its_field_and_is_not_cut_off(make_napari_viewer):
    widget = TrainWidget(make_napari_viewer())
    widget.resize(380, 900)
    widget.show()
    long = "8,2048,2048 is larger than the image (3, 64, 64) along y and x: the largest window that fits is 3,64,64"
    widget.form.show_errors([ConfigError("window", long)])
    QApplication.processEvents()

    field, label = widget.form.window.native, widget.form._errors["window"]
    field_bottom = field.mapTo(widget, QPoint(0, field.height())).y()
    label_top = label.mapTo(widget, QPoint(0, 0)).y()
    assert label.isVisible() and label.text() == long
    assert label_top >= field_bottom, "the message is drawn below the field, not over it"
    assert label.wordWrap() and label.height() >= label.heightForWidth(label.width()), "every line of it shows"
    assert label.mapTo(widget, QPoint(label.width(), 0)).x() <= widget.width()
    widget.form.clear_errors()
    assert widget.form.error_text("window") == "" and not label.isVisible()
