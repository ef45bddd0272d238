"""The live loss plot draws its axes in full only when their limits change, and the curve still shows."""

from __future__ import annotations

import numpy as np

from napari_plantbio_train._widgets.loss_plot import LossPlot, step_above

LOSS_RGB = np.array([0x6F, 0xA8, 0xDC])


def _pixels_like(plot: LossPlot, rgb: np.ndarray) -> int:
    picture = np.asarray(plot.canvas.buffer_rgba())[..., :3].astype(int)
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


def test_most_updates_draw_only_the_lines(qtbot):
    plot = _shown_plot(qtbot)
    for iteration in range(1, 401):
        plot.add_loss(iteration, 1.0 / (1.0 + 0.01 * iteration) + 0.02 * np.sin(iteration))
        if iteration % 100 == 0:
            plot.add_score(iteration, iteration / 500)
        if iteration % 10 == 0:
            plot.redraw()
            qtbot.wait(1)  # the event loop runs the full draws matplotlib was asked for
    qtbot.wait(50)
    # x grows 10, 20, 50, 100, 200, 500 and y settles once: a handful of full draws for 40 updates.
    assert plot.redraws == 40 and plot.full_redraws <= 8
    assert plot.ax_loss.get_xlim() == (0.0, 500.0)
    low, high = plot.ax_loss.get_ylim()
    assert low <= min(v for _, v in plot.loss_points) and max(v for _, v in plot.loss_points) <= high
    # The smoothed curve is in the picture although most updates never drew the figure.
    assert _pixels_like(plot, LOSS_RGB) > 100
    plot.redraw(fit=True)  # a finished job: the axes fitted to the curve
    assert plot.ax_loss.get_xlim() == (0.0, 400.0)
    plot.reset()
    qtbot.wait(50)
    assert plot.empty and plot.ax_loss.get_ylim() == (0.0, 1.0) and _pixels_like(plot, LOSS_RGB) < 20


def test_a_job_expected_to_end_lays_the_axes_out_once(qtbot):
    """With the job's end known from its ETA, the axes are drawn in full at its first point and not again."""
    plot = _shown_plot(qtbot)
    for iteration in range(1, 301):
        plot.add_loss(iteration, 1.5 - iteration / 400)
        plot.expect(300 + (iteration % 7) * 10)  # an ETA that wobbles
        if iteration % 10 == 0:
            plot.redraw()
            qtbot.wait(1)
    assert plot.redraws == 30 and plot.full_redraws == 1
    assert plot.ax_loss.get_xlim() == (0.0, 500.0)
    plot.redraw(fit=True)  # the job ended: x to its last iteration
    assert plot.ax_loss.get_xlim() == (0.0, 300.0) and plot.full_redraws == 2
