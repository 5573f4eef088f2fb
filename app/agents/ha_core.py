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
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import ClassVar

from app.agents.bindings import Binding, BindingChange, ChangeKind, HaReplayState
from app.agents.ha_config import ForeignAgentSA, HomeAgentConfig, MobileNodeConfig, ReplayStyle
from app.mip import ident
from app.mip.auth import AUTHENTICATOR_LEN, append_authenticator, verify
from app.mip.codes import ReplyCode, describe
from app.mip.errors import DecodeError, UnknownExtensionError
from app.mip.extensions import (
    ENCAP_GRE,
    ENCAP_IPIP,
    ENCAP_MINIMAL,
    UDP_TUNNEL_ACCEPTED,
    UDP_TUNNEL_DECLINED,
    AuthExtension,
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
    replay: tuple[IPv4Address, HaReplayState] | None = None
    """Replay state to persist with the changes."""
    log_args: tuple[object, ...] = ()
    home_link: bool = False
    """Send the reply straight onto the home link, ignoring any binding for its
    destination (RFC 5944 3.8.3.1: the mobile node is at home)."""

    @property
    def log(self) -> str:
        return self.log_format % self.log_args if self.log_args else self.log_format

    @property
    def accepted(self) -> bool:
        return self.code in (0, 1)


_NO_STATE = HaReplayState()


@dataclass(slots=True)
class _Request:
    """A decoded request and what the checks learned about it, step by step."""

    req: RegistrationRequest
    source: tuple[IPv4Address, int]
    home_address: IPv4Address
    mn: MobileNodeConfig | None = None
    protected: tuple[Extension, ...] = ()
    """The extensions before the Mobile-Home authenticator: the mobile node's."""
    fa_exts: tuple[Extension, ...] = ()
    """The extensions after it: the foreign agent's (RFC 5944 3.7.2.2)."""
    nai: str | None = None
    relay_fa: ForeignAgentSA | None = None
    """The foreign agent we share a key with that relayed the request, verified or not."""
    fhaes: tuple[AuthExtension, ...] = ()
    fa_problem: str | None = None
    """Why the Foreign-Home authentication failed; None if it held or there is no FA."""
    fa: ForeignAgentSA | None = None
    """Set once the request's Foreign-Home authenticator verified with this SA:
    the reply then carries one for that foreign agent."""
    reply_id: int = 0
    """The reply's identification, once the request's identification was accepted."""
    replay: HaReplayState = _NO_STATE
    """The replay state that consumes this request's identification (or nonce)."""
    utr: UdpTunnelRequest | None = None
    utr_from_fa: bool = False
    """The UDP Tunnel Request was added by a foreign agent (RFC 3519 4.5)."""
    nat: bool = False
    udp: bool = False
    """The binding is a UDP tunnel (RFC 3519)."""
    encap_mg: int = 0
    """The M and G bits that still choose the tunnel's encapsulation."""
    utr_reply: UdpTunnelReply | None = None


def _what(previous: Binding | None, binding: Binding) -> str:
    if previous is None:
        return "new binding"
    return "renewed" if previous.care_of_address == binding.care_of_address else "moved"


class HomeAgent:
    """Binding cache plus the RFC 5944 request checks, in RFC order."""

    def __init__(self, config: HomeAgentConfig, bindings: Iterable[Binding] = (),
                 replay: Mapping[IPv4Address, HaReplayState] | None = None,
                 nonce: Callable[[], int] = lambda: secrets.randbits(32)) -> None:
        self.config = config
        # Keyed by the address as an int: IPv4Address hashes via hex(), which
        # costs more than the rest of a dict lookup on this hot path.
        self._by_hoa = {int(k): v for k, v in config.by_home_address().items()}
        self._by_nai = config.by_nai()
        self._fas = {int(f.care_of_address): f for f in config.foreign_agents}
        self._bindings: dict[int, Binding] = {}
        self._replay: dict[int, HaReplayState] = {int(k): v for k, v in (replay or {}).items()}
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

    def replay_state(self, home_address: IPv4Address) -> HaReplayState:
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
                         self._by_hoa.get(int(head.home_address)))
            if r.mn is None:
                return self._discard(r, "no security association for this home address")
            return self._deny(r, ReplyCode.HA_POORLY_FORMED_REQUEST, f"malformed: {exc}")
        return self._process(_Request(req, source, req.home_address), now)

    def _fa_of(self, r: _Request) -> ForeignAgentSA | None:
        """The foreign agent we share a key with that relayed this request: known by
        the care-of address it advertises (no D bit) or by the address it sent from."""
        if not self._fas:
            return None
        fa = None if r.req.flags.value & _D else self._fas.get(int(r.req.care_of_address))
        return fa or self._fas.get(int(r.source[0]))

    def _discard(self, r: _Request, why: str) -> Outcome:
        return Outcome(None, None, r.home_address, "%s from %s:%d: discarded: %s",
                       log_args=(r.home_address, *r.source, why))

    # -- the checks, one function per RFC step; their order is _STEPS below ----

    def _read_extensions(self, r: _Request) -> None:
        """RFC 5944 3.6.1.3, 3.7.2.2: the MHAE covers the mobile node's extensions, not the FA's."""
        # The HA acts only on the extensions before the MHAE (the NAI and RFC 3519's
        # request are there); after it come the foreign agent's.
        exts = r.req.extensions
        mhae = r.req.mobile_home_auth
        r.protected = exts
        if mhae is not None:
            at = exts.index(mhae)
            r.protected, r.fa_exts = exts[:at], exts[at + 1:]
        r.nai = next((e.nai for e in r.protected if isinstance(e, NaiExtension)), None)

    def _verify_foreign_agent(self, r: _Request) -> None:
        """RFC 5944 3.8.2.1c: the FA's authenticator, checked first, acted on after 3.8.2.1b."""
        # A valid one means every reply, 131 and 133 included, carries one for the
        # FA, which would otherwise turn it into a 68.
        r.relay_fa = self._fa_of(r)
        if r.fa_exts:
            r.fhaes = tuple(e for e in r.fa_exts if isinstance(e, AuthExtension)
                            and e.ext_type == ExtType.FOREIGN_HOME_AUTH)
        if r.relay_fa is not None:
            r.fa_problem = self._fhae_problem(r.relay_fa, r.fhaes)
            if r.fa_problem is None:
                r.fa = r.relay_fa

    def _identify(self, r: _Request, now: float) -> Outcome | None:
        """RFC 5944 3.8.2.1a, RFC 2794: which mobile node; one we share no key with is discarded."""
        req = r.req
        if req.home_address == UNSPECIFIED:
            if r.nai is None:
                return self._deny(r, ReplyCode.HA_POORLY_FORMED_REQUEST,
                                  "home address 0.0.0.0 without an NAI extension")
            r.mn = self._by_nai.get(r.nai)
            if r.mn is not None:
                r.home_address = r.mn.home_address  # RFC 2794: the HA assigns it
        else:
            r.mn = self._by_hoa.get(int(req.home_address))
        if r.mn is None:
            who = f"NAI {r.nai!r}" if req.home_address == UNSPECIFIED else "this home address"
            return self._discard(r, f"no security association for {who}")
        return None

    def _authenticate(self, r: _Request, now: float) -> Outcome | None:
        """RFC 5944 3.8.2.1a: no Mobile-Home authenticator is a discard, a wrong one a 131."""
        mn, mhae = r.mn, r.req.mobile_home_auth
        assert mn is not None  # _identify found it
        if mhae is None:
            return self._discard(r, "no mobile-home authentication extension")
        if mhae.spi != mn.spi:
            return self._deny(r, ReplyCode.HA_MN_AUTH_FAILED, f"unknown SPI {mhae.spi}")
        if len(mhae.authenticator) != AUTHENTICATOR_LEN or not verify(
                mn.algorithm, mn.key, mhae.covered, mhae.authenticator):
            return self._deny(r, ReplyCode.HA_MN_AUTH_FAILED, "authenticator does not verify")
        if r.nai is not None and mn.nai is not None and r.nai != mn.nai:
            return self._deny(r, ReplyCode.HA_MN_AUTH_FAILED,
                              f"NAI {r.nai!r} does not belong to this home address")
        return None

    def _check_identification(self, r: _Request, now: float) -> Outcome | None:
        """RFC 5944 3.8.2.1b, 5.7: a stale identification gets 133, before anything about the FA."""
        assert r.mn is not None  # _identify found it
        if r.mn.replay is ReplayStyle.TIMESTAMP:
            return self._check_timestamp(r, now)
        return self._check_nonce(r)

    def _check_timestamp(self, r: _Request, now: float) -> Outcome | None:
        """RFC 5944 5.7.1: newer than the last accepted and within the window of our clock."""
        req = r.req
        state = self._replay.get(int(r.home_address), _NO_STATE)
        if not ident.timestamp_acceptable(req.identification, state.last_identification,
                                          now, self.config.replay_window):
            reply_id = ident.mismatch_reply_ident(req.identification, now)
            why = ("identification not newer than the last accepted"
                   if abs(ident.unix_from_ntp(req.identification) - now)
                   <= self.config.replay_window
                   else f"timestamp {ident.unix_from_ntp(req.identification) - now:+.1f} s "
                        "off the home agent's clock")
            return self._deny(r, ReplyCode.HA_IDENTIFICATION_MISMATCH, why,
                              identification=reply_id)
        r.replay = HaReplayState(last_identification=req.identification)
        r.reply_id = req.identification
        return None

    def _check_nonce(self, r: _Request) -> Outcome | None:
        """RFC 5944 5.7.2: the high half echoes our nonce; the reply gives the next one."""
        req = r.req
        key = int(r.home_address)
        state = self._replay.get(key, _NO_STATE)
        if state.ha_nonce is None or ident.high(req.identification) != state.ha_nonce:
            # The reply gives the nonce to use.  One not yet used is given again: a
            # delayed copy of a request (3.6.3 resends it unchanged) must not void the
            # nonce the node is about to use.
            fresh = self._nonce() if state.ha_nonce is None else state.ha_nonce
            new_state = HaReplayState(ha_nonce=fresh)
            self._replay[key] = new_state
            return self._deny(r, ReplyCode.HA_IDENTIFICATION_MISMATCH,
                              "nonce does not match the home agent's",
                              identification=ident.join(fresh, ident.low(req.identification)),
                              replay=new_state)
        fresh = self._nonce()
        r.replay = HaReplayState(ha_nonce=fresh)
        r.reply_id = ident.join(fresh, ident.low(req.identification))
        return None

    def _check_foreign_agent(self, r: _Request, now: float) -> Outcome | None:
        """RFC 5944 3.8.2.1c/d: an FA we share a key with must sign (132); one we don't, never."""
        # Required for registrations (lifetime != 0), and checked whenever present.
        fa = r.relay_fa
        if fa is not None and (r.req.lifetime != 0 or r.fhaes) and r.fa_problem is not None:
            # The request itself was authentic and fresh: consume its identification
            # (or nonce), so no one can replay it with a better FA authenticator.
            self._replay[int(r.home_address)] = r.replay
            return self._refuse(r, ReplyCode.HA_FA_AUTH_FAILED,
                                f"{r.fa_problem} from FA {fa.care_of_address}")
        if fa is None and r.fhaes:
            return self._discard(r, f"foreign-home authenticator from {r.source[0]}, an "
                                    "agent this home agent shares no key with")
        return None

    def _consume_identification(self, r: _Request, now: float) -> None:
        """RFC 5944 5.7: the request is authentic and fresh: its identification is used up."""
        # Whatever the answer, the same bytes cannot be replayed.
        self._replay[int(r.home_address)] = r.replay

    def _check_home_agent_field(self, r: _Request, now: float) -> Outcome | None:
        """RFC 5944 3.8.2.1, 3.8.3.2: a Home Agent field other than our address gets 136."""
        if r.req.home_agent != self.config.address:
            return self._refuse(r, ReplyCode.HA_UNKNOWN_HA_ADDRESS,
                                f"home agent field {r.req.home_agent} is not "
                                f"{self.config.address}")
        return None

    def _deregister(self, r: _Request, now: float) -> Outcome | None:
        """RFC 5944 3.8.2.2: lifetime 0 removes the binding(s) it names and is accepted (1)."""
        if not r.req.is_deregistration:
            return None
        # Care-of address = home address removes every binding; any other removes
        # only the binding to that care-of address.
        key = int(r.home_address)
        previous = self._bindings.get(key)
        coa = r.req.care_of_address
        if previous is not None and coa in (r.home_address, previous.care_of_address):
            del self._bindings[key]
            note = f"binding to {previous.care_of_address} removed"
        else:
            note = "no binding to remove" if previous is None else (
                f"no binding to {coa}; the one to {previous.care_of_address} stays")
            previous = None
        changes = () if previous is None else (BindingChange(ChangeKind.REMOVED, previous),)
        # Any accepted request, deregistrations too, gets code 1 here.
        code = ReplyCode.ACCEPTED_NO_SIMULTANEOUS
        reply = self._reply(r, code, 0, r.reply_id, ())
        return Outcome(reply, code, r.home_address,
                       f"{r.home_address}: deregistered ({note})", changes,
                       (r.home_address, r.replay), home_link=self._at_home(r))

    def _check_care_of_address(self, r: _Request, now: float) -> Outcome | None:
        """RFC 5944 3.8.2.3: a registration to care-of address 0.0.0.0 is poorly formed (134)."""
        if r.req.care_of_address == UNSPECIFIED:
            return self._refuse(r, ReplyCode.HA_POORLY_FORMED_REQUEST,
                                "care-of address 0.0.0.0 in a registration")
        return None

    def _check_udp_tunnel_request(self, r: _Request, now: float) -> Outcome | None:
        """RFC 3519 4.6.1: one UDP Tunnel Request, the MN's with D, an FA's without (134)."""
        mn_utrs = [e for e in r.protected if isinstance(e, UdpTunnelRequest)]
        fa_utrs = [e for e in r.fa_exts if isinstance(e, UdpTunnelRequest)]
        if len(mn_utrs) + len(fa_utrs) > 1:
            return self._refuse(r, ReplyCode.HA_POORLY_FORMED_REQUEST,
                                "more than one UDP Tunnel Request extension")
        flags = r.req.flags.value  # plain int: IntFlag arithmetic is slow on the hot path
        if mn_utrs and not flags & _D:
            return self._refuse(r, ReplyCode.HA_POORLY_FORMED_REQUEST,
                                "UDP Tunnel Request from the mobile node without the D bit")
        if fa_utrs and flags & _D:
            return self._refuse(r, ReplyCode.HA_POORLY_FORMED_REQUEST,
                                "UDP Tunnel Request added by a foreign agent with the D bit set")
        utr = mn_utrs[0] if mn_utrs else fa_utrs[0] if fa_utrs else None
        if utr is not None and utr.reserved3:  # Reserved 3 must be zero
            return self._refuse(r, ReplyCode.HA_POORLY_FORMED_REQUEST,
                                "UDP Tunnel Request with non-zero Reserved 3 field")
        r.utr, r.utr_from_fa = utr, bool(fa_utrs)
        return None

    def _check_reverse_tunnel(self, r: _Request, now: float) -> Outcome | None:
        """RFC 3024 4.3.1: a reverse tunnel (T) this home agent does not offer gets 137."""
        if r.req.flags.value & _T and not self.config.reverse_tunnelling:
            return self._refuse(r, ReplyCode.HA_REVERSE_TUNNEL_UNAVAILABLE,
                                "reverse tunnelling is off")
        return None

    def _negotiate_udp_tunnel(self, r: _Request, now: float) -> Outcome | None:
        """RFC 3519 4.6, 3.1.4: behind a NAT a UDP tunnel (IP-in-IP) or nothing (129, 142)."""
        req, utr = r.req, r.utr
        flags = req.flags.value
        src_addr = r.source[0]
        # A source other than the care-of address means a NAT (for an FA's request,
        # the FA's own source must be its care-of address, 4.5).
        r.nat = nat = (bool(flags & _D) or r.utr_from_fa) and src_addr != req.care_of_address
        r.encap_mg = flags & (_M | _G)
        if utr is not None and (nat or utr.force):
            if not self.config.udp_tunnelling:
                return self._refuse(r, ReplyCode.HA_PROHIBITED, "UDP tunnelling (NAT "
                                    "traversal) is disabled on this home agent")
            # 3.1.4: Encapsulation 0 means "as M and G say"; non-zero overrides them.
            encap = utr.encapsulation or (ENCAP_MINIMAL if flags & _M else ENCAP_GRE
                                          if flags & _G else ENCAP_IPIP)
            if encap != ENCAP_IPIP:
                return self._refuse(r, ReplyCode.HA_UDP_ENCAPSULATION_UNAVAILABLE,
                                    f"UDP tunnel encapsulation {encap} unavailable "
                                    "(only IP-in-IP, 4)")
            r.udp = True
            r.encap_mg = 0
            r.utr_reply = UdpTunnelReply(UDP_TUNNEL_ACCEPTED, utr.force,
                                         self.config.keepalive_interval)
        elif utr is not None:
            r.utr_reply = UdpTunnelReply(UDP_TUNNEL_DECLINED, False, 0)
        elif nat:
            # IP-in-IP cannot cross a NAT to the mobile node: refuse rather than
            # accept a binding that would black-hole its traffic.
            return self._refuse(r, ReplyCode.HA_PROHIBITED,
                                f"NAT detected (request from {src_addr}, care-of address "
                                f"{req.care_of_address}) and no UDP tunnel requested")
        return None

    def _check_encapsulation(self, r: _Request, now: float) -> Outcome | None:
        """RFC 5944 3.3, 4.1: IP-in-IP always, GRE (G) when configured, minimal (M) never (139)."""
        if r.encap_mg & _M:
            return self._refuse(r, ReplyCode.HA_ENCAPSULATION_UNAVAILABLE,
                                "minimal encapsulation (M) is not offered")
        if r.encap_mg & _G and not self.config.gre:
            return self._refuse(r, ReplyCode.HA_ENCAPSULATION_UNAVAILABLE,
                                "GRE encapsulation (G) is turned off (home_agent.gre)")
        return None

    # The checks after the request was read, in the RFCs' order; each returns the
    # answer or None to go on.  A table, so the order can be read (and reviewed) here.
    _STEPS: ClassVar[tuple[Callable[[HomeAgent, _Request, float], Outcome | None], ...]] = (
        _identify,                  # 3.8.2.1a: which mobile node (discard)
        _authenticate,              # 3.8.2.1a: its authenticator (discard, 131)
        _check_identification,      # 3.8.2.1b, 5.7: replay (133)
        _check_foreign_agent,       # 3.8.2.1c/d: the relaying FA's authenticator (132)
        _consume_identification,    # 5.7: from here on the request is authentic and fresh
        _check_home_agent_field,    # 3.8.2.1, 3.8.3.2: addressed to us (136)
        _deregister,                # 3.8.2.2: lifetime 0 (1)
        _check_care_of_address,     # 3.8.2.3: not 0.0.0.0 (134)
        _check_udp_tunnel_request,  # RFC 3519 4.6.1: well formed (134)
        _check_reverse_tunnel,      # RFC 3024 4.3.1: T offered (137)
        _negotiate_udp_tunnel,      # RFC 3519 4.6, 3.1.4: NAT, UDP tunnel (129, 142)
        _check_encapsulation,       # 3.3, 4.1: M never, G if configured (139)
    )

    def _process(self, r: _Request, now: float) -> Outcome:
        """RFC 5944 3.8.2: read the request, then each check of ``_STEPS`` in turn; the
        first one that answers (a denial, a discard, a deregistration) decides."""
        self._read_extensions(r)
        self._verify_foreign_agent(r)
        for step in self._STEPS:
            out = step(self, r, now)
            if out is not None:
                return out
        return self._accept(r, now)

    def _accept(self, r: _Request, now: float) -> Outcome:
        """RFC 5944 3.8.2.2, 3.8.3.2: the binding, for at most our lifetime; code 1."""
        req = r.req
        requested = req.lifetime
        lifetime = min(requested, self.config.max_lifetime)
        if requested == INFINITE_LIFETIME:
            lifetime = self.config.max_lifetime
        # One binding per mobile node here, so code 1 ("simultaneous mobility
        # bindings unsupported") whether or not S was asked for.
        code = ReplyCode.ACCEPTED_NO_SIMULTANEOUS
        key = int(r.home_address)
        src_addr, src_port = r.source
        udp, nat = r.udp, r.nat
        previous = self._bindings.get(key)
        binding = Binding(
            home_address=r.home_address, care_of_address=req.care_of_address,
            lifetime=lifetime, registered_at=now, expires_at=now + lifetime,
            flags=req.flags, source_address=src_addr, source_port=src_port,
            udp_tunnel=udp, keepalive_interval=self.config.keepalive_interval if udp else 0,
            nat_detected=nat, nai=r.nai)
        self._bind(key, binding)
        kind = ChangeKind.ADDED if previous is None else ChangeKind.UPDATED
        reply = self._reply(r, code, lifetime, r.reply_id,
                            () if r.utr_reply is None else (r.utr_reply,))
        return Outcome(reply, code, r.home_address, "%s: %s -> %s%s%s, lifetime %d%s: %s",
                       (BindingChange(kind, binding, previous),), (r.home_address, r.replay),
                       (r.home_address, _what(previous, binding), req.care_of_address,
                        " via UDP tunnel" if udp else " in GRE" if r.encap_mg else "",
                        " (NAT)" if nat else "", lifetime,
                        f" (asked {requested})" if lifetime != requested else "",
                        describe(code)), self._at_home(r))

    def _bind(self, key: int, binding: Binding) -> None:
        self._bindings[key] = binding
        heapq.heappush(self._expiry, (binding.expires_at, key))
        if len(self._expiry) > 2 * len(self._bindings) + 1024:
            # Every renewal leaves a stale deadline behind; rebuild rather than
            # let the heap grow with the request rate.
            self._expiry = [(b.expires_at, k) for k, b in self._bindings.items()]
            heapq.heapify(self._expiry)

    # -- helpers ---------------------------------------------------------------

    @staticmethod
    def _fhae_problem(fa: ForeignAgentSA, fhaes: tuple[AuthExtension, ...]) -> str | None:
        """Why the request's Foreign-Home authentication fails, or None if it holds."""
        if len(fhaes) != 1:
            return "no foreign-home authenticator" if not fhaes else (
                f"{len(fhaes)} foreign-home authenticators (exactly one allowed)")
        fhae = fhaes[0]
        if fhae.spi != fa.spi or len(fhae.authenticator) != AUTHENTICATOR_LEN or not verify(
                fa.algorithm, fa.key, fhae.covered, fhae.authenticator):
            return "foreign-home authenticator does not verify"
        return None

    def _at_home(self, r: _Request) -> bool:
        # A request from the home address itself can only come from the home link.
        return r.source[0] == r.home_address

    def _deny(self, r: _Request, code: ReplyCode, why: str, *,
              identification: int | None = None, replay: HaReplayState | None = None
              ) -> Outcome:
        ident_out = r.req.identification if identification is None else identification
        reply = self._reply(r, code, 0, ident_out, ())
        src = f"{r.source[0]}:{r.source[1]}"
        return Outcome(reply, code, r.home_address,
                       f"{r.home_address} from {src}: {describe(code)}: {why}",
                       replay=None if replay is None else (r.home_address, replay),
                       home_link=self._at_home(r))

    def _refuse(self, r: _Request, code: ReplyCode, why: str) -> Outcome:
        """A denial of an authentic, fresh request: its identification is consumed."""
        return self._deny(r, code, why, identification=r.reply_id, replay=r.replay)

    def _reply(self, r: _Request, code: int, lifetime: int, identification: int,
               exts: tuple[Extension, ...]) -> bytes:
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
