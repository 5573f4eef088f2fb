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


@dataclass(slots=True)
class _Request:
    """A decoded request and what the checks learned about it."""

    req: RegistrationRequest
    source: tuple[IPv4Address, int]
    home_address: IPv4Address
    mn: MobileNodeConfig | None = None
    protected: tuple[Extension, ...] = field(default=())
    fa: ForeignAgentSA | None = None
    """Set once the request's Foreign-Home authenticator verified with this SA:
    the reply then carries one for that foreign agent."""


_NO_STATE = HaReplayState()


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
            return self._deny(r, ReplyCode.HA_POORLY_FORMED_REQUEST, now, f"malformed: {exc}")
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

    # -- the checks ------------------------------------------------------------

    def _process(self, r: _Request, now: float) -> Outcome:
        req = r.req
        exts = req.extensions
        mhae = req.mobile_home_auth
        # Extensions after the MHAE are not covered by it, so the HA acts only on
        # those before it (RFC 5944 section 3.6.1.3 puts the NAI and RFC 3519's
        # request there); after it come the foreign agent's (3.7.2.2).
        r.protected = exts
        fa_exts: tuple[Extension, ...] = ()
        if mhae is not None:
            at = exts.index(mhae)
            r.protected, fa_exts = exts[:at], exts[at + 1:]
        nai = next((e.nai for e in r.protected if isinstance(e, NaiExtension)), None)
        # The FA's authenticator is checked now but acted on after the identification
        # (3.8.2.1c); a valid one means every reply, 131 and 133 included, carries
        # one for the FA, which would otherwise turn it into a 68.
        fa = self._fa_of(r)
        fhaes = [e for e in fa_exts if isinstance(e, AuthExtension)
                 and e.ext_type == ExtType.FOREIGN_HOME_AUTH] if fa_exts else []
        fa_problem: str | None = None
        if fa is not None:
            fa_problem = self._fhae_problem(fa, fhaes)
            if fa_problem is None:
                r.fa = fa

        # 3.8.2.1a: which mobile node, and is it really that one
        if req.home_address == UNSPECIFIED:
            if nai is None:
                return self._deny(r, ReplyCode.HA_POORLY_FORMED_REQUEST, now,
                                  "home address 0.0.0.0 without an NAI extension")
            r.mn = self._by_nai.get(nai)
            if r.mn is not None:
                r.home_address = r.mn.home_address  # RFC 2794: the HA assigns it
        else:
            r.mn = self._by_hoa.get(int(req.home_address))
        if r.mn is None:
            who = f"NAI {nai!r}" if req.home_address == UNSPECIFIED else "this home address"
            return self._discard(r, f"no security association for {who}")
        if mhae is None:
            return self._discard(r, "no mobile-home authentication extension")
        if mhae.spi != r.mn.spi:
            return self._deny(r, ReplyCode.HA_MN_AUTH_FAILED, now, f"unknown SPI {mhae.spi}")
        if len(mhae.authenticator) != AUTHENTICATOR_LEN or not verify(
                r.mn.algorithm, r.mn.key, mhae.covered, mhae.authenticator):
            return self._deny(r, ReplyCode.HA_MN_AUTH_FAILED, now,
                              "authenticator does not verify")
        if nai is not None and r.mn.nai is not None and nai != r.mn.nai:
            return self._deny(r, ReplyCode.HA_MN_AUTH_FAILED, now,
                              f"NAI {nai!r} does not belong to this home address")

        # 3.8.2.1b: identification (133), before anything about the foreign agent
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
            new_state = HaReplayState(last_identification=req.identification)
            reply_id = req.identification
        else:
            if state.ha_nonce is None or ident.high(req.identification) != state.ha_nonce:
                # 5.7.2: the reply gives the nonce to use.  One not yet used is given
                # again: a delayed copy of a request (3.6.3 resends it unchanged) must
                # not void the nonce the node is about to use.
                fresh = self._nonce() if state.ha_nonce is None else state.ha_nonce
                new_state = HaReplayState(ha_nonce=fresh)
                self._replay[key] = new_state
                return self._deny(r, ReplyCode.HA_IDENTIFICATION_MISMATCH, now,
                                  "nonce does not match the home agent's",
                                  identification=ident.join(fresh, ident.low(req.identification)),
                                  replay=new_state)
            fresh = self._nonce()
            new_state = HaReplayState(ha_nonce=fresh)
            reply_id = ident.join(fresh, ident.low(req.identification))

        # 3.8.2.1c/d: the foreign agent's authenticator, required for registrations
        # (lifetime != 0) relayed by an FA we share a key with; never from one we don't.
        if fa is not None and (req.lifetime != 0 or fhaes) and fa_problem is not None:
            # The request itself was authentic and fresh: consume its identification
            # (or nonce), so no one can replay it with a better FA authenticator.
            self._replay[key] = new_state
            return self._deny(r, ReplyCode.HA_FA_AUTH_FAILED, now,
                              f"{fa_problem} from FA {fa.care_of_address}",
                              identification=reply_id, replay=new_state)
        if fa is None and fhaes:
            return self._discard(r, f"foreign-home authenticator from {r.source[0]}, an "
                                    "agent this home agent shares no key with")
        # From here on the request is authentic and fresh: remember it, so the
        # same bytes cannot be replayed whatever the answer.
        self._replay[key] = new_state

        def deny(code: ReplyCode, why: str) -> Outcome:
            return self._deny(r, code, now, why, identification=reply_id, replay=new_state)

        # 3.8.3.2: the home agent field (136)
        if req.home_agent != self.config.address:
            return deny(ReplyCode.HA_UNKNOWN_HA_ADDRESS,
                        f"home agent field {req.home_agent} is not {self.config.address}")

        if req.is_deregistration:
            return self._deregister(r, now, reply_id, new_state)

        # 3.8.2.3: what this home agent cannot accommodate
        if req.care_of_address == UNSPECIFIED:
            return deny(ReplyCode.HA_POORLY_FORMED_REQUEST,
                        "care-of address 0.0.0.0 in a registration")
        mn_utrs = [e for e in r.protected if isinstance(e, UdpTunnelRequest)]
        fa_utrs = [e for e in fa_exts if isinstance(e, UdpTunnelRequest)]
        if len(mn_utrs) + len(fa_utrs) > 1:
            return deny(ReplyCode.HA_POORLY_FORMED_REQUEST,
                        "more than one UDP Tunnel Request extension")
        flags = req.flags.value  # plain int: IntFlag arithmetic is slow on the hot path
        # RFC 3519 4.6.1: the mobile node's request needs D, a foreign agent's must not
        # come with it; Reserved 3 must be zero.
        if mn_utrs and not flags & _D:
            return deny(ReplyCode.HA_POORLY_FORMED_REQUEST,
                        "UDP Tunnel Request from the mobile node without the D bit")
        if fa_utrs and flags & _D:
            return deny(ReplyCode.HA_POORLY_FORMED_REQUEST,
                        "UDP Tunnel Request added by a foreign agent with the D bit set")
        utr = mn_utrs[0] if mn_utrs else fa_utrs[0] if fa_utrs else None
        if utr is not None and utr.reserved3:
            return deny(ReplyCode.HA_POORLY_FORMED_REQUEST,
                        "UDP Tunnel Request with non-zero Reserved 3 field")
        if flags & _T and not self.config.reverse_tunnelling:
            return deny(ReplyCode.HA_REVERSE_TUNNEL_UNAVAILABLE, "reverse tunnelling is off")
        src_addr, src_port = r.source
        # RFC 3519 4.6: a source other than the care-of address means a NAT (for an
        # FA's request, the FA's own source must be its care-of address, 4.5).
        nat = (bool(flags & _D) or bool(fa_utrs)) and src_addr != req.care_of_address
        reply_exts: list[Extension] = []
        udp = False
        encap_mg = flags & (_M | _G)
        if utr is not None and (nat or utr.force):
            if not self.config.udp_tunnelling:
                return deny(ReplyCode.HA_PROHIBITED,
                            "UDP tunnelling (NAT traversal) is disabled on this home agent")
            # 3.1.4: Encapsulation 0 means "as M and G say"; non-zero overrides them.
            encap = utr.encapsulation or (ENCAP_MINIMAL if flags & _M else ENCAP_GRE
                                          if flags & _G else ENCAP_IPIP)
            if encap != ENCAP_IPIP:
                return deny(ReplyCode.HA_UDP_ENCAPSULATION_UNAVAILABLE,
                            f"UDP tunnel encapsulation {encap} unavailable (only IP-in-IP, 4)")
            udp = True
            encap_mg = 0
            reply_exts.append(UdpTunnelReply(UDP_TUNNEL_ACCEPTED, utr.force,
                                             self.config.keepalive_interval))
        elif utr is not None:
            reply_exts.append(UdpTunnelReply(UDP_TUNNEL_DECLINED, False, 0))
        elif nat:
            # IP-in-IP cannot cross a NAT to the mobile node: refuse rather than
            # accept a binding that would black-hole its traffic.
            return deny(ReplyCode.HA_PROHIBITED,
                        f"NAT detected (request from {src_addr}, care-of address "
                        f"{req.care_of_address}) and no UDP tunnel requested")
        # 3.3, 4.1: IP-in-IP always, GRE (G) when configured, minimal (M) never (139).
        if encap_mg & _M:
            return deny(ReplyCode.HA_ENCAPSULATION_UNAVAILABLE,
                        "minimal encapsulation (M) is not offered")
        if encap_mg & _G and not self.config.gre:
            return deny(ReplyCode.HA_ENCAPSULATION_UNAVAILABLE,
                        "GRE encapsulation (G) is turned off (home_agent.gre)")

        # 3.8.2.2: accept
        requested = req.lifetime
        lifetime = min(requested, self.config.max_lifetime)
        if requested == INFINITE_LIFETIME:
            lifetime = self.config.max_lifetime
        # 3.8.3.2: one binding per mobile node here, so code 1 ("simultaneous
        # mobility bindings unsupported") whether or not S was asked for.
        code = ReplyCode.ACCEPTED_NO_SIMULTANEOUS
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
                        " via UDP tunnel" if udp else " in GRE" if encap_mg else "",
                        " (NAT)" if nat else "", lifetime,
                        f" (asked {requested})" if lifetime != requested else "",
                        describe(code)), self._at_home(r))

    @staticmethod
    def _fhae_problem(fa: ForeignAgentSA, fhaes: list[AuthExtension]) -> str | None:
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

    def _deregister(self, r: _Request, now: float, reply_id: int, state: HaReplayState
                    ) -> Outcome:
        # 3.8.2.2: care-of address = home address removes every binding; any other
        # removes only the binding to that care-of address.
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
        # 3.8.2.2: any accepted request, deregistrations too, gets code 1 here.
        code = ReplyCode.ACCEPTED_NO_SIMULTANEOUS
        reply = self._reply(r, code, 0, reply_id, [])
        return Outcome(reply, code, r.home_address,
                       f"{r.home_address}: deregistered ({note})", changes,
                       (r.home_address, state), home_link=self._at_home(r))

    def _deny(self, r: _Request, code: ReplyCode, now: float, why: str, *,
              identification: int | None = None, replay: HaReplayState | None = None
              ) -> Outcome:
        ident_out = r.req.identification if identification is None else identification
        reply = self._reply(r, code, 0, ident_out, [])
        src = f"{r.source[0]}:{r.source[1]}"
        return Outcome(reply, code, r.home_address,
                       f"{r.home_address} from {src}: {describe(code)}: {why}",
                       replay=None if replay is None else (r.home_address, replay),
                       home_link=self._at_home(r))

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
