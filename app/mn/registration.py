"""The mobile node's registration client (RFC 5944 section 3.6), sans-I/O.

Shaped like aioquic's ``QuicConnection``: it never touches a socket or a clock.
The driver calls :meth:`register`, :meth:`deregister`, :meth:`receive` and
:meth:`handle_timer` with the time, then drains :meth:`datagrams_to_send`,
re-arms one timer from :meth:`get_timer` and reads :meth:`next_event`.

- Retransmission (RFC 5944 3.6.3): never less than 1 s after the previous
  request, each timeout twice the previous up to ``max_timeout`` (and never
  above the requested lifetime).  With timestamps each copy is a new request
  (new identification); with nonces the unanswered request is resent unchanged.
- A reply is taken only if the low-order 32 bits of its identification match
  the most recent request sent (3.6.2.1, 5.7) and it carries exactly one
  Mobile-Home authenticator that verifies; anything else is dropped.
- 133 resynchronises (timestamp: the home agent's clock, and the floor for the
  next identification becomes the last one the home agent accepted; nonce: the
  home agent's nonce) and a new request leaves at once (3.6.2.3).  After a 69
  requests through that foreign agent ask no more than the reply's lifetime.
- The binding's timer starts when the answered request was sent (3.6.2.2),
  for the granted lifetime capped at what was asked; renewal at
  ``renew_fraction`` of it; if renewals never succeed the binding is reported
  lost when the lifetime runs out.

With the defaults (1 s, 2 retransmissions) a silent network is declared
unreachable after 1 + 2 + 4 = 7 s; see README "How long a decision takes".
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address

from app.mip import ident
from app.mip.auth import AUTHENTICATOR_LEN, verify
from app.mip.codes import ReplyCode, describe, is_accepted
from app.mip.errors import DecodeError
from app.mip.extensions import AuthExtension, ExtType, UdpTunnelReply, UdpTunnelRequest
from app.mip.messages import RegFlags, RegistrationReply
from app.mn.registration_request import (
    REVERSE_TUNNEL_TTL,
    Attempt,
    datagram,
    encode,
    flags_and_extensions,
)
from app.mn.registration_types import (
    MIN_RETRANSMIT_INTERVAL,
    BindingLost,
    ClientState,
    Datagram,
    Denied,
    Deregistered,
    Event,
    Registered,
    RegistrationConfig,
    ReplayMode,
    TimedOut,
    UdpTunnelling,
)
from app.mn.replay_protection import MAX_RESYNCS, ReplayProtection, ReplayState

# The vocabulary lives in app.mn.registration_types, the request's contents in
# app.mn.registration_request, the replay protection in app.mn.replay_protection;
# callers import their names from here.
__all__ = [
    "MIN_FA_LIFETIME", "MIN_RETRANSMIT_INTERVAL", "REVERSE_TUNNEL_TTL", "BindingLost",
    "ClientState", "Datagram", "Denied", "Deregistered", "Event", "Registered",
    "RegistrationClient", "RegistrationConfig", "ReplayMode", "ReplayState", "TimedOut",
    "UdpTunnelling",
]

log = logging.getLogger("trustroam.mn.registration")

MIN_FA_LIFETIME = 4
"""Seconds: the least an FA's code 69 may cap the lifetime to (renewed at 0.75 of it,
3 s, so requests stay at least 1 s apart, RFC 5944 3.6.3)."""


class RegistrationClient:
    """One mobile node's registrations with its home agent (RFC 5944 3.6), sans-I/O.

    Requests in (:meth:`register`, :meth:`deregister`, :meth:`deregister_care_of`,
    :meth:`reregister`, :meth:`cancel`); input at ``now`` (:meth:`receive`,
    :meth:`handle_timer`); output drained (:meth:`datagrams_to_send`,
    :meth:`next_event`); :meth:`get_timer` says when to call :meth:`handle_timer`.
    ``binding`` is the registration that stands.
    """

    def __init__(self, config: RegistrationConfig,
                 nonce: Callable[[], int] = lambda: secrets.randbits(32),
                 replay: ReplayState | None = None,
                 wall: Callable[[float], float] = lambda now: now) -> None:
        """``now`` everywhere is monotonic seconds (timers, the binding's lifetime);
        ``wall`` maps it to Unix time for the timestamp identification alone (RFC
        5944 5.7.1), so a wall clock that steps moves no deadline.  The default
        takes ``now`` for wall time (a fake clock's tests)."""
        self.config = config
        self.state = ClientState.IDLE
        self.replay = replay if replay is not None else ReplayState()
        """Shared with the other clients of this home agent (mode mc)."""
        self._ids = ReplayProtection(config.replay, self.replay, nonce, wall)
        self.last_sent_at: float | None = None
        """When this client last put a request on the wire (any copy)."""
        self.accepted_sent_at: float | None = None
        """When the request behind the last accepted reply (a deregistration too)
        was first sent."""
        self._attempt: Attempt | None = None
        self._out: list[Datagram] = []
        self._events: deque[Event] = deque()
        self.binding: Registered | None = None
        self.last_answer: tuple[float, float] | None = None
        """(round trip, time) of the last authenticated reply: the home agent's probe."""
        self._rtt: float | None = None
        """The last round trip measured: timeouts are at least twice it (3.6.3)."""
        self._renew_at: float | None = None
        self._renewal: Attempt | None = None
        """The attempt that made the binding: renewals repeat it."""
        self._fa_lifetime: dict[IPv4Address, int] = {}
        """Lifetime caps foreign agents stated in a 69 (RFC 5944 3.6.2.3)."""
        self.discarded = 0
        """Replies discarded for a missing or invalid Mobile-Home authenticator."""

    @property
    def clock_offset(self) -> float:
        """Seconds to add to our clock to get the home agent's (timestamp mode)."""
        return self.replay.clock_offset

    @clock_offset.setter
    def clock_offset(self, value: float) -> None:
        self.replay.clock_offset = value

    # -- driver API ------------------------------------------------------------

    def register(self, care_of: IPv4Address, now: float, *, via: IPv4Address | None = None,
                 reverse_tunnel: bool = True, udp_tunnel: bool = False,
                 lifetime: int | None = None) -> None:
        """Register ``care_of``: co-located when ``via`` is None, else through that FA.

        ``via`` is the agent's address as learned from the IP source of its
        advertisement (RFC 5944 3.6.1.1), which need not be ``care_of``.
        ``lifetime`` caps the configured one: through an FA pass the advertised
        Registration Lifetime (3.6.1.2; above it the FA answers 69).
        ``udp_tunnel`` forces an RFC 3519 request whatever the profile says.
        """
        flags, exts = flags_and_extensions(self.config, via, reverse_tunnel, udp_tunnel)
        renewal = self.binding is not None and self.binding.care_of_address == care_of
        self.state = ClientState.RENEWING if renewal else ClientState.REGISTERING
        life = self.config.lifetime if lifetime is None else min(lifetime, self.config.lifetime)
        if via is not None:
            life = min(life, self._fa_lifetime.get(via, life))
        source = care_of if via is None else self.config.home_address
        self._start(Attempt(care_of, life, flags, via, exts, source), now)

    def deregister(self, now: float, *, at_home: bool = True,
                   source: IPv4Address | None = None) -> None:
        """Lifetime 0; at home the care-of address is the home address (RFC 5944 3.6.1.2).
        ``source``: where it leaves from when the binding's co-located address is no
        longer ours (mode mc after charon gave another TIA: from the one it has)."""
        b = None if at_home else self.binding
        coa = self.config.home_address if b is None else b.care_of_address
        via = None if b is None else b.via
        self.state = ClientState.DEREGISTERING
        self._renew_at = None
        # 3.6.1.1: from the home address at home or through the FA that holds the
        # binding, from the co-located care-of address otherwise.
        if source is None:
            source = coa if b is not None and via is None else self.config.home_address
        self._start(Attempt(coa, 0, RegFlags(0), via, (), source), now)

    def deregister_care_of(self, care_of: IPv4Address, now: float) -> None:
        """Lifetime 0 for ``care_of`` alone, sent from it (RFC 5944 3.6.1.2, 3.8.2.2:
        only a binding to that address goes, and there is none).  On a link in the
        home prefix it is the direct probe: its authenticated reply proves the home
        agent answered from here, and asks nothing of it (no binding, no proxy ARP)."""
        self.state = ClientState.DEREGISTERING
        self._renew_at = None
        self._start(Attempt(care_of, 0, RegFlags(0), None, (), care_of), now)

    def reregister(self, now: float) -> bool:
        """Renew the current binding now, e.g. when the NAT mapping may have changed
        (RFC 3519 4.10: keepalives went unanswered).  False if there is nothing to renew."""
        prev = self._renewal
        if self.binding is None or prev is None or self._attempt is not None:
            return False
        self._renew(prev, now)
        return True

    def cancel(self) -> None:
        """Stop: no retransmission, no renewal, no event from later replies.  The
        other path won: whatever this one had bound at the home agent is replaced."""
        self._attempt = None
        self.binding = None
        self._renew_at = None
        self._renewal = None
        self.state = ClientState.IDLE

    def forget_binding(self) -> None:
        """The binding this client made is no longer ours to renew (another path
        replaced it at the home agent); a request in flight goes on."""
        self.binding = None
        self._renew_at = None
        self._renewal = None
        if self._attempt is None:
            self.state = ClientState.IDLE

    @property
    def pending(self) -> bool:
        """A request is out and not yet answered or given up."""
        return self._attempt is not None

    def receive(self, data: bytes, now: float) -> None:
        """A datagram that may be the reply to the request out (else dropped)."""
        a = self._attempt
        if a is None:
            return
        try:
            rep = RegistrationReply.decode(data)
        except DecodeError:
            return
        # RFC 5944 3.6.2.1: the most recent request's low-order 32 bits, else discard.
        if (ident.low(rep.identification) != ident.low(a.identification)
                or rep.home_address != self.config.home_address):
            return
        mhaes = [e for e in rep.extensions
                 if isinstance(e, AuthExtension) and e.ext_type == ExtType.MOBILE_HOME_AUTH]
        if not mhaes and 64 <= rep.code <= 127 and a.via is not None:
            self._fa_denied(a, rep, now)
            return
        if len(mhaes) != 1 or not self._verifies(mhaes[0]):
            # 3.6.2.1 b: silently discarded, whatever its code: it changes nothing here
            # (anyone on the path saw the request in clear and can echo it).
            if a.discarded == 0:  # a security exception (SHOULD log), once per request
                log.warning("discarded a registration reply (code %d) to the request from "
                            "%s to the home agent %s: its Mobile-Home authenticator is "
                            "missing or invalid", rep.code, a.source, self.config.home_agent)
            a.discarded += 1
            self.discarded += 1
            return
        mhae = mhaes[0]
        self._rtt = now - a.first_sent
        self._ids.authenticated(rep.identification)
        if rep.code == ReplyCode.HA_IDENTIFICATION_MISMATCH and a.repairs < MAX_RESYNCS:
            self._ids.resync(rep.identification, a.last_sent, now)
            self._repair(a, now)
            return
        self._attempt = None
        self.last_answer = (now - a.first_sent, now)
        if is_accepted(rep.code):
            self.accepted_sent_at = a.first_sent
        if not is_accepted(rep.code):
            self._events.append(Denied(rep.code, describe(rep.code), a.via))
            self._after_failure(now)
            return
        self._ids.accepted(a.identification)
        if a.lifetime == 0 or rep.lifetime == 0:
            self.binding = None
            self._renew_at = None
            self._renewal = None
            self.state = ClientState.IDLE
            self._events.append(Deregistered())
            return
        protected = rep.extensions[:rep.extensions.index(mhae)]
        # RFC 3519 4.4: tunnel over UDP only if we asked and the home agent assented.
        asked = any(isinstance(e, UdpTunnelRequest) for e in a.extensions)
        utr = next((e for e in protected if isinstance(e, UdpTunnelReply)), None) if asked else (
            None)
        renewal = self.state is ClientState.RENEWING
        # 3.6.2.2: the timer runs from when the request was sent, for what was
        # granted; a home agent must not grant more than asked, so never believe more.
        granted = min(rep.lifetime, a.lifetime)
        start = a.first_sent
        self.binding = Registered(a.care_of, granted, start + granted, now - start,
                                  renewal, utr is not None and utr.code < 64,
                                  utr.keepalive_interval if utr else 0, a.via)
        self._renew_at = start + granted * self.config.renew_fraction
        self.state = ClientState.REGISTERED
        self._events.append(self.binding)
        self._renewal = a

    def handle_timer(self, now: float) -> None:
        """Retransmit, give up (TimedOut), renew or lose the binding, as due at ``now``."""
        a = self._attempt
        if a is not None and now >= a.deadline:
            if a.copies > self.config.retries:
                self._attempt = None
                self._events.append(TimedOut(a.copies, now - a.started, a.discarded, a.via))
                self.state = (ClientState.REGISTERED if self._binding_valid(now)
                              else ClientState.IDLE)
            else:
                a.timeout = min(a.timeout * 2, self._max_timeout(a))
                self._retransmit(a, now)
        if self.binding is not None and now >= self.binding.expires_at:
            self.binding = None
            self._renew_at = None
            self._events.append(BindingLost())
            if self._attempt is None:
                self.state = ClientState.IDLE
        prev = self._renewal
        if (self._renew_at is not None and now >= self._renew_at and self._attempt is None
                and self.binding is not None and prev is not None):
            self._renew(prev, now)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next; None: nothing to wait for."""
        # A renewal waits while another request is out (handle_timer renews only
        # then): its time must not be offered meanwhile, or a caller spins on it.
        times = [t for t in (self._attempt.deadline if self._attempt else None,
                             self._renew_at if self._attempt is None else None,
                             self.binding.expires_at if self.binding else None) if t is not None]
        return min(times) if times else None

    def datagrams_to_send(self) -> Sequence[Datagram]:
        """The requests to put on the wire now, in order."""
        out, self._out = self._out, []
        return out

    def next_event(self) -> Event | None:
        """The next outcome (Registered, Denied, TimedOut, ...); None when there is none."""
        return self._events.popleft() if self._events else None

    # -- internals -------------------------------------------------------------

    def _verifies(self, auth: AuthExtension) -> bool:
        return auth.spi == self.config.spi and len(auth.authenticator) == (
            AUTHENTICATOR_LEN) and verify(self.config.algorithm, self.config.key,
                                          auth.covered, auth.authenticator)

    def _fa_denied(self, a: Attempt, rep: RegistrationReply, now: float) -> None:
        """The foreign agent refused to relay (RFC 5944 3.7.3): it shares no key
        with us, so its denial carries no Mobile-Home authenticator.  Taking it
        (matched by identification) only ends the attempt through the FA."""
        if rep.code == ReplyCode.FA_LIFETIME_TOO_LONG and rep.lifetime > 0 and a.via:
            # 3.6.2.3: the reply's lifetime is the most this FA accepts; every later
            # request through it asks no more (the caller decides when to retry).
            # Unauthenticated (3.6.2.1 a), so anyone on the link could send it: never
            # below a lifetime whose renewals stay 1 s apart (3.6.3).
            self._fa_lifetime[a.via] = max(rep.lifetime, MIN_FA_LIFETIME)
        self._attempt = None
        self.last_answer = (now - a.first_sent, now)
        self._events.append(Denied(rep.code, describe(rep.code), a.via))
        self._after_failure(now)

    def _after_failure(self, now: float) -> None:
        self.state = ClientState.REGISTERED if self.binding and self._binding_valid(now) else (
            ClientState.IDLE)

    def _binding_valid(self, now: float) -> bool:
        return self.binding is not None and now < self.binding.expires_at

    def _max_timeout(self, a: Attempt) -> float:
        # 3.6.3: the longest wait SHOULD not exceed the requested lifetime.
        cap = self.config.max_timeout if a.lifetime == 0 else min(self.config.max_timeout,
                                                                   float(a.lifetime))
        return max(MIN_RETRANSMIT_INTERVAL, cap)

    def _renew(self, prev: Attempt, now: float) -> None:
        self._renew_at = None
        self.state = ClientState.RENEWING
        self._start(Attempt(prev.care_of, prev.lifetime, prev.flags, prev.via,
                             prev.extensions, prev.source), now)

    def _start(self, a: Attempt, now: float) -> None:
        a.started = now
        a.timeout = self._first_timeout(a)
        self._attempt = a
        self._send_new(a, now)

    def _first_timeout(self, a: Attempt) -> float:
        # 3.6.3: at least 1 s, and at least twice the round trip plus 100 ms of
        # processing once a reply has told us what the round trip is.
        t = max(MIN_RETRANSMIT_INTERVAL, self.config.initial_timeout)
        if self._rtt is not None:
            t = max(t, 2 * self._rtt + 0.1)
        return min(t, self._max_timeout(a))

    def _repair(self, a: Attempt, now: float) -> None:
        """A new request at once after a 133 told us how to fix it: the agent is
        there, so this is a new registration, not a retransmission."""
        a.repairs += 1
        a.copies = 0
        a.timeout = max(a.timeout, self._first_timeout(a))
        self._send_new(a, now)

    def _retransmit(self, a: Attempt, now: float) -> None:
        if self.config.replay is ReplayMode.NONCE:
            # 3.6.3: unchanged, so a lost request does not cost the HA a new nonce.
            a.copies += 1
            a.last_sent = now
            a.deadline = now + a.timeout
            self._emit(a)
        else:
            self._send_new(a, now)  # a new identification: a new registration

    def _send_new(self, a: Attempt, now: float) -> None:
        a.identification = self._ids.identification(now)
        a.data = encode(self.config, a)
        a.first_sent = a.last_sent = now
        a.copies += 1
        a.deadline = now + a.timeout
        self._emit(a)

    def _emit(self, a: Attempt) -> None:
        self.last_sent_at = a.last_sent
        self._out.append(datagram(self.config, a))
