"""What the mobile node has published: the one :class:`~app.api.Snapshot` (changed
only here, handed to ``on_snapshot`` when it changes) and the history entries,
stamped with wall time.

The driver and the VPN side's executor (``app.mn.vpn_executor``) publish through
it, so neither calls into the other to say something; ``app.mn.status_view``
computes what to publish.
"""

from __future__ import annotations

from collections.abc import Callable

from app.api import HistoryEntry, Snapshot
from app.mn.status_view import Entry


class StatusBoard:
    def __init__(self, snapshot: Snapshot, *, on_snapshot: Callable[[Snapshot], None],
                 on_event: Callable[[HistoryEntry], None], clock: Callable[[], float],
                 wall: Callable[[], float]) -> None:
        """``clock``: the machines' (monotonic); ``wall``: Unix time, what is published."""
        self.snapshot = snapshot
        self.on_snapshot = on_snapshot
        self.on_event = on_event
        self.clock = clock
        self.wall = wall

    def publish(self, new: Snapshot) -> None:
        if new != self.snapshot:
            self.snapshot = new
            self.on_snapshot(new)

    def show(self, snap: Snapshot, entries: list[Entry]) -> None:
        """A new snapshot, then its history entries."""
        self.publish(snap)
        for kind, details in entries:
            self.history(kind, details)

    def history(self, kind: str, details: dict[str, str]) -> None:
        self.on_event(HistoryEntry(self.wall(), kind, details))

    def to_wall(self, t: float) -> float:
        """A time of ``clock`` as Unix time (as the wall clock reads now)."""
        return t + (self.wall() - self.clock())
