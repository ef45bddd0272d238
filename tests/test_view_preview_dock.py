"""The training dock's view preview in a real viewer: a job on the synthetic sample predicts the slice the user
looks at, and the preview follows the slice between validations."""

from __future__ import annotations

import numpy as np
import pytest

from napari_plantbio_train.io.synthetic import make_stack

TrainWidget = pytest.importorskip("napari_plantbio_train._widgets.train_widget").TrainWidget

JOB_TIMEOUT_MS = 120_000  # a generous ceiling for a few-second job on a busy machine, not a speed claim


@pytest.mark.parametrize("in_process", [False, True], ids=["child", "thread"])
def test_the_view_preview_appears_at_the_current_slice_and_follows_it(make_napari_viewer, qtbot, tmp_path,
                                                                       in_process):
    viewer = make_napari_viewer()
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train segmentation model")
    stack = make_stack((6, 96, 96), seed=4)
    scale, translate = np.array([40.0, 10.0, 10.0]), np.array([80.0, 500.0, -300.0])
    raw = viewer.add_image(stack.image, name="raw", scale=scale, translate=translate)
    viewer.add_labels(stack.semantic, name="truth", scale=scale, translate=translate)
    widget.form.set_values(models_dir=tmp_path / "models", name="view", mode="semantic", dims="2d", window=(32, 32),
                           base_channels=4, depth=2, batch_size=1, workers=1, iteration_step=1, iterations=100_000,
                           iteration_save=100_000, validate_every=4)
    widget.form.in_process.value = in_process
    viewer.dims.set_current_step(0, 1)
    row = widget.view_preview
    assert not row.button.isEnabled()  # nothing to ask before a job runs

    assert widget.start(), widget.status.text()
    # Its layers exist from the click, hidden: none is created mid-training (a 540-590 ms stall when one was).
    assert set(row.previews.layers) == {"probabilities", "labels"}
    assert not any(layer.visible for layer in row.previews.layers.values())
    try:
        qtbot.waitUntil(lambda: row.last is not None, timeout=JOB_TIMEOUT_MS)
        first = row.last
        assert first.offset[0] == 1 and first.labels.shape[0] == 1  # a 2D job: the current slice only
        assert first.iteration % 4 == 0 and first.seconds > 0 and row.button.isEnabled()
        # The layers sit over the part of the image the newest preview was predicted from (the budget may have
        # shrunk the field since the first: it follows the measured cost).
        qtbot.waitUntil(lambda: _placed(row, raw), timeout=JOB_TIMEOUT_MS)
        assert f"iteration {row.last.iteration}: slice 1," in row.label.text()

        viewer.dims.set_current_step(0, 4)  # the user moves on while the job trains
        qtbot.waitUntil(lambda: row.last.offset[0] == 4, timeout=JOB_TIMEOUT_MS)
        moved = row.last
        assert moved.iteration > first.iteration and moved.iteration % 4 == 0  # answered at a later validation
        qtbot.waitUntil(lambda: _placed(row, raw), timeout=JOB_TIMEOUT_MS)
        assert row.previews.layers["labels"].translate[0] == translate[0] + 4 * scale[0]
    finally:
        widget.stop()
        qtbot.waitUntil(lambda: not widget.running, timeout=JOB_TIMEOUT_MS)
    assert widget.error is None, widget.error
    assert not row.button.isEnabled()


def _placed(row, raw) -> bool:
    """Both view layers show the newest view preview, placed like the image (the labels follow a turn later)."""
    last = row.last
    if set(row.previews.layers) != {"probabilities", "labels"}:
        return False
    expected = np.asarray(raw.translate) + np.asarray(last.offset) * np.asarray(raw.scale)
    return all(layer in row.viewer.layers and layer.ndim == raw.ndim and np.allclose(layer.scale, raw.scale)
               and np.allclose(layer.translate, expected) and layer.data.shape == last.labels.shape
               for layer in row.previews.layers.values()) and np.array_equal(row.previews.layers["labels"].data,
                                                                             last.labels)
