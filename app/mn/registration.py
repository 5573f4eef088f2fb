"""The mobile node's registration client (RFC 5944 section 3.6), sans-I/O.

Shaped like aioquic's ``QuicConnection``: it never touches a socket or a clock.
The driver calls :meth:`register`, :meth:`deregister`, :meth:`receive` and
:meth:`handle_timer` with the time, then drains :meth:`datagrams_to_send`,
re-arms one timer from :meth:`get_timer` and reads :meth:`next_event`.

- Retransmission with exponential backoff (``initial_timeout``, ``retries``),
  each copy with a fresh identification (RFC 5944 3.6.3).
- Only replies whose identification matches an outstanding request and whose
  Mobile-Home authenticator verifies are taken; anything else is dropped.
- 133 resynchronises (timestamp offset or the home agent's nonce) and resends
  at once, once per attempt.
- Renewal at ``renew_fraction`` of the granted lifetime; if it never succeeds
  the binding is reported lost when the lifetime runs out.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address

from app.mip import ident
from app.mip.auth import AUTHENTICATOR_LEN, Algorithm, append_authenticator, verify
from app.mip.codes import describe, is_accepted
from app.mip.errors import DecodeError
from app.mip.extensions import Extension, ExtType, NaiExtension, UdpTunnelRequest
from app.mip.messages import MIP_PORT, RegFlags, RegistrationReply, RegistrationRequest


class ReplayMode(Enum):
    TIMESTAMP = "timestamp"
    NONCE = "nonce"


@dataclass(frozen=True)
class RegistrationConfig:
    home_address: IPv4Address
    home_agent: IPv4Address
    spi: int
    algorithm: Algorithm
    key: bytes = field(repr=False)
    nai: str | None = None
    lifetime: int = 600
    replay: ReplayMode = ReplayMode.TIMESTAMP
    initial_timeout: float = 0.5
    """Seconds before the first retransmission; doubled after each one."""
    retries: int = 3
    """Retransmissions after the first request before giving up."""
    max_timeout: float = 8.0
    renew_fraction: float = 0.75


class State(Enum):
    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    RENEWING = "renewing"
    DEREGISTERING = "deregistering"


@dataclass(frozen=True, slots=True)
class Datagram:
    data: bytes
    destination: tuple[IPv4Address, int]


@dataclass(frozen=True, slots=True)
class Registered:
    """The home agent accepted: ``care_of_address`` is bound until ``expires_at``."""

    care_of_address: IPv4Address
    lifetime: int
    expires_at: float
    rtt: float
    """Seconds from the request that was answered to its reply."""
    renewal: bool
    udp_tunnel: bool
    keepalive_interval: int


@dataclass(frozen=True, slots=True)
class Denied:
    code: int
    text: str
    """e.g. "denied by home agent: identification mismatch (133)"."""


@dataclass(frozen=True, slots=True)
class TimedOut:
    """No valid reply after every retransmission: the home agent is not reachable."""

    attempts: int
    waited: float
    unverified_code: int | None = None
    """Set when replies matching our requests came back but did not authenticate:
    the home agent may be there and our key wrong (or someone forges replies)."""


@dataclass(frozen=True, slots=True)
class BindingLost:
    """Renewals failed and the granted lifetime ran out."""


@dataclass(frozen=True, slots=True)
class Deregistered:
    pass


Event = Registered | Denied | TimedOut | BindingLost | Deregistered


@dataclass(slots=True)
class _Attempt:
    care_of: IPv4Address
    lifetime: int
    flags: RegFlags
    destination: tuple[IPv4Address, int]
    extensions: tuple[Extension, ...]
    sent: dict[int, float] = field(default_factory=dict)
    """low 32 bits of each copy's identification -> when it was sent."""
    started: float = 0.0
    copies: int = 0
    timeout: float = 0.0
    deadline: float = 0.0
    resynced: bool = False
    unverified_code: int | None = None
    """Code of a matching reply whose authenticator did not verify (wrong key?)."""


