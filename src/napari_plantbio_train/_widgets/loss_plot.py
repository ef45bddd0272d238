"""The live training curve: loss per iteration, and the validation score on a second axis.

Painted with QPainter rather than matplotlib: a full matplotlib draw of this figure cost ~50 ms of the GUI thread
on idle cores and 160-250 ms while a job trained on a 2-core CPU (benchmarks/widget_responsiveness.py's stall
tracer: every long stall of the event loop was one, nearly all of it drawing tick labels), and the axes had to be
drawn in full whenever their limits grew. A few polylines and a dozen labels painted by Qt cost a millisecond or
two, so every update may draw everything.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QPainter, QPaintEvent, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

REDRAW_INTERVAL_MS = 1000  # points arrive every iteration; once a second still reads as live
SMOOTHING = 0.9  # exponential moving average of the loss: single-batch losses are too noisy to read a trend
LOSS_COLOUR = "#6fa8dc"
SCORE_COLOUR = "#f6b26b"
MARGINS = (46, 10, 46, 30)  # left (loss ticks and name), top, right (score ticks and name), bottom (iterations)


def step_above(value: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above ``value`` (at least 10): an axis limit that holds for a while."""
    value = max(float(value), 10.0)
    power = 10.0 ** math.floor(math.log10(value))
    for factor in (1.0, 2.0, 5.0):
        if value <= factor * power * (1 + 1e-9):
            return factor * power
    return 10.0 * power


def ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k apart) inside ``low..high``, at most ``most`` of them."""
    span = high - low
    if not span > 0:
        return [low]
    raw = span / max(most - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(f * power for f in (1.0, 2.0, 5.0, 10.0) if f * power >= raw * (1 - 1e-9))
    first = math.ceil(low / step - 1e-9) * step
    count = int(math.floor((high - first) / step + 1e-9)) + 1
    return [round(first + i * step, 12) for i in range(count)]


def tick_text(value: float, step: float) -> str:
    if abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    digits = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{digits}f}"


class LossPlot(QWidget):
    """Points arrive once per iteration, the widget repaints at most every ``REDRAW_INTERVAL_MS``.

    The axes' limits change only when the curve leaves them (x in 1-2-5 steps towards where the job is expected to
    end, y from 0 to a quarter above the highest loss), so the picture does not jump while it is read.
    ``redraws`` counts the updates of the picture, ``axis_changes`` those that moved a limit.
    """

    def __init__(self, parent: QWidget | None = None, *, background: str = "#23242b",
                 foreground: str = "#f0f1f2", score_name: str = "validation score") -> None:
        super().__init__(parent)
        self.loss_points: list[tuple[int, float]] = []
        self.score_points: list[tuple[int, float]] = []
        self.redraws = 0
        self.axis_changes = 0
        self.xlim: tuple[float, float] = (0.0, 1.0)
        self.ylim: tuple[float, float] = (0.0, 1.0)
        self.score_name = score_name
        self._expected = 0  # about where the job ends (from its ETA): the x axis is laid out for it early
        self._laid_out = False  # the limits come from points (not the empty plot's 0..1): they may be kept
        self._smoothed: list[float] = []
        self._background = QColor(background)
        self._foreground = QColor(foreground)
        self.setMinimumHeight(200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)  # the whole rectangle is painted every time

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_INTERVAL_MS)
        self._timer.timeout.connect(self.redraw)

    @property
    def empty(self) -> bool:
        """Nothing plotted yet: the axes show 0..1 and a note instead of an empty frame that reads as broken."""
        return not self.loss_points

    def expect(self, iterations: int) -> None:
        """The job will end at about ``iterations``: lay the x axis out for that now, rather than move it each time
        the curve outgrows it."""
        self._expected = int(iterations)

    def reset(self, score_name: str | None = None) -> None:
        self._expected = 0
        self.loss_points.clear()
        self.score_points.clear()
        self._smoothed.clear()
        if score_name:
            self.score_name = score_name
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
        """Update now (also called when a job ends, so the last points never wait for the timer; ``fit``: the axes
        fitted to the whole curve, as a finished job reads best)."""
        self._timer.stop()
        limits = self._limits(fit)
        if limits != (self.xlim, self.ylim):
            self.xlim, self.ylim = limits
            self.axis_changes += 1
        self._laid_out = bool(self.loss_points)
        self.redraws += 1
        self.update()  # Qt paints at its next turn, once however many updates came before

    def _limits(self, fit: bool) -> tuple[tuple[float, float], tuple[float, float]]:
        """Limits that change only when the curve leaves them: x to the 1-2-5 step above where the job is expected
        to end (kept while within 2.5 times of that; ``fit``: to the last iteration), y from 0 to a quarter above
        the highest loss (kept while the curve fits: a falling loss moves nothing until ``fit`` tightens it)."""
        if not self.loss_points:
            return (0.0, 1.0), (0.0, 1.0)
        last = self.loss_points[-1][0]
        values = [v for _, v in self.loss_points]
        low, high = min(values), max(values)
        (_, x_now), (y_low_now, y_high_now) = self.xlim, self.ylim
        target = step_above(max(last, self._expected))
        keep = not fit and self._laid_out
        x_high = max(last, 1) if fit else x_now if keep and last <= x_now <= 2.5 * target else target
        if keep and y_low_now <= low and high <= y_high_now:
            return (0.0, float(x_high)), (float(y_low_now), float(y_high_now))
        top = high * 1.25 if high > 0 else 0.05
        bottom = 0.0 if low >= 0 else low - 0.05 * (high - low or abs(low))  # losses are never below 0: from 0
        return (0.0, float(x_high)), (float(bottom), float(top))

    # ----- painting ---------------------------------------------------------------------------------------------
    def paintEvent(self, _event: QPaintEvent) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), self._background)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
            font = QFont(self.font())
            font.setPointSizeF(7.5)
            painter.setFont(font)
            left, top, right, bottom = MARGINS
            area = QRectF(left, top, max(self.width() - left - right, 10), max(self.height() - top - bottom, 10))
            self._paint_axes(painter, area)
            if self.empty:
                painter.setPen(self._faded(0.7))
                painter.drawText(area, Qt.AlignmentFlag.AlignCenter, "the loss appears here once training starts")
                return
            iterations = np.fromiter((i for i, _ in self.loss_points), float, len(self.loss_points))
            raw = np.fromiter((v for _, v in self.loss_points), float, len(self.loss_points))
            self._paint_line(painter, area, iterations, raw, self.ylim, QColor(LOSS_COLOUR), 0.6, 0.35, envelope=True)
            self._paint_line(painter, area, iterations, np.asarray(self._smoothed, float), self.ylim,
                             QColor(LOSS_COLOUR), 1.5, 1.0)
            if self.score_points:
                at = np.array([i for i, _ in self.score_points], float)
                scores = np.array([s for _, s in self.score_points], float)
                self._paint_line(painter, area, at, scores, (0.0, 1.0), QColor(SCORE_COLOUR), 1.2, 1.0, markers=True)
        finally:
            painter.end()

    def _faded(self, alpha: float) -> QColor:
        colour = QColor(self._foreground)
        colour.setAlphaF(alpha)
        return colour

    def _paint_axes(self, painter: QPainter, area: QRectF) -> None:
        painter.setPen(QPen(self._foreground, 1.0))
        painter.drawRect(area)
        metrics = painter.fontMetrics()
        height = metrics.height()
        (x0, x1), (y0, y1) = self.xlim, self.ylim
        x_ticks = ticks(x0, x1)
        x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
        for value in x_ticks:
            x = area.left() + (value - x0) / ((x1 - x0) or 1.0) * area.width()
            painter.drawLine(QPointF(x, area.bottom()), QPointF(x, area.bottom() + 3))
            painter.drawText(QRectF(x - 40, area.bottom() + 3, 80, height), Qt.AlignmentFlag.AlignHCenter,
                             tick_text(value, x_step))
        painter.drawText(QRectF(area.left(), area.bottom() + 3 + height, area.width(), height),
                         Qt.AlignmentFlag.AlignHCenter, "iteration")
        for low, high, side, colour, name in ((y0, y1, "left", LOSS_COLOUR, "loss"),
                                              (0.0, 1.0, "right", SCORE_COLOUR, self.score_name)):
            y_ticks = ticks(low, high, most=5)
            y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
            painter.setPen(QPen(self._foreground, 1.0))
            for value in y_ticks:
                y = area.bottom() - (value - low) / ((high - low) or 1.0) * area.height()
                edge = area.left() if side == "left" else area.right()
                out = -3 if side == "left" else 3
                painter.drawLine(QPointF(edge, y), QPointF(edge + out, y))
                box = (QRectF(0, y - height / 2, edge - 5, height) if side == "left"
                       else QRectF(edge + 5, y - height / 2, 40, height))
                align = Qt.AlignmentFlag.AlignRight if side == "left" else Qt.AlignmentFlag.AlignLeft
                painter.drawText(box, align | Qt.AlignmentFlag.AlignVCenter, tick_text(value, y_step))
            painter.save()
            painter.setPen(QColor(colour))
            centre = area.center().y()
            x = 2 if side == "left" else self.width() - 2
            painter.translate(x, centre)
            painter.rotate(-90 if side == "left" else 90)
            painter.drawText(QRectF(-area.height() / 2, 0, area.height(), height), Qt.AlignmentFlag.AlignHCenter,
                             name)
            painter.restore()

    def _paint_line(self, painter: QPainter, area: QRectF, xs: np.ndarray, ys: np.ndarray,
                    ylim: tuple[float, float], colour: QColor, width: float, alpha: float, *,
                    envelope: bool = False, markers: bool = False) -> None:
        """One curve in pixels; a long noisy one as its lowest and highest value per pixel column, so that thousands
        of points cost what the widget's width costs and the noise band still shows."""
        (x0, x1), (y0, y1) = self.xlim, ylim
        px = area.left() + (xs - x0) / ((x1 - x0) or 1.0) * area.width()
        py = area.bottom() - (ys - y0) / ((y1 - y0) or 1.0) * area.height()
        py = np.clip(py, area.top(), area.bottom())
        if envelope and len(px) > 2 * area.width():
            columns = np.floor(px).astype(int)
            starts = np.flatnonzero(np.r_[True, columns[1:] != columns[:-1]])
            lows, highs = np.minimum.reduceat(py, starts), np.maximum.reduceat(py, starts)
            px = np.repeat(px[starts], 2)
            py = np.column_stack([lows, highs]).ravel()
        elif len(px) > 2 * area.width():
            keep = np.linspace(0, len(px) - 1, int(2 * area.width())).astype(int)
            px, py = px[keep], py[keep]
        colour = QColor(colour)
        colour.setAlphaF(alpha)
        painter.setPen(QPen(colour, width))
        painter.drawPolyline(QPolygonF([QPointF(float(x), float(y)) for x, y in zip(px, py)]))
        if markers:
            painter.setBrush(colour)
            for x, y in zip(px, py):
                painter.drawEllipse(QPointF(float(x), float(y)), 2.5, 2.5)
            painter.setBrush(Qt.BrushStyle.NoBrush)
