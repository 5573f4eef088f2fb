"""The status window's RTT plot draws what it is given (rendered to an image, pixels read)."""

from __future__ import annotations

import math
from typing import Any

import pytest

HA, VPN = "#1e8a3c", "#1f5fbf"
T0 = 1_800_000_000.0


def render(ha: list[tuple[float, float]], vpn: list[tuple[float, float]],
           hover: float | None = None) -> tuple[Any, Any, Any]:
    from PySide6.QtGui import QImage

    from ui.rtt import RttSeries
    from ui.rtt_plot import RttPlot

    series = {"ha": RttSeries(10_000), "vpn": RttSeries(10_000)}
    for key, samples in (("ha", ha), ("vpn", vpn)):
        for t, v in samples:
            series[key].append(T0 + t, v)
    plot = RttPlot(series)
    plot.resize(600, 240)
    plot.hover = hover
    img = QImage(plot.size(), QImage.Format.Format_ARGB32)
    plot.render(img)
    return plot, plot.frame(), img


def rows_of(img: Any, x: float, colour: str) -> list[int]:
    """The rows of column x (±1) painted exactly in the curve's colour."""
    from PySide6.QtGui import QColor

    want = QColor(colour)
    return sorted({y for dx in (-1, 0, 1) for y in range(img.height())
                   if img.pixelColor(round(x) + dx, y) == want})


def test_each_probe_is_drawn_in_its_colour_at_its_round_trip(qapp: Any) -> None:
    steady = [(float(t), 10.0) for t in range(0, 3001, 10)]
    _plot, f, img = render(steady, [(t, 30.0) for t, _ in steady])
    assert f.ystep == 10 and f.ymax == 40  # 0-40 ms in steps of 10
    for t in (300.0, 1500.0, 2700.0):
        for colour, ms in ((HA, 10.0), (VPN, 30.0)):
            rows = rows_of(img, f.point(T0 + t, ms).x(), colour)
            assert rows, f"no {colour} at t={t}"
            assert all(abs(y - f.point(T0 + t, ms).y()) <= 2 for y in rows), (colour, t, rows)


def test_a_gap_where_a_probe_failed(qapp: Any) -> None:
    """The home agent's probe failed from t=1000 (NaN) until it answered at 2000: no line
    across; the VPN's curve, which kept answering, goes on."""
    ha = [(float(t), 10.0) for t in range(0, 1000, 10)] + [(1000.0, math.nan)] + [
        (float(t), 10.0) for t in range(2000, 3001, 10)]
    _plot, f, img = render(ha, [(float(t), 30.0) for t in range(0, 3001, 10)])
    for t in (1100.0, 1500.0, 1900.0):
        assert rows_of(img, f.point(T0 + t, 0).x(), HA) == [], t
        assert rows_of(img, f.point(T0 + t, 0).x(), VPN), t
    for t in (500.0, 2500.0):
        assert rows_of(img, f.point(T0 + t, 0).x(), HA), t


def test_only_the_last_hour_and_peaks_kept_when_thinned(qapp: Any) -> None:
    """Two hours of one-a-second answers: the plot starts an hour before the newest; a
    lone spike among 3600 samples (several a pixel column) still reaches its height."""
    ha = [(float(t), 80.0 if t == 5400 else 10.0) for t in range(7200)]
    _plot, f, img = render(ha, [])
    assert f.end == T0 + 7199 and f.start == pytest.approx(f.end - 3600)
    assert f.ymax == 100
    rows = rows_of(img, f.point(T0 + 5400, 80).x(), HA)
    assert min(rows) <= f.point(T0 + 5400, 80).y() + 2


def test_the_legend_reads_the_latest_value_or_the_one_under_the_pointer(qapp: Any) -> None:
    ha = [(0.0, 5.0), (60.0, 6.0), (120.0, 7.0)]
    vpn = [(0.0, 20.0), (60.0, 21.0), (120.0, math.nan)]  # the VPN probe failed last
    plot, f, _img = render(ha, vpn)
    assert [text for _c, text in plot.readout(f, None)] == ["home agent  7.0 ms",
                                                            "VPN gateway  —"]
    assert [text for _c, text in plot.readout(f, T0 + 50)] == ["home agent  6.0 ms",
                                                               "VPN gateway  21.0 ms"]
    assert [text for _c, text in plot.readout(f, T0 + 20)] == ["home agent  5.0 ms",
                                                               "VPN gateway  20.0 ms"]
    # Hovering draws the pointer's line and says when (the image differs from no hover).
    x = f.point(T0 + 50, 0).x()
    _plot, _f, hovered = render(ha, vpn, hover=x)
    _plot, _f, plain = render(ha, vpn)
    assert hovered != plain


def test_no_answers_yet_draws_empty_axes(qapp: Any) -> None:
    _plot, f, img = render([], [])
    assert f.end - f.start == 60 and not img.isNull()
