"""A fake-clock network for the conformance tests: delays, duplicates, drops.

``Link`` carries the client's datagrams to a home agent core (and, optionally,
through a foreign agent core) with a one-way delay, and the replies back, in
time order, driving the client's timer in between.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from app.agents.ha_core import HomeAgent
from app.mn.registration import Datagram, Event, RegistrationClient

A = IPv4Address


@dataclass
class Link:
    client: RegistrationClient
    ha: HomeAgent
    one_way: float = 0.0
    source: IPv4Address | None = None
    """The IP source the HA sees (a NAT's address); default: the datagram's own."""
    drop: Callable[[bytes], bool] = lambda _data: False
    sent: list[tuple[float, Datagram]] = field(default_factory=list)
    replies: list[tuple[float, int]] = field(default_factory=list)
    """(time, code) of every reply the HA sent."""
    events: list[tuple[float, Event]] = field(default_factory=list)
    _queue: list[tuple[float, int, str, bytes, Datagram | None]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def _collect(self, now: float) -> None:
        for d in self.client.datagrams_to_send():
            self.sent.append((now, d))
            if not self.drop(d.data):
                heapq.heappush(self._queue, (now + self.one_way, next(self._seq), "req",
                                             d.data, d))
        while (ev := self.client.next_event()) is not None:
            self.events.append((now, ev))

    def run(self, now: float, until: float) -> float:
        """Deliver everything due up to ``until``; returns the time reached."""
        self._collect(now)
        while True:
            t_net = self._queue[0][0] if self._queue else None
            t_clk = self.client.get_timer()
            t = min(x for x in (t_net, t_clk, until + 1e9) if x is not None)
            if t > until:
                return until
            now = t
            if t_net is not None and t_net <= now:
                _, _, kind, data, d = heapq.heappop(self._queue)
                if kind == "req":
                    assert d is not None
                    src = self.source or getattr(d, "source", None) or A("10.30.1.50")
                    out = self.ha.handle_request(data, (src, 434), now)
                    if out.reply is not None:
                        self.replies.append((now, out.code or 0))
                        heapq.heappush(self._queue, (now + self.one_way, next(self._seq),
                                                     "rep", out.reply, None))
                else:
                    self.client.receive(data, now)
            else:
                self.client.handle_timer(now)
            self._collect(now)

    def first(self, kind: type) -> tuple[float, Event] | None:
        return next(((t, e) for t, e in self.events if isinstance(e, kind)), None)
