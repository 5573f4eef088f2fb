"""The mobile node's replay protection (RFC 5944 5.7), sans-I/O.

- Timestamps (5.7.1): the identification is the wall time in NTP format, shifted
  by what the home agent's clock told us, with the fraction bits below a
  microsecond random; each one greater than any sent before (a floor), even if
  the wall clock steps back or two requests share a tick.
- Nonces (5.7.2): the high 32 bits are the home agent's nonce from its last
  authenticated reply, the low 32 bits ours, never the same twice running.
- A 133 resynchronises (3.6.2.3): timestamps take the home agent's clock, and the
  floor becomes the last identification it accepted (what we sent ahead of its
  clock no longer bounds us); nonces take the nonce it sent.

``now`` is monotonic seconds; ``wall`` maps it to Unix time, used here alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.mip import ident
from app.mn.registration_types import ReplayMode

MAX_RESYNCS = 3
"""133 repairs per attempt: a delayed duplicate can earn a second 133 from a
home agent that issues a new nonce each time, but a loop must end."""
_TIMESTAMP_RANDOM_BITS = 0xFFF
"""Fraction bits below a microsecond clock's resolution: random (RFC 5944 5.7.1)."""


@dataclass(slots=True)
class ReplayState:
    """What replay protection (RFC 5944 5.7) knows of the home agent, shared by
    every client that registers this home address with it: in mode mc the direct
    probe and the registration through the VPN go to the same home agent, and
    each one's reply moves the other's identification on."""

    clock_offset: float = 0.0
    ha_nonce: int = 0
    last_sent_ident: int = 0
    last_accepted_ident: int = 0
    floor: int = 0
    """Timestamp mode: the next identification must exceed this (5.7.1)."""


class ReplayProtection:
    """One client's identifications (RFC 5944 5.7) over a :class:`ReplayState` that
    other clients of the same home agent may share: makes each request's and learns
    from the authenticated replies."""

    def __init__(self, mode: ReplayMode, state: ReplayState, nonce: Callable[[], int],
                 wall: Callable[[float], float]) -> None:
        """``nonce`` draws random bits; ``wall`` maps monotonic ``now`` to Unix time."""
        self.mode = mode
        self.state = state
        self._nonce = nonce
        self._wall = wall

    def identification(self, now: float) -> int:
        """The identification of a new request sent at ``now`` (5.7.1 or 5.7.2)."""
        r = self.state
        if self.mode is ReplayMode.NONCE:
            low = self._nonce() & 0xFFFF_FFFF
            if low == ident.low(r.last_sent_ident):  # 5.7: never the same twice running
                low ^= 1
            i = ident.nonce_ident(r.ha_nonce, low)
        else:
            i = ident.ntp_from_unix(self._wall(now) + r.clock_offset) | (
                self._nonce() & _TIMESTAMP_RANDOM_BITS)
            # 5.7.1: greater than any earlier request (the HA's sequence number),
            # even if the clock steps back or two requests share a tick.
            i = max(i, r.floor + 1)
            r.floor = i
        r.last_sent_ident = i
        return i

    def authenticated(self, reply_ident: int) -> None:
        """An authenticated reply: with nonces, it carries the one for our next request
        (5.7.2)."""
        if self.mode is ReplayMode.NONCE:
            self.state.ha_nonce = ident.high(reply_ident)

    def resync(self, reply_ident: int, sent: float, now: float) -> None:
        """An authenticated 133 answering a request sent at ``sent`` (3.6.2.3); the
        nonce was taken by :meth:`authenticated`."""
        if self.mode is not ReplayMode.TIMESTAMP:
            return
        r = self.state
        # The HA stamped its seconds about half a round trip after we sent.
        # Truncated to the second: add half of one on average.
        ha_time = ident.unix_from_ntp(ident.join(ident.high(reply_ident), 0))
        r.clock_offset = ha_time + 0.5 - (self._wall(sent) + self._wall(now)) / 2
        # 3.6.2.3: adjust before any new request; what we sent ahead of the
        # HA's clock no longer bounds us, what it accepted still does.
        r.floor = r.last_accepted_ident

    def accepted(self, identification: int) -> None:
        """The home agent accepted the request with this identification: later ones
        stay above it, whatever a 133 says (5.7.1)."""
        if self.mode is ReplayMode.TIMESTAMP:
            r = self.state
            r.last_accepted_ident = max(r.last_accepted_ident, identification)
