"""The live training curve: loss per iteration, and the validation score on a second axis."""

from __future__ import annotations

import math

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

# A full matplotlib redraw of this figure costs ~50 ms of the GUI thread (~90 ms with a layout engine), and
# 180-300 ms while a job trains on a 2-core CPU (measured by benchmarks/widget_responsiveness.py's stall
# tracer: every long stall of the event loop was one, nearly all of it drawing tick labels). So the axes are
# drawn in full only when their limits or size change, and limits grow in steps (1, 2, 5 x 10^k) rather than
# with every point; in between, only the three lines are drawn over a saved picture of the axes (blitting).
# Once a second still reads as live.
REDRAW_INTERVAL_MS = 1000
SMOOTHING = 0.9  # exponential moving average of the loss: single-batch losses are too noisy to read a trend


def step_above(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above ``value`` (at least 10): an axis limit that holds for a while."""
    value = max(float(value), 10.0)
    power = 10.0 ** math.floor(math.log10(value))
    for factor in (1.0, 2.0, 5.0):
        if value <= factor * power * (1 + 1e-9):
            return factor * power
    return 10.0 * power


class LossPlot(QWidget):
    """Points arrive once per iteration but the canvas redraws at most every ``REDRAW_INTERVAL_MS``.

    Drawing on every event would make the GUI thread, and through the GIL and the shared cores the training
    thread, pay for hundreds of redraws per minute on fast jobs. Margins are fitted only when the canvas
    changes size, not on every draw as a layout engine would. ``redraws`` counts every update of the picture,
    ``full_redraws`` those that drew the axes too.
    """

    def __init__(self, parent: QWidget | None = None, *, background: str = "#23242b",
                 foreground: str = "#f0f1f2", score_name: str = "validation score") -> None:
        super().__init__(parent)
        self.loss_points: list[tuple[int, float]] = []
        self.score_points: list[tuple[int, float]] = []
        self.redraws = 0
        self.full_redraws = 0
        self._background = None  # the axes without the lines, as last drawn in full
        self._expected = 0  # about where the job ends (from its ETA): the x axis is laid out for it early
        self._smoothed: list[float] = []

        self.figure = Figure(figsize=(4.0, 2.6), dpi=90, facecolor=background)
        self._fitted_size: tuple[int, int] | None = None
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.ax_loss = self.figure.add_subplot(111)
        self.ax_score = self.ax_loss.twinx()
        for ax in (self.ax_loss, self.ax_score):
            ax.set_facecolor(background)
            ax.tick_params(colors=foreground, labelsize=8)
            for spine in ax.spines.values():
                spine.set_color(foreground)
        self.ax_loss.set_xlabel("iteration", color=foreground, fontsize=8)
        self.ax_loss.set_ylabel("loss", color="#6fa8dc", fontsize=8)
        self.ax_score.set_ylabel(score_name, color="#f6b26b", fontsize=8)
        self.ax_score.set_ylim(0.0, 1.0)
        (self._raw_line,) = self.ax_loss.plot([], [], color="#6fa8dc", linewidth=0.6, alpha=0.35)
        (self._loss_line,) = self.ax_loss.plot([], [], color="#6fa8dc", linewidth=1.5, label="loss (smoothed)")
        (self._score_line,) = self.ax_score.plot([], [], color="#f6b26b", marker="o", markersize=3,
                                                 linewidth=1.2, label=score_name)
        self._lines = (self._raw_line, self._loss_line, self._score_line)
        for line in self._lines:
            line.set_animated(True)  # drawn by _blit, never by a full draw: the background must not hold them
        self.canvas.mpl_connect("draw_event", self._on_full_draw)

        # Before the first loss: 0..1 axes and a line saying what will appear (an empty plot once showed
        # matplotlib's -0.04..0.04, which reads as a broken plot).
        self._empty_note = self.ax_loss.text(0.5, 0.5, "the loss appears here once training starts",
                                             transform=self.ax_loss.transAxes, ha="center", va="center",
                                             color=foreground, fontsize=8, alpha=0.7)
        self.ax_loss.set_xlim(0, 1)
        self.ax_loss.set_ylim(0, 1)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_INTERVAL_MS)
        self._timer.timeout.connect(self.redraw)
        # Full draws wait for the next turn of the event loop, as matplotlib's draw_idle would, but on a timer that
        # dies with this widget: draw_idle's own timer fired on a canvas already deleted when a dock closed.
        self._full_timer = QTimer(self)
        self._full_timer.setSingleShot(True)
        self._full_timer.setInterval(0)
        self._full_timer.timeout.connect(self._draw_full)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

    @property
    def empty(self) -> bool:
        """Nothing plotted yet: the axes show 0..1 and a note instead of matplotlib's empty default."""
        return self._empty_note.get_visible()

    def expect(self, iterations: int) -> None:
        """The job will end at about ``iterations``: lay the x axis out for that now, rather than redraw the axes
        each time the curve outgrows them."""
        self._expected = int(iterations)

    def reset(self, score_name: str | None = None) -> None:
        self._expected = 0
        self.loss_points.clear()
        self.score_points.clear()
        self._smoothed.clear()
        if score_name:
            self.ax_score.set_ylabel(score_name)
            self._score_line.set_label(score_name)
        self.redraw()

    def add_loss(self, iteration: int, loss: float) -> None:
        self.loss_points.append((iteration, loss))
        previous = self._smoothed[-1] if self._smoothed else loss
        self._smoothed.append(SMOOTHING * previous + (1.0 - SMOOTHING) * loss)
        self._schedule()

    def add_score(self, iteration: int, score: float) -> None:
        self.score_points.append((iteration, score))
        self._schedule()

    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def redraw(self, *, fit: bool = False) -> None:
        """Draw now (also called when a job ends, so the last points never wait for the timer; ``fit``: the axes
        fitted to the whole curve, as a finished job reads best)."""
        self._timer.stop()
        iterations = [i for i, _ in self.loss_points]
        self._raw_line.set_data(iterations, [v for _, v in self.loss_points])
        self._loss_line.set_data(iterations, self._smoothed)
        self._score_line.set_data([i for i, _ in self.score_points], [v for _, v in self.score_points])
        size = (self.canvas.width(), self.canvas.height())
        full = self._background is None
        if size != self._fitted_size and min(size) > 50:
            self.figure.tight_layout(pad=0.5)
            self._fitted_size = size
            full = True
        if self._empty_note.get_visible() == bool(iterations):
            self._empty_note.set_visible(not iterations)
            full = True
        xlim, ylim = self._limits(iterations, fit)
        if xlim != self.ax_loss.get_xlim() or ylim != self.ax_loss.get_ylim():
            self.ax_loss.set_xlim(*xlim)
            self.ax_loss.set_ylim(*ylim)
            full = True
        self.redraws += 1
        if full:
            self.full_redraws += 1
            self._full_timer.start()  # _on_full_draw saves the new background and draws the lines over it
        else:
            self._blit()

    def _limits(self, iterations: list[int], fit: bool) -> tuple[tuple[float, float], tuple[float, float]]:
        """Axis limits that change only when the curve leaves them: x to the 1-2-5 step above where the job is
        expected to end (kept while within 2.5 times of that; ``fit``: to the last iteration), y from 0 to a quarter above the highest loss (kept
        while the curve fits: a falling loss redraws nothing until the job ends and ``fit`` tightens it)."""
        if not iterations:
            return (0.0, 1.0), (0.0, 1.0)
        last = iterations[-1]
        low, high = min(v for _, v in self.loss_points), max(v for _, v in self.loss_points)
        (_, x_now), (y_low_now, y_high_now) = self.ax_loss.get_xlim(), self.ax_loss.get_ylim()
        target = step_above(max(last, self._expected))
        keep = not fit and not self.empty
        x_high = max(last, 1) if fit else x_now if keep and last <= x_now <= 2.5 * target else target
        if keep and y_low_now <= low and high <= y_high_now:
            return (0.0, float(x_high)), (float(y_low_now), float(y_high_now))
        top = high * 1.25 if high > 0 else 0.05
        bottom = 0.0 if low >= 0 else low - 0.05 * (high - low or abs(low))  # losses are never below 0: from 0
        return (0.0, float(x_high)), (float(bottom), float(top))

    def _on_full_draw(self, _event: object) -> None:
        """After matplotlib drew the figure (the lines are animated, so left out): keep that picture as the
        background and put the lines on it."""
        self._background = self.canvas.copy_from_bbox(self.figure.bbox)
        self._draw_lines()

    def _draw_full(self) -> None:
        self.canvas.draw()  # repaints the widget too

    def _blit(self) -> None:
        self.canvas.restore_region(self._background)
        self._draw_lines()
        self.canvas.blit(self.figure.bbox)

    def _draw_lines(self) -> None:
        self.ax_loss.draw_artist(self._raw_line)
        self.ax_loss.draw_artist(self._loss_line)
        self.ax_score.draw_artist(self._score_line)
