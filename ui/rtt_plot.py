"""The status window's probe RTT plot: the last hour of both probes, painted with QPainter.

A curve per probe (the tray's RttSeries, read in place), broken where a probe
failed (NaN); the y axis in ms from 0, the time axis in local clock time; the
legend above gives each probe's latest round trip, or the one under the pointer.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from itertools import chain, pairwise
from typing import Any, NamedTuple

from PySide6.QtCore import QLineF, QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QWidget

from ui.rtt import RttSeries

SPAN = 3600.0  # seconds shown: the last hour (less while the samples are younger)
CURVES = (("ha", "home agent", "#1e8a3c"), ("vpn", "VPN gateway", "#1f5fbf"))
TIME_STEPS = (10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
GRID, INK = QColor("#e4e4e4"), QColor("#222")


def nice_step(top: float, parts: int) -> float:
    """The smallest 1, 2 or 5 × 10^k that cuts ``top`` into at most ``parts``."""
    raw = max(top, 1e-3) / parts
    k = 10.0 ** math.floor(math.log10(raw))
    return next(m * k for m in (1, 2, 5, 10) if m * k >= raw)


def pieces(xs: Iterable[float], ys: Iterable[float]) -> list[list[QPointF]]:
    """The curve between failures (NaN), in screen points; of the samples in one
    pixel column only the lowest and the highest are kept (the peaks stay)."""
    out: list[list[QPointF]] = []
    piece: list[QPointF] = []
    col, lo, hi = None, 0.0, 0.0
    for px, py in chain(zip(xs, ys, strict=True), [(0.0, math.nan)]):  # NaN: flush at the end
        c = None if py != py else round(px)  # noqa: PLR0124 (NaN: the fast test)
        if c is not None and c == col:
            lo, hi = (py, hi) if py < lo else (lo, py) if py > hi else (lo, hi)
            continue
        if col is not None:
            piece += [QPointF(col, lo), QPointF(col, hi)] if hi != lo else [QPointF(col, lo)]
        if c is None and piece:
            out.append(piece)
            piece = []
        col, lo, hi = c, py, py
    return out


class Frame(NamedTuple):
    area: QRectF  # where the curves go, inside the axes
    start: float
    end: float
    ystep: float
    ymax: float

    def point(self, t: float, ms: float) -> QPointF:
        a = self.area
        return QPointF(a.left() + (t - self.start) / (self.end - self.start) * a.width(),
                       a.bottom() - ms / self.ymax * a.height())


class RttPlot(QWidget):
    def __init__(self, series: Mapping[str, RttSeries]) -> None:
        super().__init__()
        self.setObjectName("rtt-plot")
        self.setMinimumHeight(150)
        self.setMouseTracking(True)
        self.series = series
        self.hover: float | None = None  # the pointer's x, while over the widget

    def mouseMoveEvent(self, ev: Any) -> None:
        self.hover = ev.position().x()
        self.update()

    def leaveEvent(self, _ev: Any) -> None:
        self.hover = None
        self.update()

    def frame(self) -> Frame:
        # The hour up to the newest sample: repainted when samples come, not by a clock
        # (a repaint wakes Qt's image-conversion threads: ~160 context switches).
        end = max((s.times[-1] for s in self.series.values() if s.times), default=time.time())
        oldest = [s.times[i] for s in self.series.values()
                  if (i := bisect_left(s.times, end - SPAN)) < len(s)]
        top = max((v for s in self.series.values() for v in s.rtts[bisect_left(
            s.times, end - SPAN):] if not math.isnan(v)), default=0.0)
        ystep = nice_step(top, 4)
        return Frame(QRectF(46, 30, self.width() - 58, self.height() - 54),
                     min(min(oldest, default=end), end - 60), end,
                     ystep, ystep * (math.floor(top / ystep) + 1))

    def readout(self, f: Frame, at: float | None) -> list[tuple[str, str]]:
        """(colour, text) per probe: its latest round trip, or the nearest to ``at``."""
        out = []
        for key, name, colour in CURVES:
            s = self.series[key]
            i = len(s) - 1 if at is None else min(bisect_left(s.times, at), len(s) - 1)
            if at is not None and i > 0 and at - s.times[i - 1] < s.times[i] - at:
                i -= 1
            v = s.rtts[i] if i >= 0 and s.times[i] >= f.start else math.nan
            out.append((colour, f"{name}  {'—' if math.isnan(v) else f'{v:.1f} ms'}"))
        return out

    def paintEvent(self, _ev: Any) -> None:
        f = self.frame()
        r = f.area
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor("white"))
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for v in (i * f.ystep for i in range(round(f.ymax / f.ystep) + 1)):
            y = f.point(f.start, v).y()
            self._line(p, GRID, QPointF(r.left(), y), QPointF(r.right(), y))
            p.drawText(QRectF(0, y - 8, r.left() - 6, 16), right, f"{v:g}")
        p.drawText(QRectF(0, r.top() - 22, r.left() - 6, 16), right, "ms")
        span = f.end - f.start
        step = next((s for s in TIME_STEPS if span / s <= r.width() / 70), 7200)
        off = time.localtime(f.start).tm_gmtoff  # ticks on whole local minutes and hours
        for n in range(math.ceil((f.start + off) / step), math.floor((f.end + off) / step) + 1):
            x = f.point(n * step - off, 0).x()
            self._line(p, GRID, QPointF(x, r.top()), QPointF(x, r.bottom()))
            p.drawText(QRectF(min(max(0, x - 40), self.width() - 80), r.bottom() + 4, 80, 16),
                       Qt.AlignmentFlag.AlignCenter, time.strftime(
                           "%H:%M:%S" if step < 60 else "%H:%M", time.localtime(n * step - off)))
        p.drawRect(r)
        ax, ay = r.width() / span, r.height() / f.ymax  # inline below: 3600 samples a curve
        for key, _name, colour in CURVES:
            s, i0 = self.series[key], bisect_left(self.series[key].times, f.start)
            p.setPen(QPen(QColor(colour), 2))
            for piece in pieces((r.left() + (t - f.start) * ax for t in s.times[i0:]),
                                (r.bottom() - v * ay for v in s.rtts[i0:])):
                if len(piece) > 1:  # segments: a 2 px polyline's joins cost 15 times more
                    p.drawLines([QLineF(a, b) for a, b in pairwise(piece)])
                else:  # a lone answer between failures
                    p.drawEllipse(piece[0], 1.5, 1.5)
        hover = self.hover if self.hover is not None and r.left() <= self.hover <= r.right() \
            else None
        at = None if hover is None else f.start + (hover - r.left()) / ax
        legend = self.readout(f, at)
        if hover is not None and at is not None:
            self._line(p, QPen(QColor("#888"), 1, Qt.PenStyle.DashLine), QPointF(hover, r.top()),
                       QPointF(hover, r.bottom()))
            legend.append(("", time.strftime("at %H:%M:%S", time.localtime(at))))
        lx = r.left()  # the legend: a line above the plot, nothing drawn over a curve
        for colour, text in legend:
            if colour:
                self._line(p, QPen(QColor(colour), 3), QPointF(lx, 12), QPointF(lx + 20, 12))
                lx += 26
            p.drawText(QPointF(lx, 17), text)
            lx += p.fontMetrics().horizontalAdvance(text) + 24
        p.end()

    @staticmethod
    def _line(p: QPainter, pen: QPen | QColor, a: QPointF, b: QPointF) -> None:
        p.setPen(pen)
        p.drawLine(a, b)
        p.setPen(INK)
