"""Probe round trips kept for the status window's plot, compactly.

Two flat arrays of doubles (16 bytes a sample) instead of a deque of tuples
(~110 bytes a sample: a tuple and two float objects): a day of one-per-second
answers for the home agent and the VPN gateway is 2.8 MB instead of 19 MB.
A probe that stops answering is kept as a NaN round trip: the plot leaves a gap
there instead of drawing a line across the time nothing answered.
"""

from __future__ import annotations

import math
from array import array

from app.api import Probe


class RttSeries:
    """(unix time, RTT ms) samples in arrival order, NaN where the probe failed:
    the newest ``maxlen`` are kept (up to maxlen/16 more until the next trim)."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        self.times = array("d")
        self.rtts = array("d")

    def __len__(self) -> int:
        return len(self.times)

    def append(self, when: float, rtt_ms: float) -> None:
        self.times.append(when)
        self.rtts.append(rtt_ms)
        # Drop the oldest in chunks: one move per maxlen/16 samples, not one per sample.
        if len(self.times) > self.maxlen + max(1, self.maxlen // 16):
            cut = len(self.times) - self.maxlen
            del self.times[:cut]
            del self.rtts[:cut]

    def observe(self, probe: Probe, prev: Probe | None, now: float) -> None:
        """The helper's probe property changed: a new answer is a sample; a probe that
        was reachable and is no longer (unanswered, or stopped) a gap, from ``now``."""
        if probe.answered_at > 0 and probe.rtt_ms >= 0 and (
                prev is None or prev.answered_at != probe.answered_at):
            self.append(probe.answered_at, probe.rtt_ms)
        elif (prev is not None and prev.reachable and not probe.reachable
              and self.rtts and not math.isnan(self.rtts[-1])):
            self.append(max(now, self.times[-1]), math.nan)

    def last_time(self) -> float | None:
        return self.times[-1] if self.times else None

    def samples(self) -> list[tuple[float, float]]:
        """The kept samples as pairs, oldest first (tests and small callers)."""
        return list(zip(self.times, self.rtts, strict=True))
