"""Bounds on what one local caller can make the helper hold, and on its log.

Any local uid may call the helper; a call that waits (on polkit, on the bus
daemon, on a secret agent) holds a task, a reply slot at the bus daemon and,
for polkit, one of the helper's pending replies (dbus-daemon allows 128 by
default).  So each caller gets a handful of calls in flight, counted per
unique bus name and per uid (one uid may open many connections); the rest
are refused at once.  Refusals are logged, but not one line each: a burst
would fill the journal.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable

CALLS_PER_NAME = 4
CALLS_PER_UID = 8
CHECKS_PER_NAME = 2
"""polkit checks in flight per unique name."""
CHECKS_PER_UID = 4


class InFlight:
    """Counts of things in flight per key, each bounded by ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count: Counter[Hashable] = Counter()

    def enter(self, key: Hashable) -> bool:
        """Take a slot for ``key`` (True), or refuse (False: none taken)."""
        if self._count[key] >= self.limit:
            return False
        self._count[key] += 1
        return True

    def leave(self, key: Hashable) -> None:
        self._count[key] -= 1
        if self._count[key] <= 0:
            del self._count[key]  # no entry left for a caller that went away

    def __len__(self) -> int:
        return len(self._count)

    def held(self, key: Hashable) -> int:
        return self._count.get(key, 0)


class CallerLimits:
    """A slot per unique name and per uid, taken together or not at all."""

    def __init__(self, per_name: int, per_uid: int) -> None:
        self.names = InFlight(per_name)
        self.uids = InFlight(per_uid)

    def enter(self, name: str, uid: int) -> bool:
        if not self.names.enter(name):
            return False
        if not self.uids.enter(uid):
            self.names.leave(name)
            return False
        return True

    def leave(self, name: str, uid: int) -> None:
        self.names.leave(name)
        self.uids.leave(uid)


class QuietLog:
    """A logger for lines any caller can cause: at most ``burst`` lines per
    ``interval`` seconds, then one line saying how many were left out."""

    def __init__(self, log: logging.Logger, *, burst: int = 10, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._start = -interval
        self._lines = 0
        self.left_out = 0

    def __call__(self, level: int, fmt: str, *args: object) -> None:
        now = self.clock()
        if now - self._start >= self.interval:
            if self.left_out:
                self.log.log(level, "%d more such lines left out in the last %g s",
                             self.left_out, self.interval)
            self._start, self._lines, self.left_out = now, 0, 0
        if self._lines < self.burst:
            self._lines += 1
            self.log.log(level, fmt, *args)
        else:
            self.left_out += 1
