"""The home agent's registration logic (RFC 5944 section 3.8), sans-I/O.

:class:`HomeAgent` never touches a socket, a file or a clock.  The caller
hands it the bytes of a request, where they came from and the time; it gets
back an :class:`Outcome`: the reply to send (or none), the binding changes
and replay state to persist *before* sending, and a line for the log.
"""

from __future__ import annotations

import heapq
import secrets
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from app.agents.bindings import Binding, BindingChange, ChangeKind, ReplayState
from app.agents.ha_config import ForeignAgentSA, HomeAgentConfig, MobileNodeConfig, ReplayStyle
from app.mip import ident
from app.mip.auth import AUTHENTICATOR_LEN, append_authenticator, verify
from app.mip.codes import ReplyCode, describe
from app.mip.errors import DecodeError, UnknownExtensionError
from app.mip.extensions import (
    ENCAP_IPIP,
    UDP_TUNNEL_ACCEPTED,
    UDP_TUNNEL_DECLINED,
    Extension,
    ExtType,
    NaiExtension,
    UdpTunnelReply,
    UdpTunnelRequest,
)
from app.mip.messages import (
    INFINITE_LIFETIME,
    TYPE_REPLY,
    RegFlags,
    RegistrationRequest,
)

UNSPECIFIED = IPv4Address("0.0.0.0")
_REPLY_HEAD = struct.Struct("!BBHIIQ")  # the reply is built directly: this is the hot path
_S, _D, _M, _G, _T = (f.value for f in (RegFlags.S, RegFlags.D, RegFlags.M, RegFlags.G,
                                        RegFlags.T))


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do with one received datagram."""

    reply: bytes | None
    """Send this back to the source; None means the datagram is silently discarded."""
    code: int | None
    home_address: IPv4Address | None
    log_format: str
    """printf-style, formatted only if the line is logged (the accept path is hot)."""
    changes: tuple[BindingChange, ...] = ()
    replay: tuple[IPv4Address, ReplayState] | None = None
    """Replay state to persist with the changes."""
    log_args: tuple[object, ...] = ()

    @property
    def log(self) -> str:
        return self.log_format % self.log_args if self.log_args else self.log_format

    @property
    def accepted(self) -> bool:
        return self.code in (0, 1)


@dataclass(slots=True)
class _Request:
    """A decoded request and what the checks learned about it."""

    req: RegistrationRequest
    source: tuple[IPv4Address, int]
    home_address: IPv4Address
    mn: MobileNodeConfig | None = None
    protected: tuple[Extension, ...] = field(default=())
    fa: ForeignAgentSA | None = None
    """Set when the request came through a foreign agent we share a key with."""


_NO_STATE = ReplayState()


def _what(previous: Binding | None, binding: Binding) -> str:
    if previous is None:
        return "new binding"
    return "renewed" if previous.care_of_address == binding.care_of_address else "moved"


class HomeAgent:
    """Binding cache plus the RFC 5944 request checks, in RFC order."""

    def __init__(self, config: HomeAgentConfig, bindings: Iterable[Binding] = (),
                 replay: Mapping[IPv4Address, ReplayState] | None = None,
                 nonce: Callable[[], int] = lambda: secrets.randbits(32)) -> None:
        self.config = config
        # Keyed by the address as an int: IPv4Address hashes via hex(), which
        # costs more than the rest of a dict lookup on this hot path.
        self._by_hoa = {int(k): v for k, v in config.by_home_address().items()}
        self._by_nai = config.by_nai()
        self._fas = {int(f.care_of_address): f for f in config.foreign_agents}
        self._bindings: dict[int, Binding] = {}
        self._replay: dict[int, ReplayState] = {int(k): v for k, v in (replay or {}).items()}
        self._expiry: list[tuple[float, int]] = []
        self._nonce = nonce
        self._ha_int = int(config.address)
        for b in bindings:
            self._bindings[int(b.home_address)] = b
            self._expiry.append((b.expires_at, int(b.home_address)))
        heapq.heapify(self._expiry)

    # -- queries ---------------------------------------------------------------

    @property
    def bindings(self) -> Mapping[IPv4Address, Binding]:
        return {b.home_address: b for b in self._bindings.values()}

    def replay_state(self, home_address: IPv4Address) -> ReplayState:
        return self._replay.get(int(home_address), _NO_STATE)

    def next_expiry(self) -> float | None:
        """When :meth:`expire` next has work, or None with no bindings."""
        while self._expiry:
            at, hoa = self._expiry[0]
            b = self._bindings.get(hoa)
            if b is not None and b.expires_at == at:
                return at
            heapq.heappop(self._expiry)  # stale entry of a renewed or removed binding
        return None

    # -- events ----------------------------------------------------------------

    def expire(self, now: float) -> list[BindingChange]:
        """Drop every binding whose lifetime has run out by ``now``."""
        out: list[BindingChange] = []
        while self._expiry and self._expiry[0][0] <= now:
            at, hoa = heapq.heappop(self._expiry)
            b = self._bindings.get(hoa)
            if b is not None and b.expires_at == at:
                del self._bindings[hoa]
                out.append(BindingChange(ChangeKind.EXPIRED, b))
        return out

    def handle_request(self, data: bytes, source: tuple[IPv4Address, int], now: float
                       ) -> Outcome:
        """Process one datagram received on the registration port."""
        try:
            req = RegistrationRequest.decode(data)
        except UnknownExtensionError as exc:
            # RFC 5944 section 1.9: silently discard, no reply.
            return Outcome(None, None, None, "%s:%d: discarded: %s", log_args=(*source, exc))
        except DecodeError as exc:
            try:
                head = RegistrationRequest.decode_header(data)
            except DecodeError as exc2:
                return Outcome(None, None, None, "%s:%d: discarded: %s",
                               log_args=(*source, exc2))
            r = _Request(head, source, head.home_address,
                         self._by_hoa.get(int(head.home_address)), fa=self._fa_of(head))
            return self._deny(r, ReplyCode.HA_POORLY_FORMED_REQUEST, now, f"malformed: {exc}")
        return self._process(_Request(req, source, req.home_address, fa=self._fa_of(req)), now)

    def _fa_of(self, req: RegistrationRequest) -> ForeignAgentSA | None:
        """The FA relaying this request, if we share a key (no D bit: the CoA is the FA's)."""
        if not self._fas or req.flags.value & _D:
            return None
        return self._fas.get(int(req.care_of_address))

    # -- the checks ------------------------------------------------------------

    def _process(self, r: _Request, now: float) -> Outcome:
        req = r.req
        mhae = req.mobile_home_auth
        # Extensions after the MHAE are not covered by it, so the HA acts only on
        # those before it (RFC 5944 section 3.6.1.3 puts the NAI and RFC 3519's
        # request there).
        r.protected = req.extensions
        if mhae is not None:
            r.protected = req.extensions[:req.extensions.index(mhae)]
        nai = next((e.nai for e in r.protected if isinstance(e, NaiExtension)), None)

        # 1. poorly formed (134)
        if req.home_address == UNSPECIFIED:
            if nai is None:
                return self._deny(r, ReplyCode.HA_POORLY_FORMED_REQUEST, now,
                                  "home address 0.0.0.0 without an NAI extension")
            r.mn = self._by_nai.get(nai)
            if r.mn is not None:
                r.home_address = r.mn.home_address  # RFC 2794: the HA assigns it
        else:
            r.mn = self._by_hoa.get(int(req.home_address))
        if req.lifetime != 0 and req.care_of_address == UNSPECIFIED:
            return self._deny(r, ReplyCode.HA_POORLY_FORMED_REQUEST, now,
                              "care-of address 0.0.0.0 in a registration")
        if sum(1 for e in req.extensions if isinstance(e, UdpTunnelRequest)) > 1:
            return self._deny(r, ReplyCode.HA_POORLY_FORMED_REQUEST, now,
                              "more than one UDP Tunnel Request extension")

        # 2. authentication (131)
        if r.mn is None:
            who = f"NAI {nai!r}" if req.home_address == UNSPECIFIED else "this home address"
            return self._deny(r, ReplyCode.HA_MN_AUTH_FAILED, now,
                              f"no security association for {who}")
        if mhae is None:
            return self._deny(r, ReplyCode.HA_MN_AUTH_FAILED, now,
                              "no mobile-home authentication extension")
        if mhae.spi != r.mn.spi:
            return self._deny(r, ReplyCode.HA_MN_AUTH_FAILED, now, f"unknown SPI {mhae.spi}")
        if len(mhae.authenticator) != AUTHENTICATOR_LEN or not verify(
                r.mn.algorithm, r.mn.key, mhae.covered, mhae.authenticator):
            return self._deny(r, ReplyCode.HA_MN_AUTH_FAILED, now,
                              "authenticator does not verify")
        if nai is not None and r.mn.nai is not None and nai != r.mn.nai:
            return self._deny(r, ReplyCode.HA_MN_AUTH_FAILED, now,
                              f"NAI {nai!r} does not belong to this home address")

        # 2b. foreign agent authentication (132): through an FA we share a key with,
        # the request must carry its valid Foreign-Home authenticator.
        if r.fa is not None:
            fhae = req.foreign_home_auth
            if fhae is None:
                return self._deny(r, ReplyCode.HA_FA_AUTH_FAILED, now,
                                  f"no foreign-home authenticator from FA {r.fa.care_of_address}")
            if fhae.spi != r.fa.spi or len(fhae.authenticator) != AUTHENTICATOR_LEN or not (
                    verify(r.fa.algorithm, r.fa.key, fhae.covered, fhae.authenticator)):
                return self._deny(r, ReplyCode.HA_FA_AUTH_FAILED, now,
                                  f"foreign-home authenticator of FA {r.fa.care_of_address} "
                                  "does not verify")

        # 3. identification (133)
        key = int(r.home_address)
        state = self._replay.get(key, _NO_STATE)
        if r.mn.replay is ReplayStyle.TIMESTAMP:
            if not ident.timestamp_acceptable(req.identification, state.last_identification,
                                              now, self.config.replay_window):
                reply_id = ident.mismatch_reply_ident(req.identification, now)
                why = ("identification not newer than the last accepted"
                       if abs(ident.unix_from_ntp(req.identification) - now)
                       <= self.config.replay_window
                       else f"timestamp {ident.unix_from_ntp(req.identification) - now:+.1f} s "
                            "off the home agent's clock")
                return self._deny(r, ReplyCode.HA_IDENTIFICATION_MISMATCH, now, why,
                                  identification=reply_id)
            new_state = ReplayState(last_identification=req.identification)
            reply_id = req.identification
        else:
            if state.ha_nonce is None or ident.high(req.identification) != state.ha_nonce:
                fresh = self._nonce()
                new_state = ReplayState(ha_nonce=fresh)
                self._replay[key] = new_state
                return self._deny(r, ReplyCode.HA_IDENTIFICATION_MISMATCH, now,
                                  "nonce does not match the home agent's",
                                  identification=ident.join(fresh, ident.low(req.identification)),
                                  replay=new_state)
            fresh = self._nonce()
            new_state = ReplayState(ha_nonce=fresh)
            reply_id = ident.join(fresh, ident.low(req.identification))
        # From here on the request is authentic and fresh: remember it, so the
        # same bytes cannot be replayed whatever the answer.
        self._replay[key] = new_state

        def deny(code: ReplyCode, why: str) -> Outcome:
            return self._deny(r, code, now, why, identification=reply_id, replay=new_state)

        # 4. home agent address (136)
        if req.home_agent != self.config.address:
            return deny(ReplyCode.HA_UNKNOWN_HA_ADDRESS,
                        f"home agent field {req.home_agent} is not {self.config.address}")

        if req.is_deregistration:
            return self._deregister(r, now, reply_id, new_state)

        # 5. tunnelling options (137, 139, 142, 129)
        flags = req.flags.value  # plain int: IntFlag arithmetic is slow on the hot path
        if flags & _T and not self.config.reverse_tunnelling:
            return deny(ReplyCode.HA_REVERSE_TUNNEL_UNAVAILABLE, "reverse tunnelling is off")
        if flags & (_M | _G):
            return deny(ReplyCode.HA_ENCAPSULATION_UNAVAILABLE,
                        "only IP-in-IP encapsulation is offered (M or G requested)")
        src_addr, src_port = r.source
        nat = bool(flags & _D) and src_addr != req.care_of_address
        utr = next((e for e in r.protected if isinstance(e, UdpTunnelRequest)), None)
        reply_exts: list[Extension] = []
        udp = False
        if utr is not None:
            if nat or utr.force:
                if not self.config.udp_tunnelling:
                    return deny(ReplyCode.HA_UDP_ENCAPSULATION_UNAVAILABLE,
                                "UDP tunnelling is disabled on this home agent")
                if utr.encapsulation != ENCAP_IPIP:
                    return deny(ReplyCode.HA_UDP_ENCAPSULATION_UNAVAILABLE,
                                f"UDP tunnel encapsulation {utr.encapsulation} unavailable "
                                "(only IP-in-IP, 4)")
                udp = True
                reply_exts.append(UdpTunnelReply(UDP_TUNNEL_ACCEPTED, utr.force,
                                                 self.config.keepalive_interval))
            else:
                reply_exts.append(UdpTunnelReply(UDP_TUNNEL_DECLINED, False, 0))
        elif nat:
            # IP-in-IP cannot cross a NAT to the mobile node: refuse rather than
            # accept a binding that would black-hole its traffic.
            return deny(ReplyCode.HA_PROHIBITED,
                        f"NAT detected (request from {src_addr}, care-of address "
                        f"{req.care_of_address}) and no UDP tunnel requested")

        # 6. accept
        requested = req.lifetime
        lifetime = min(requested, self.config.max_lifetime)
        if requested == INFINITE_LIFETIME:
            lifetime = self.config.max_lifetime
        code = ReplyCode.ACCEPTED_NO_SIMULTANEOUS if flags & _S else ReplyCode.ACCEPTED
        previous = self._bindings.get(key)
        binding = Binding(
            home_address=r.home_address, care_of_address=req.care_of_address,
            lifetime=lifetime, registered_at=now, expires_at=now + lifetime,
            flags=req.flags, source_address=src_addr, source_port=src_port,
            udp_tunnel=udp, keepalive_interval=self.config.keepalive_interval if udp else 0,
            nat_detected=nat, nai=nai)
        self._bindings[key] = binding
        heapq.heappush(self._expiry, (binding.expires_at, key))
        if len(self._expiry) > 2 * len(self._bindings) + 1024:
            # Every renewal leaves a stale deadline behind; rebuild rather than
            # let the heap grow with the request rate.
            self._expiry = [(b.expires_at, k) for k, b in self._bindings.items()]
            heapq.heapify(self._expiry)
        kind = ChangeKind.ADDED if previous is None else ChangeKind.UPDATED
        reply = self._reply(r, code, lifetime, reply_id, reply_exts)
        return Outcome(reply, code, r.home_address, "%s: %s -> %s%s%s, lifetime %d%s: %s",
                       (BindingChange(kind, binding, previous),), (r.home_address, new_state),
                       (r.home_address, _what(previous, binding), req.care_of_address,
                        " via UDP tunnel" if udp else "", " (NAT)" if nat else "", lifetime,
                        f" (asked {requested})" if lifetime != requested else "",
                        describe(code)))

    def _deregister(self, r: _Request, now: float, reply_id: int, state: ReplayState
                    ) -> Outcome:
        previous = self._bindings.pop(int(r.home_address), None)
        changes = () if previous is None else (BindingChange(ChangeKind.REMOVED, previous),)
        note = "binding removed" if previous else "no binding to remove"
        reply = self._reply(r, ReplyCode.ACCEPTED, 0, reply_id, [])
        return Outcome(reply, ReplyCode.ACCEPTED, r.home_address,
                       f"{r.home_address}: deregistered ({note})", changes,
                       (r.home_address, state))

    def _deny(self, r: _Request, code: ReplyCode, now: float, why: str, *,
              identification: int | None = None, replay: ReplayState | None = None
              ) -> Outcome:
        ident_out = r.req.identification if identification is None else identification
        reply = self._reply(r, code, 0, ident_out, [])
        src = f"{r.source[0]}:{r.source[1]}"
        return Outcome(reply, code, r.home_address,
                       f"{r.home_address} from {src}: {describe(code)}: {why}",
                       replay=None if replay is None else (r.home_address, replay))

    def _reply(self, r: _Request, code: int, lifetime: int, identification: int,
               exts: list[Extension]) -> bytes:
        msg = _REPLY_HEAD.pack(TYPE_REPLY, code, lifetime, int(r.home_address),
                               self._ha_int, identification)
        if exts:
            msg += b"".join(e.encode() for e in exts)
        if r.mn is None:
            return msg  # no security association to sign with
        msg = append_authenticator(msg, ExtType.MOBILE_HOME_AUTH, r.mn.spi, r.mn.key,
                                   r.mn.algorithm)
        if r.fa is not None:  # the relaying FA checks the reply came from us
            msg = append_authenticator(msg, ExtType.FOREIGN_HOME_AUTH, r.fa.spi, r.fa.key,
                                       r.fa.algorithm)
        return msg
