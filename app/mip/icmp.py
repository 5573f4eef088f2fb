"""ICMP Agent Advertisement and Agent Solicitation (RFC 5944 section 2.1).

An Agent Advertisement is an ICMP Router Advertisement (type 9) carrying a
Mobility Agent Advertisement extension (16) and optionally Prefix-Lengths
(19).  The classes work on the ICMP message (no IP header); ``icmp_in_ip`` and
``advertisement_in_ip`` take the IPv4 packet a raw ICMP socket hands over.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag
from ipaddress import IPv4Address

from app.mip.errors import DecodeError, UnknownExtensionError

IPPROTO_ICMP = 1
IPV4_HEADER = 20
"""Bytes of an IPv4 header without options (IHL 5)."""
ICMP_ROUTER_ADVERTISEMENT = 9
ICMP_ROUTER_SOLICITATION = 10
ALL_SYSTEMS = IPv4Address("224.0.0.1")
"""Where agents multicast their advertisements (RFC 5944 2.1, RFC 1256)."""
ALL_ROUTERS = IPv4Address("224.0.0.2")
"""Where RFC 1256 hosts (and our helper) send Router Solicitations."""
MOBILE_AGENTS = IPv4Address("224.0.0.11")
"""RFC 5944 2.3: every mobility agent processes what is sent to this group."""
CODE_ROUTES_COMMON_TRAFFIC = 0
CODE_MOBILITY_ONLY = 16  # "does not route common traffic"
EXT_PAD = 0
EXT_MOBILITY_AGENT = 16
EXT_PREFIX_LENGTHS = 19


class AgentFlags(IntFlag):
    """Mobility Agent Advertisement flags (RFC 5944 section 2.1.1)."""

    R = 0x8000
    """Registration required (even with a co-located care-of address)."""
    B = 0x4000
    """Busy."""
    H = 0x2000
    """Home agent."""
    F = 0x1000
    """Foreign agent."""
    M = 0x0800
    """Minimal encapsulation."""
    G = 0x0400
    """GRE encapsulation."""
    r = 0x0200
    """Reserved (was Van Jacobson)."""
    T = 0x0100
    """Reverse tunnelling supported (RFC 3024)."""
    U = 0x0080
    """UDP tunnelling supported (RFC 3519)."""
    X = 0x0040
    """Registration revocation supported (RFC 3543)."""
    I = 0x0020  # noqa: E741 - the RFC's name for it
    """Foreign agent supports regional registration."""


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _with_checksum(msg: bytes) -> bytes:
    csum = checksum(msg)
    return msg[:2] + struct.pack("!H", csum) + msg[4:]


@dataclass(frozen=True, slots=True)
class AgentAdvertisement:
    sequence: int
    registration_lifetime: int
    flags: AgentFlags
    care_of_addresses: tuple[IPv4Address, ...] = ()
    router_addresses: tuple[tuple[IPv4Address, int], ...] = ()
    """(address, preference level) pairs of the Router Advertisement part."""
    advertisement_lifetime: int = 1800
    prefix_lengths: tuple[int, ...] | None = None
    code: int = CODE_ROUTES_COMMON_TRAFFIC

    def encode(self) -> bytes:
        head = struct.pack("!BBHBBH", ICMP_ROUTER_ADVERTISEMENT, self.code, 0,
                           len(self.router_addresses), 2, self.advertisement_lifetime)
        routers = b"".join(struct.pack("!Ii", int(a), pref) for a, pref in self.router_addresses)
        coas = b"".join(a.packed for a in self.care_of_addresses)
        maa = struct.pack("!BBHHH", EXT_MOBILITY_AGENT, 6 + len(coas), self.sequence,
                          self.registration_lifetime, int(self.flags)) + coas
        plen = b""
        if self.prefix_lengths is not None:
            plen = struct.pack("!BB", EXT_PREFIX_LENGTHS, len(self.prefix_lengths)) + bytes(
                self.prefix_lengths)
        return _with_checksum(head + routers + maa + plen)

    @classmethod
    def decode(cls, data: bytes) -> AgentAdvertisement:
        if len(data) < 8:
            raise DecodeError(f"agent advertisement is {len(data)} bytes, needs at least 8",
                              len(data))
        icmp_type, code, _csum, num, entry_words, adv_life = struct.unpack_from("!BBHBBH", data)
        if icmp_type != ICMP_ROUTER_ADVERTISEMENT:
            raise DecodeError(f"ICMP type {icmp_type} is not a router advertisement (9)", 0)
        if checksum(data) != 0:
            raise DecodeError("ICMP checksum mismatch", 2)
        if entry_words < 2:
            raise DecodeError(f"address entry size {entry_words} is below 2", 5)
        offset = 8
        routers: list[tuple[IPv4Address, int]] = []
        for _ in range(num):
            if offset + entry_words * 4 > len(data):
                raise DecodeError(f"{num} router addresses do not fit in the message", offset)
            addr, pref = struct.unpack_from("!Ii", data, offset)
            routers.append((IPv4Address(addr), pref))
            offset += entry_words * 4
        maa: tuple[int, int, int, tuple[IPv4Address, ...]] | None = None
        prefix_lengths: tuple[int, ...] | None = None
        while offset < len(data):
            ext_type = data[offset]
            if ext_type == EXT_PAD:
                offset += 1
                continue
            if offset + 2 > len(data):
                raise DecodeError(f"extension {ext_type} has no length byte", offset)
            length = data[offset + 1]
            body = offset + 2
            if body + length > len(data):
                raise DecodeError(f"extension {ext_type} length {length} runs past the end",
                                  offset + 1)
            if ext_type == EXT_MOBILITY_AGENT:
                if length < 6 or (length - 6) % 4:
                    raise DecodeError(f"mobility agent extension length {length} is not "
                                      "6 plus a multiple of 4", offset + 1)
                seq, life, flags = struct.unpack_from("!HHH", data, body)
                coas = tuple(IPv4Address(data[p:p + 4])
                             for p in range(body + 6, body + length, 4))
                maa = (seq, life, flags, coas)
            elif ext_type == EXT_PREFIX_LENGTHS:
                prefix_lengths = tuple(data[body:body + length])
                bad = [p for p in prefix_lengths if p > 32]
                if bad:
                    raise DecodeError(f"prefix length {bad[0]} is above 32", body)
            elif ext_type < 128:
                # RFC 5944 1.9: an unknown extension 0-127 voids the whole message;
                # 128-255 are skipped and the rest still processed.
                raise UnknownExtensionError(ext_type, offset)
            offset = body + length
        if maa is None:
            raise DecodeError("router advertisement has no mobility agent extension", offset)
        seq, life, flags, coas = maa
        # RFC 5944 2.1.1: B only with F, at least one of F and H, and an FA
        # advertises at least one care-of address.  Anything else is not an
        # advertisement a mobile node may act on.
        if flags & AgentFlags.B and not flags & AgentFlags.F:
            raise DecodeError("busy (B) without foreign agent (F)", offset)
        if not flags & (AgentFlags.F | AgentFlags.H):
            raise DecodeError("neither foreign agent (F) nor home agent (H) is set", offset)
        if flags & AgentFlags.F and not coas:
            raise DecodeError("foreign agent (F) advertises no care-of address", offset)
        return cls(seq, life, AgentFlags(flags), coas, tuple(routers), adv_life,
                   prefix_lengths, code)


@dataclass(frozen=True, slots=True)
class AgentSolicitation:
    """ICMP Router Solicitation (type 10), sent with IP TTL 1 (RFC 5944 section 2.2)."""

    def encode(self) -> bytes:
        return _with_checksum(struct.pack("!BBHI", ICMP_ROUTER_SOLICITATION, 0, 0, 0))

    @classmethod
    def decode(cls, data: bytes) -> AgentSolicitation:
        if len(data) < 8:
            raise DecodeError(f"agent solicitation is {len(data)} bytes, needs at least 8",
                              len(data))
        if data[0] != ICMP_ROUTER_SOLICITATION:
            raise DecodeError(f"ICMP type {data[0]} is not a router solicitation (10)", 0)
        if data[1] != 0:
            raise DecodeError(f"ICMP code {data[1]} is not 0", 1)
        if checksum(data) != 0:
            raise DecodeError("ICMP checksum mismatch", 2)
        return cls()


def icmp_in_ip(packet: bytes) -> tuple[IPv4Address, bytes]:
    """(IP source, ICMP message) of an IPv4 packet carrying ICMP, its header options
    skipped by the IHL; DecodeError naming the field that is wrong otherwise."""
    if len(packet) < IPV4_HEADER:
        raise DecodeError(f"IP packet is {len(packet)} bytes, shorter than an IPv4 header "
                          f"({IPV4_HEADER})", len(packet))
    version, ihl = packet[0] >> 4, (packet[0] & 0x0F) * 4
    if version != 4:
        raise DecodeError(f"IP version {version} is not 4", 0)
    if ihl < IPV4_HEADER:
        raise DecodeError(f"IP header length (IHL) {ihl} bytes is below {IPV4_HEADER}", 0)
    if packet[9] != IPPROTO_ICMP:
        raise DecodeError(f"IP protocol {packet[9]} is not ICMP ({IPPROTO_ICMP})", 9)
    if len(packet) <= ihl:
        raise DecodeError(f"IP header length (IHL) {ihl} bytes leaves no ICMP message in "
                          f"the packet's {len(packet)} bytes", 0)
    return IPv4Address(packet[12:16]), packet[ihl:]


def advertisement_in_ip(packet: bytes) -> tuple[IPv4Address, AgentAdvertisement] | None:
    """The agent advertisement in an IPv4 packet, with the packet's source (the agent
    registrations go to, RFC 5944 3.6.1.1); None for any other ICMP message (a raw
    socket hears echoes and solicitations too).  DecodeError if malformed."""
    source, icmp = icmp_in_ip(packet)
    if icmp[0] != ICMP_ROUTER_ADVERTISEMENT:
        return None
    return source, AgentAdvertisement.decode(icmp)
