"""The foreign agent's relay logic (RFC 5944 sections 3.7, 2.1; RFC 3024), sans-I/O.

It answers what it must deny itself (codes 64-88), relays the rest to the home
agent, matches the home agent's reply to the pending request, keeps the
visitor list, and builds its agent advertisements.  The caller does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address

from app.agents.fa_config import ForeignAgentConfig
from app.mip.auth import append_authenticator, verify
from app.mip.codes import ReplyCode, describe, is_accepted
from app.mip.errors import DecodeError, UnknownExtensionError
from app.mip.extensions import ExtType
from app.mip.icmp import CODE_MOBILITY_ONLY, AgentAdvertisement, AgentFlags
from app.mip.ident import low
from app.mip.messages import RegFlags, RegistrationReply, RegistrationRequest


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


@dataclass(slots=True)
class _Pending:
    request: RegistrationRequest
    source: tuple[IPv4Address, int]
    deadline: float


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

    # -- advertisements --------------------------------------------------------

    def advertisement(self) -> bytes:
        """The next Agent Advertisement; the sequence number counts up (and wraps to 256)."""
        seq = self._sequence
        self._sequence = seq + 1 if seq < 0xFFFF else 256
        flags = AgentFlags.F | (AgentFlags.T if self.config.reverse_tunnelling else 0)
        if self.config.max_visitors <= len(self.visitors):
            flags |= AgentFlags.B
        return AgentAdvertisement(
            seq, self.config.max_lifetime, AgentFlags(flags), (self.config.care_of_address,),
            ((self.config.care_of_address, 0),), self.config.advert_lifetime, None,
            CODE_MOBILITY_ONLY).encode()

    # -- requests from mobile nodes --------------------------------------------

    def from_mobile_node(self, data: bytes, source: tuple[IPv4Address, int], now: float
                         ) -> Result:
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
                              f"malformed: {exc}")
        if req.mobile_home_auth is None:
            return self._deny(res, req, source, ReplyCode.FA_POORLY_FORMED_REQUEST,
                              "no mobile-home authentication extension")
        if req.home_agent == IPv4Address(0) or req.home_address == IPv4Address(0):
            code = (ReplyCode.FA_MISSING_HOME_AGENT if req.home_agent == IPv4Address(0)
                    else ReplyCode.FA_MISSING_HOME_ADDRESS)
            return self._deny(res, req, source, code, "home agent or home address missing")
        if not req.is_deregistration and req.care_of_address != self.config.care_of_address:
            return self._deny(res, req, source, ReplyCode.FA_INVALID_COA,
                              f"care-of address {req.care_of_address} is not this agent's "
                              f"{self.config.care_of_address}")
        if req.lifetime > self.config.max_lifetime and not req.is_deregistration:
            return self._deny(res, req, source, ReplyCode.FA_LIFETIME_TOO_LONG,
                              f"lifetime {req.lifetime} above {self.config.max_lifetime}",
                              lifetime=self.config.max_lifetime)
        flags = req.flags.value
        if flags & (RegFlags.M.value | RegFlags.G.value):
            return self._deny(res, req, source, ReplyCode.FA_ENCAPSULATION_UNAVAILABLE,
                              "only IP-in-IP is offered")
        if flags & RegFlags.T.value and not self.config.reverse_tunnelling:
            return self._deny(res, req, source, ReplyCode.FA_REVERSE_TUNNEL_UNAVAILABLE,
                              "reverse tunnelling is off")
        if self.config.reverse_tunnel_required and not flags & RegFlags.T.value:
            return self._deny(res, req, source, ReplyCode.FA_REVERSE_TUNNEL_MANDATORY,
                              "reverse tunnelling is required here")
        if (req.home_address not in self.visitors
                and len(self.visitors) >= self.config.max_visitors):
            return self._deny(res, req, source, ReplyCode.FA_INSUFFICIENT_RESOURCES,
                              "visitor list full")
        key = (req.home_address, low(req.identification))
        self._pending[key] = _Pending(req, source, now + self.config.registration_timeout)
        sa = self._has.get(req.home_agent)
        if sa is not None:  # FA-side information the home agent can trust
            data = append_authenticator(data, ExtType.FOREIGN_HOME_AUTH, sa.spi, sa.key,
                                        sa.algorithm)
        res.actions.append(ToHomeAgent(data, req.home_agent))
        res.log.append(f"{req.home_address}: relayed to home agent {req.home_agent}")
        return res

    # -- replies from home agents ----------------------------------------------

    def from_home_agent(self, data: bytes, source: tuple[IPv4Address, int], now: float
                        ) -> Result:
        res = Result()
        try:
            rep = RegistrationReply.decode(data)
        except DecodeError as exc:
            res.log.append(f"from home agent {source[0]}: malformed reply dropped: {exc}")
            return res
        pending = self._pending.pop((rep.home_address, low(rep.identification)), None)
        if pending is None:
            res.log.append(f"{rep.home_address}: reply from {source[0]} matches no pending "
                           "request; dropped")
            return res
        req = pending.request
        sa = self._has.get(req.home_agent)
        if sa is not None:
            fhae = rep.foreign_home_auth
            if fhae is None or fhae.spi != sa.spi or not verify(
                    sa.algorithm, sa.key, fhae.covered, fhae.authenticator):
                return self._deny(res, req, pending.source, ReplyCode.FA_HA_AUTH_FAILED,
                                  f"reply from {source[0]} lacks a valid foreign-home "
                                  "authenticator")
        if is_accepted(rep.code):
            if req.is_deregistration or rep.lifetime == 0:
                gone = self.visitors.pop(req.home_address, None)
                if gone is not None:
                    res.actions.append(VisitorDown(gone))
            else:
                v = Visitor(req.home_address, req.home_agent, pending.source,
                            now + rep.lifetime, bool(req.flags & RegFlags.T))
                self.visitors[req.home_address] = v
                res.actions.append(VisitorUp(v))
        # Visitor route first (VisitorUp), then the reply, so it can be delivered.
        res.actions.append(ToMobileNode(data, *pending.source))
        res.log.append(f"{req.home_address}: {describe(rep.code)} (relayed to the mobile node)")
        return res

    # -- time ------------------------------------------------------------------

    def tick(self, now: float) -> Result:
        """Expire visitors and answer 78 for requests the home agent left unanswered."""
        res = Result()
        for key, p in list(self._pending.items()):
            if p.deadline <= now:
                del self._pending[key]
                self._deny(res, p.request, p.source, ReplyCode.FA_REGISTRATION_TIMEOUT,
                           f"no reply from home agent {p.request.home_agent}")
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
              code: ReplyCode, why: str, *, lifetime: int = 0) -> Result:
        # The FA shares no key with the MN: its denials are unauthenticated
        # (RFC 5944 3.7.3.1; an MN-FA key would add an MFAE here).
        rep = RegistrationReply(code, lifetime, req.home_address, req.home_agent,
                                req.identification)
        res.actions.append(ToMobileNode(rep.encode(), *source))
        res.log.append(f"{req.home_address}: {describe(code)}: {why}")
        return res
