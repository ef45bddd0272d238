"""The live training curve: loss per iteration, and the validation score on a second axis."""

from __future__ import annotations

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

# A full matplotlib redraw of this figure costs ~50 ms of the GUI thread (~90 ms with a layout engine), and
# on a small CPU every such millisecond is taken from training. Once a second still reads as live.
REDRAW_INTERVAL_MS = 1000
SMOOTHING = 0.9  # exponential moving average of the loss: single-batch losses are too noisy to read a trend


class LossPlot(QWidget):
    """Points arrive once per iteration but the canvas redraws at most every ``REDRAW_INTERVAL_MS``.

    Drawing on every event would make the GUI thread, and through the GIL and the shared cores the training
    thread, pay for hundreds of redraws per minute on fast jobs. Margins are fitted only when the canvas
    changes size, not on every draw as a layout engine would.
    """

    def __init__(self, parent: QWidget | None = None, *, background: str = "#23242b",
                 foreground: str = "#f0f1f2", score_name: str = "validation score") -> None:
        super().__init__(parent)
        self.loss_points: list[tuple[int, float]] = []
        self.score_points: list[tuple[int, float]] = []
        self.redraws = 0
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

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

    @property
    def empty(self) -> bool:
        """Nothing plotted yet: the axes show 0..1 and a note instead of matplotlib's empty default."""
        return self._empty_note.get_visible()

    def reset(self, score_name: str | None = None) -> None:
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

    def redraw(self) -> None:
        """Draw now (also called when a job ends, so the last points never wait for the timer)."""
        self._timer.stop()
        iterations = [i for i, _ in self.loss_points]
        self._raw_line.set_data(iterations, [v for _, v in self.loss_points])
        self._loss_line.set_data(iterations, self._smoothed)
        self._score_line.set_data([i for i, _ in self.score_points], [v for _, v in self.score_points])
        size = (self.canvas.width(), self.canvas.height())
        if size != self._fitted_size and min(size) > 50:
            self.figure.tight_layout(pad=0.5)
            self._fitted_size = size
        self._empty_note.set_visible(not iterations)
        if not iterations:
            self.ax_loss.set_xlim(0, 1)
            self.ax_loss.set_ylim(0, 1)
        else:
            self.ax_loss.set_xlim(0, max(iterations[-1], 1))
            low, high = min(v for _, v in self.loss_points), max(v for _, v in self.loss_points)
            pad = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
            self.ax_loss.set_ylim(max(0.0, low - pad), high + pad)
        self.canvas.draw_idle()
        self.redraws += 1
