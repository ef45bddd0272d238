"""What a dock shows before there is anything to show: no made-up thresholds, no broken-looking plot."""

from __future__ import annotations

from napari_plantbio_train._widgets.label_widget import AutoLabelWidget
from napari_plantbio_train._widgets.loss_plot import LossPlot


def test_thresholds_are_blank_until_a_model_is_picked(make_napari_viewer, tiny_models, tmp_path):
    empty = AutoLabelWidget(make_napari_viewer(), models_dir=tmp_path / "none")
    assert empty.model_names() == []
    for box in empty.post_boxes.values():
        assert not box.isEnabled() and box.text().strip() == ""
    assert empty.settings().postprocess == {}

    picked = AutoLabelWidget(make_napari_viewer(), models_dir=tiny_models)
    picked.select_model("chl")
    boxes = picked.post_boxes.values()
    assert all(box.isEnabled() for box in boxes) and any(box.value() > 0 and box.text().strip() for box in boxes)


def test_an_empty_loss_plot_says_what_will_appear(qtbot):
    plot = LossPlot()
    qtbot.addWidget(plot)
    assert plot.empty and plot.ylim == (0.0, 1.0)
    plot.add_loss(1, 0.7)
    plot.add_loss(2, 0.5)
    plot.redraw()
    assert not plot.empty and plot.ylim[1] > 0.7
    plot.reset()
    assert plot.empty and plot.ylim == (0.0, 1.0)
