"""The foreign agent's relay logic (RFC 5944 sections 3.7, 2.1; RFC 3024), sans-I/O.

It answers what it must deny itself (codes 64-88, at most one denial a second
per mobile node), relays the rest to the home agent (extensions after the
Mobile-Home authenticator removed, its Foreign-Home authenticator added for its
own care-of address), matches the home agent's reply to the pending request
(kept 7 s), keeps the visitor list, and builds its agent advertisements and
their randomised schedule.  The caller does the I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import ClassVar

from app.agents.fa_config import ForeignAgentConfig
from app.mip.auth import AUTHENTICATOR_LEN, append_authenticator, verify
from app.mip.codes import ReplyCode, describe, is_accepted
from app.mip.errors import DecodeError, UnknownExtensionError
from app.mip.extensions import AuthExtension, Extension, ExtType
from app.mip.icmp import CODE_MOBILITY_ONLY, AgentAdvertisement, AgentFlags
from app.mip.ident import low
from app.mip.messages import RegFlags, RegistrationReply, RegistrationRequest

REQUEST_TTL = 255
"""RFC 3024 4.2.1: a request asking for a reverse tunnel arrives with TTL 255."""
DENIAL_INTERVAL = 1.0
"""RFC 5944 3.7.2, RFC 3024 4.2.1: at most one denial a second to a mobile node."""
MIN_ADVERT_GAP = 0.1
"""RFC 5944 2.3: the rate of multicast advertisements is limited, solicited or not."""
MIN_ADVERT_FRACTION = 0.75
"""RFC 1256: intervals uniform in [0.75 x MaxAdvertisementInterval, Max]."""
_UNSPECIFIED = IPv4Address(0)


def _mhae_end(exts: tuple[Extension, ...]) -> int | None:
    """Byte offset just past the Mobile-Home authenticator, if there is one."""
    for e in exts:
        if isinstance(e, AuthExtension) and e.ext_type == ExtType.MOBILE_HOME_AUTH:
            return len(e.covered) + len(e.authenticator)
    return None


@dataclass(frozen=True, slots=True)
class ToHomeAgent:
    data: bytes
    home_agent: IPv4Address


@dataclass(frozen=True, slots=True)
class ToMobileNode:
    data: bytes
    address: IPv4Address
    port: int


@dataclass(frozen=True, slots=True)
class VisitorUp:
    visitor: Visitor


@dataclass(frozen=True, slots=True)
class VisitorDown:
    visitor: Visitor


Action = ToHomeAgent | ToMobileNode | VisitorUp | VisitorDown


@dataclass(frozen=True, slots=True)
class Visitor:
    home_address: IPv4Address
    home_agent: IPv4Address
    source: tuple[IPv4Address, int]
    expires_at: float
    reverse_tunnel: bool
    gre: bool = False
    """Tunnelled in GRE (the request's G bit), both ways: RFC 3024's reverse tunnel
    has the forward tunnel's configuration."""


@dataclass(slots=True)
class _Pending:
    request: RegistrationRequest
    source: tuple[IPv4Address, int]
    deadline: float
    signed: bool = False
    """We added a Foreign-Home authenticator: the reply must carry one too."""


@dataclass(frozen=True, slots=True)
class _Denial:
    """Why a request is denied: the reply's code, the log's reason, and the lifetime
    the reply carries when it is not the request's (RFC 5944 3.7.2.3)."""

    code: ReplyCode
    why: str
    lifetime: int | None = None


@dataclass
class Result:
    actions: list[Action] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


class ForeignAgent:
    def __init__(self, config: ForeignAgentConfig) -> None:
        self.config = config
        self.visitors: dict[IPv4Address, Visitor] = {}
        self._pending: dict[tuple[IPv4Address, int], _Pending] = {}
        self._sequence = 0
        self._has = {h.address: h for h in config.home_agents}
        self._denied_at: dict[IPv4Address, float] = {}
        self._advertised_at: float | None = None

    # -- advertisements --------------------------------------------------------

    def advertisement(self) -> bytes:
        """The next Agent Advertisement; the sequence number counts up (and wraps to 256)."""
        seq = self._sequence
        self._sequence = seq + 1 if seq < 0xFFFF else 256
        flags = AgentFlags.F | (AgentFlags.T if self.config.reverse_tunnelling else 0)
        if self.config.gre:  # 2.1.1: this agent receives GRE-tunnelled datagrams
            flags |= AgentFlags.G
        if self.config.max_visitors <= len(self.visitors):
            flags |= AgentFlags.B
        return AgentAdvertisement(
            seq, self.config.max_lifetime, AgentFlags(flags), (self.config.care_of_address,),
            ((self.config.care_of_address, 0),), self.config.advert_lifetime, None,
            CODE_MOBILITY_ONLY).encode()

    def advert_delay(self, rng: random.Random) -> float:
        """Seconds to the next unsolicited advertisement: randomised (RFC 1256, as
        RFC 5944 2.3 says) so agents on one link do not fall into step."""
        top = self.config.advert_interval
        return rng.uniform(MIN_ADVERT_FRACTION * top, top)

    def may_advertise(self, now: float) -> bool:
        """Whether a (solicited) advertisement may go now; records it if so."""
        if self._advertised_at is not None and now - self._advertised_at < MIN_ADVERT_GAP:
            return False
        self._advertised_at = now
        return True

    # -- requests from mobile nodes --------------------------------------------

    def from_mobile_node(self, data: bytes, source: tuple[IPv4Address, int], now: float,
                         ttl: int | None = None) -> Result:
        """A request from the visitor link; ``ttl`` is its IP TTL when known."""
        res = Result()
        try:
            req = RegistrationRequest.decode(data)
        except UnknownExtensionError as exc:
            res.log.append(f"from {source[0]}: discarded: {exc}")
            return res
        except DecodeError as exc:
            try:
                head = RegistrationRequest.decode_header(data)
            except DecodeError:
                res.log.append(f"from {source[0]}: not a registration request: {exc}")
                return res
            return self._deny(res, head, source, ReplyCode.FA_POORLY_FORMED_REQUEST,
                              f"malformed: {exc}", now=now)
        for check in self._CHECKS:
            denial = check(self, req, ttl)
            if denial is not None:
                return self._deny(res, req, source, denial.code, denial.why, now=now,
                                  lifetime=denial.lifetime)
        return self._relay(res, data, req, source, now)

    def _check_authenticated(self, req: RegistrationRequest, ttl: int | None
                             ) -> _Denial | None:
        """RFC 5944 3.7.2.1, 3.6.1.3: a request without the Mobile-Home authenticator gets 70."""
        if req.mobile_home_auth is None:
            return _Denial(ReplyCode.FA_POORLY_FORMED_REQUEST,
                           "no mobile-home authentication extension")
        return None

    def _check_addresses(self, req: RegistrationRequest, ttl: int | None) -> _Denial | None:
        """RFC 2794 3, RFC 5944 3.7.1: a home agent (98) and a home address (99) are needed."""
        if _UNSPECIFIED in (req.home_agent, req.home_address):
            code = (ReplyCode.FA_MISSING_HOME_AGENT if req.home_agent == _UNSPECIFIED
                    else ReplyCode.FA_MISSING_HOME_ADDRESS)
            return _Denial(code, "home agent or home address missing")
        return None

    def _check_care_of_address(self, req: RegistrationRequest, ttl: int | None
                               ) -> _Denial | None:
        """RFC 5944 3.7.2.1: D clear and lifetime != 0 need our care-of address (77)."""
        if (not req.flags.value & RegFlags.D.value and req.lifetime != 0
                and req.care_of_address != self.config.care_of_address):
            return _Denial(ReplyCode.FA_INVALID_COA,
                           f"care-of address {req.care_of_address} is not this agent's "
                           f"{self.config.care_of_address}")
        return None

    def _check_lifetime(self, req: RegistrationRequest, ttl: int | None) -> _Denial | None:
        """RFC 5944 3.7.2.3: a lifetime above our maximum gets 69, carrying that maximum."""
        if req.lifetime > self.config.max_lifetime and not req.is_deregistration:
            return _Denial(ReplyCode.FA_LIFETIME_TOO_LONG,
                           f"lifetime {req.lifetime} above {self.config.max_lifetime}",
                           self.config.max_lifetime)
        return None

    def _check_encapsulation(self, req: RegistrationRequest, ttl: int | None
                             ) -> _Denial | None:
        """RFC 3024 4.2.1, RFC 5944 4.1: IP-in-IP always, GRE if configured, minimal never (72)."""
        flags = req.flags.value
        if flags & RegFlags.M.value:
            return _Denial(ReplyCode.FA_ENCAPSULATION_UNAVAILABLE,
                           "minimal encapsulation (M) is not offered")
        if flags & RegFlags.G.value and not self.config.gre:
            return _Denial(ReplyCode.FA_ENCAPSULATION_UNAVAILABLE,
                           "GRE encapsulation (G) is turned off (foreign_agent.gre)")
        return None

    def _check_reverse_tunnel_mandatory(self, req: RegistrationRequest, ttl: int | None
                                        ) -> _Denial | None:
        """RFC 3024 4.2.1: where a reverse tunnel is mandatory, a request without T gets 75."""
        if self.config.reverse_tunnel_required and not req.flags.value & RegFlags.T.value:
            return _Denial(ReplyCode.FA_REVERSE_TUNNEL_MANDATORY,
                           "reverse tunnelling is required here")
        return None

    def _check_ttl(self, req: RegistrationRequest, ttl: int | None) -> _Denial | None:
        """RFC 3024 4.2.1: a request for a reverse tunnel arrives with IP TTL 255, else 76."""
        if (req.flags.value & RegFlags.T.value and ttl is not None and ttl != REQUEST_TTL
                and self.config.require_ttl_255):
            return _Denial(ReplyCode.FA_MN_TOO_DISTANT,
                           f"reverse tunnel requested with IP TTL {ttl}, not 255")
        return None

    def _check_reverse_tunnel(self, req: RegistrationRequest, ttl: int | None
                              ) -> _Denial | None:
        """RFC 3024 4.2.1: as the last tunnel check, a reverse tunnel we do not offer gets 74."""
        if req.flags.value & RegFlags.T.value and not self.config.reverse_tunnelling:
            return _Denial(ReplyCode.FA_REVERSE_TUNNEL_UNAVAILABLE, "reverse tunnelling is off")
        return None

    def _check_room(self, req: RegistrationRequest, ttl: int | None) -> _Denial | None:
        """RFC 5944 3.7.1, 2.1.1: a new visitor when the visitor list is full gets 66."""
        if (req.home_address not in self.visitors
                and len(self.visitors) >= self.config.max_visitors):
            return _Denial(ReplyCode.FA_INSUFFICIENT_RESOURCES, "visitor list full")
        return None

    # The request checks in order (RFC 3024 4.2.1's own: 72, 75, 76, and 74 last);
    # each returns the denial or None to go on.
    _CHECKS: ClassVar[tuple[Callable[[ForeignAgent, RegistrationRequest, int | None],
                                     _Denial | None], ...]] = (
        _check_authenticated,             # RFC 5944 3.7.2.1 (70)
        _check_addresses,                 # RFC 2794 3 (98, 99)
        _check_care_of_address,           # RFC 5944 3.7.2.1 (77)
        _check_lifetime,                  # RFC 5944 3.7.2.3 (69)
        _check_encapsulation,             # RFC 3024 4.2.1, RFC 5944 4.1 (72)
        _check_reverse_tunnel_mandatory,  # RFC 3024 4.2.1 (75)
        _check_ttl,                       # RFC 3024 4.2.1 (76)
        _check_reverse_tunnel,            # RFC 3024 4.2.1 (74)
        _check_room,                      # RFC 5944 3.7.1 (66)
    )

    def _relay(self, res: Result, data: bytes, req: RegistrationRequest,
               source: tuple[IPv4Address, int], now: float) -> Result:
        """RFC 5944 3.7.2.2, 3.7.1: relay up to the MHAE, signed for the HA; keep it pending."""
        # 3.7.1: kept 7 s (the configured timeout is at least that), or for the
        # requested lifetime if shorter (3.7.2.2).
        wait = self.config.registration_timeout
        if 0 < req.lifetime < wait:
            wait = float(req.lifetime)
        # 3.7.2.2: what follows the Mobile-Home authenticator is for this agent:
        # processed and removed, never passed on.
        end = _mhae_end(req.extensions)
        relay = data if end is None else data[:end]
        sa = self._has.get(req.home_agent)
        # 3.8.2.2: no Foreign-Home authenticator on a deregistration of a care-of
        # address that is not ours; 3.7.2.2: one on every registration if we share a key.
        signed = sa is not None and req.care_of_address == self.config.care_of_address
        if sa is not None and signed:
            relay = append_authenticator(relay, ExtType.FOREIGN_HOME_AUTH, sa.spi, sa.key,
                                         sa.algorithm)
        key = (req.home_address, low(req.identification))
        self._pending[key] = _Pending(req, source, now + wait, signed)
        res.actions.append(ToHomeAgent(relay, req.home_agent))
        res.log.append(f"{req.home_address}: relayed to home agent {req.home_agent}")
        return res

    # -- replies from home agents ----------------------------------------------

    def from_home_agent(self, data: bytes, source: tuple[IPv4Address, int], now: float
                        ) -> Result:
        """A reply from a home agent, for a pending request: checked, then relayed."""
        res = Result()
        try:
            rep = RegistrationReply.decode(data)
        except DecodeError as exc:
            res.log.append(f"from home agent {source[0]}: malformed reply dropped: {exc}")
            return res
        # 3.7.3.1: a reply that matches no pending request is silently discarded.
        pending = self._pending.pop((rep.home_address, low(rep.identification)), None)
        if pending is None:
            res.log.append(f"{rep.home_address}: reply from {source[0]} matches no pending "
                           "request; dropped")
            return res
        req = pending.request
        if not self._reply_authentic(pending, rep):
            return self._deny(res, req, pending.source, ReplyCode.FA_HA_AUTH_FAILED,
                              f"reply from {source[0]} lacks a valid foreign-home "
                              "authenticator", now=now)
        if is_accepted(rep.code):
            self._update_visitor(res, pending, rep, now)
        # 3.7.3.2: extensions not covered by the Mobile-Home authenticator (ours,
        # the Foreign-Home one) are removed before the mobile node sees the reply.
        end = _mhae_end(rep.extensions)
        out = data if end is None else data[:end]
        # Visitor route first (VisitorUp), then the reply, so it can be delivered.
        res.actions.append(ToMobileNode(out, *pending.source))
        res.log.append(f"{req.home_address}: {describe(rep.code)} (relayed to the mobile node)")
        return res

    def _reply_authentic(self, pending: _Pending, rep: RegistrationReply) -> bool:
        """RFC 5944 3.7.3.1: exactly one valid Foreign-Home authenticator where one is due."""
        sa = self._has.get(pending.request.home_agent)
        # Due when the reply grants a lifetime, and whenever we signed the request
        # (the HA then signs back).
        if sa is None or (rep.lifetime == 0 and not pending.signed):
            return True
        fhaes = [e for e in rep.extensions if isinstance(e, AuthExtension)
                 and e.ext_type == ExtType.FOREIGN_HOME_AUTH]
        return len(fhaes) == 1 and fhaes[0].spi == sa.spi and len(
            fhaes[0].authenticator) == AUTHENTICATOR_LEN and verify(
            sa.algorithm, sa.key, fhaes[0].covered, fhaes[0].authenticator)

    def _update_visitor(self, res: Result, pending: _Pending, rep: RegistrationReply,
                        now: float) -> None:
        """RFC 5944 3.7.3.2: an accepted registration adds the visitor; lifetime 0 drops it."""
        req = pending.request
        if req.is_deregistration or rep.lifetime == 0:
            gone = self.visitors.pop(req.home_address, None)
            if gone is not None:
                res.actions.append(VisitorDown(gone))
            return
        # The lesser of what the HA granted and our own maximum, counted from now
        # (when the reply is forwarded).
        life = min(rep.lifetime, self.config.max_lifetime)
        v = Visitor(req.home_address, req.home_agent, pending.source, now + life,
                    bool(req.flags & RegFlags.T), bool(req.flags & RegFlags.G))
        self.visitors[req.home_address] = v
        res.actions.append(VisitorUp(v))

    # -- time ------------------------------------------------------------------

    def tick(self, now: float) -> Result:
        """Expire visitors and answer 78 for requests the home agent left unanswered."""
        res = Result()
        for key, p in list(self._pending.items()):
            if p.deadline <= now:
                del self._pending[key]
                self._deny(res, p.request, p.source, ReplyCode.FA_REGISTRATION_TIMEOUT,
                           f"no reply from home agent {p.request.home_agent}", now=now)
        for hoa, v in list(self.visitors.items()):
            if v.expires_at <= now:
                del self.visitors[hoa]
                res.actions.append(VisitorDown(v))
                res.log.append(f"{hoa}: visitor entry expired")
        return res

    def next_deadline(self) -> float | None:
        times = [p.deadline for p in self._pending.values()]
        times += [v.expires_at for v in self.visitors.values()]
        return min(times) if times else None

    def _deny(self, res: Result, req: RegistrationRequest, source: tuple[IPv4Address, int],
              code: ReplyCode, why: str, *, now: float, lifetime: int | None = None
              ) -> Result:
        # The FA shares no key with the MN: its denials are unauthenticated
        # (RFC 5944 3.7.3.1; an MN-FA key would add an MFAE here).  3.7.2.3: the
        # lifetime is the request's, except for 69 (our maximum).
        last = self._denied_at.get(req.home_address)
        if last is not None and 0 <= now - last < DENIAL_INTERVAL:
            res.log.append(f"{req.home_address}: {describe(code)}: {why} (not answered: "
                           "one denial a second)")
            return res
        if len(self._denied_at) > 4096:  # forget mobile nodes denied long ago
            self._denied_at = {h: t for h, t in self._denied_at.items()
                               if now - t < DENIAL_INTERVAL}
        self._denied_at[req.home_address] = now
        rep = RegistrationReply(code, req.lifetime if lifetime is None else lifetime,
                                req.home_address, req.home_agent, req.identification)
        res.actions.append(ToMobileNode(rep.encode(), *source))
        res.log.append(f"{req.home_address}: {describe(code)}: {why}")
        return res
