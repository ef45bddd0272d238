"""The live loss plot moves its axes only when the curve leaves them, and the curve shows in the picture."""

from __future__ import annotations

import numpy as np
from qtpy.QtGui import QImage

from napari_plantbio_train._widgets.loss_plot import LossPlot, step_above, ticks

LOSS_RGB = np.array([0x6F, 0xA8, 0xDC])


def _pixels_like(plot: LossPlot, rgb: np.ndarray) -> int:
    image = plot.grab().toImage().convertToFormat(QImage.Format.Format_RGB888)
    raw = np.frombuffer(image.constBits().asstring(image.sizeInBytes()), np.uint8)
    picture = raw.reshape(image.height(), image.bytesPerLine())[:, :image.width() * 3]
    picture = picture.reshape(image.height(), image.width(), 3).astype(int)
    return int((np.abs(picture - rgb).sum(axis=-1) < 30).sum())


def test_step_above_gives_limits_that_hold_for_a_while():
    assert [step_above(v) for v in (0, 3, 10, 11, 21, 50, 51, 999, 1000, 1001)] == \
        [10, 10, 10, 20, 50, 50, 100, 1000, 1000, 2000]


def _shown_plot(qtbot) -> LossPlot:
    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(420, 280)
    plot.show()
    qtbot.waitExposed(plot)
    qtbot.wait(50)
    return plot


def test_ticks_are_round_and_inside_the_axis():
    assert ticks(0, 500) == [0, 100, 200, 300, 400, 500]
    assert ticks(0, 1.25, most=5) == [0, 0.5, 1.0]
    assert ticks(0.0, 0.05, most=5) == [0, 0.02, 0.04]
    assert ticks(0, 2000) == [0, 500, 1000, 1500, 2000]


def test_most_updates_leave_the_axes_where_they_are(qtbot):
    plot = _shown_plot(qtbot)
    for iteration in range(1, 401):
        plot.add_loss(iteration, 1.0 / (1.0 + 0.01 * iteration) + 0.02 * np.sin(iteration))
        if iteration % 100 == 0:
            plot.add_score(iteration, iteration / 500)
        if iteration % 10 == 0:
            plot.redraw()
            qtbot.wait(1)  # the event loop paints
    qtbot.wait(50)
    # x grows 10, 20, 50, 100, 200, 500 and y settles once: a handful of axis changes for 40 updates.
    assert plot.redraws == 40 and plot.axis_changes <= 8
    assert plot.xlim == (0.0, 500.0)
    low, high = plot.ylim
    assert low <= min(v for _, v in plot.loss_points) and max(v for _, v in plot.loss_points) <= high
    # The curve is in the picture.
    assert _pixels_like(plot, LOSS_RGB) > 100
    plot.redraw(fit=True)  # a finished job: the axes fitted to the curve
    assert plot.xlim == (0.0, 400.0)
    plot.reset()
    qtbot.wait(50)
    assert plot.empty and plot.ylim == (0.0, 1.0) and _pixels_like(plot, LOSS_RGB) < 20


def test_a_job_expected_to_end_lays_the_axes_out_once(qtbot):
    """With the job's end known from its ETA, the axes are laid out at its first point and not moved again."""
    plot = _shown_plot(qtbot)
    for iteration in range(1, 301):
        plot.add_loss(iteration, 1.5 - iteration / 400)
        plot.expect(300 + (iteration % 7) * 10)  # an ETA that wobbles
        if iteration % 10 == 0:
            plot.redraw()
            qtbot.wait(1)
    assert plot.redraws == 30 and plot.axis_changes == 1
    assert plot.xlim == (0.0, 500.0)
    plot.redraw(fit=True)  # the job ended: x to its last iteration
    assert plot.xlim == (0.0, 300.0) and plot.axis_changes == 2