class RegistrationClient:
    def __init__(self, config: RegistrationConfig,
                 nonce: Callable[[], int] = lambda: secrets.randbits(32)) -> None:
        self.config = config
        self.state = State.IDLE
        self.clock_offset = 0.0
        self._ha_nonce = 0
        self._nonce = nonce
        self._last_ident = 0
        self._attempt: _Attempt | None = None
        self._out: list[Datagram] = []
        self._events: deque[Event] = deque()
        self.binding: Registered | None = None
        self.last_answer: tuple[float, float] | None = None
        """(round trip, time) of the last authenticated reply: the home agent's probe."""
        self._renew_at: float | None = None
        self._renewal: _Attempt | None = None
        """The attempt that made the binding: renewals repeat it."""

    # -- driver API ------------------------------------------------------------

    def register(self, care_of: IPv4Address, now: float, *, via: IPv4Address | None = None,
                 reverse_tunnel: bool = True, udp_tunnel: bool = False,
                 lifetime: int | None = None) -> None:
        """Register ``care_of``: co-located when ``via`` is None, else through that FA.

        ``lifetime`` caps the configured one (an FA advertises its maximum, and a
        request above it is denied with 69).
        """
        flags = RegFlags.T if reverse_tunnel else RegFlags(0)
        if via is None:
            flags |= RegFlags.D
        exts: list[Extension] = []
        if self.config.nai:
            exts.append(NaiExtension(self.config.nai))
        if udp_tunnel:
            exts.append(UdpTunnelRequest(force=True))
        dest = (via or self.config.home_agent, MIP_PORT)
        renewal = self.binding is not None and self.binding.care_of_address == care_of
        self.state = State.RENEWING if renewal else State.REGISTERING
        life = self.config.lifetime if lifetime is None else min(lifetime, self.config.lifetime)
        self._start(_Attempt(care_of, life, flags, dest, tuple(exts)), now)

    def deregister(self, now: float, *, at_home: bool = True) -> None:
        """Lifetime 0; at home the care-of address is the home address (RFC 5944 3.6.1.2)."""
        coa = self.config.home_address if at_home or self.binding is None else (
            self.binding.care_of_address)
        self.state = State.DEREGISTERING
        self._renew_at = None
        self._start(_Attempt(coa, 0, RegFlags(0), (self.config.home_agent, MIP_PORT), ()), now)

    def receive(self, data: bytes, now: float) -> None:
        a = self._attempt
        if a is None:
            return
        try:
            rep = RegistrationReply.decode(data)
        except DecodeError:
            return
        sent_at = a.sent.get(ident.low(rep.identification))
        if sent_at is None or rep.home_address != self.config.home_address:
            return
        auth = rep.mobile_home_auth
        if auth is None and 64 <= rep.code <= 127 and a.destination[0] != self.config.home_agent:
            # The foreign agent refused to relay (RFC 5944 3.7.3): it shares no key
            # with us, so its denial carries no Mobile-Home authenticator.  Taking
            # it (matched by identification) only ends the attempt through the FA.
            self._attempt = None
            self.last_answer = (now - sent_at, now)
            self._events.append(Denied(rep.code, describe(rep.code)))
            self.state = State.REGISTERED if self.binding and self._binding_valid(now) else (
                State.IDLE)
            return
        if auth is None or auth.spi != self.config.spi or len(auth.authenticator) != (
                AUTHENTICATOR_LEN) or not verify(self.config.algorithm, self.config.key,
                                                 auth.covered, auth.authenticator):
            a.unverified_code = rep.code  # a forged or mis-keyed reply cannot end it
            return
        if self.config.replay is ReplayMode.NONCE:
            self._ha_nonce = ident.high(rep.identification)
        if rep.code == 133 and not a.resynced:
            if self.config.replay is ReplayMode.TIMESTAMP:
                self.clock_offset = ident.clock_offset_from_mismatch(rep.identification, now)
            a.resynced = True
            self._send(a, now)
            return
        self._attempt = None
        self.last_answer = (now - sent_at, now)
        if not is_accepted(rep.code):
            self._events.append(Denied(rep.code, describe(rep.code)))
            self.state = State.REGISTERED if self.binding and self._binding_valid(now) else (
                State.IDLE)
            return
        if a.lifetime == 0 or rep.lifetime == 0:
            self.binding = None
            self._renew_at = None
            self.state = State.IDLE
            self._events.append(Deregistered())
            return
        utr = rep.udp_tunnel_reply
        renewal = self.state is State.RENEWING
        self.binding = Registered(a.care_of, rep.lifetime, now + rep.lifetime, now - sent_at,
                                  renewal, utr is not None and utr.code == 0,
                                  utr.keepalive_interval if utr else 0)
        self._renew_at = now + rep.lifetime * self.config.renew_fraction
        self.state = State.REGISTERED
        self._events.append(self.binding)
        self._renewal = a

    def handle_timer(self, now: float) -> None:
        a = self._attempt
        if a is not None and now >= a.deadline:
            if a.copies > self.config.retries:
                self._attempt = None
                self._events.append(TimedOut(a.copies, now - a.started, a.unverified_code))
                self.state = State.REGISTERED if self._binding_valid(now) else State.IDLE
            else:
                a.timeout = min(a.timeout * 2, self.config.max_timeout)
                self._send(a, now)
        if self.binding is not None and now >= self.binding.expires_at:
            self.binding = None
            self._renew_at = None
            self._events.append(BindingLost())
            if self._attempt is None:
                self.state = State.IDLE
        prev = self._renewal
        if (self._renew_at is not None and now >= self._renew_at and self._attempt is None
                and self.binding is not None and prev is not None):
            self._renew_at = None
            self.state = State.RENEWING
            self._start(_Attempt(prev.care_of, self.config.lifetime, prev.flags,
                                 prev.destination, prev.extensions), now)

    def get_timer(self) -> float | None:
        times = [t for t in (self._attempt.deadline if self._attempt else None,
                             self._renew_at,
                             self.binding.expires_at if self.binding else None) if t is not None]
        return min(times) if times else None

    def datagrams_to_send(self) -> Sequence[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # -- internals -------------------------------------------------------------

    def _binding_valid(self, now: float) -> bool:
        return self.binding is not None and now < self.binding.expires_at

    def _start(self, a: _Attempt, now: float) -> None:
        a.started = now
        a.timeout = self.config.initial_timeout
        self._attempt = a
        self._send(a, now)

    def _identification(self, now: float) -> int:
        if self.config.replay is ReplayMode.NONCE:
            return ident.nonce_ident(self._ha_nonce, self._nonce())
        # Strictly increasing even if the clock steps back or two copies share a tick.
        i = max(ident.ntp_from_unix(now + self.clock_offset), self._last_ident + 1)
        self._last_ident = i
        return i

    def _send(self, a: _Attempt, now: float) -> None:
        identification = self._identification(now)
        req = RegistrationRequest(a.flags, a.lifetime, self.config.home_address,
                                  self.config.home_agent, a.care_of, identification,
                                  a.extensions)
        data = append_authenticator(req.encode(), ExtType.MOBILE_HOME_AUTH, self.config.spi,
                                    self.config.key, self.config.algorithm)
        a.sent[ident.low(identification)] = now
        a.copies += 1
        a.deadline = now + a.timeout
        self._out.append(Datagram(data, a.destination))
