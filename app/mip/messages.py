"""Registration Request (type 1), Registration Reply (type 3) and the RFC 3519
tunnel data message (type 4), as sent on UDP port 434."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntFlag
from ipaddress import IPv4Address

from app.mip.errors import DecodeError
from app.mip.extensions import (
    AuthExtension,
    Extension,
    NaiExtension,
    UdpTunnelReply,
    UdpTunnelRequest,
    decode_extensions,
)

MIP_PORT = 434
TYPE_REQUEST = 1
TYPE_REPLY = 3
TYPE_TUNNEL_DATA = 4
INFINITE_LIFETIME = 0xFFFF

_REQ = struct.Struct("!BBHIIIQ")
_REP = struct.Struct("!BBHIIQ")
_TUN = struct.Struct("!BBH")
REQUEST_HEADER_LEN = _REQ.size  # 24
REPLY_HEADER_LEN = _REP.size  # 20


class RegFlags(IntFlag):
    """The flag byte of a Registration Request (RFC 5944 section 3.3)."""

    S = 0x80
    """Simultaneous bindings."""
    B = 0x40
    """Broadcast datagrams."""
    D = 0x20
    """Decapsulation by the mobile node (co-located care-of address)."""
    M = 0x10
    """Minimal encapsulation."""
    G = 0x08
    """GRE encapsulation."""
    r = 0x04
    """Reserved: sent as zero, ignored on receipt."""
    T = 0x02
    """Reverse tunnelling requested (RFC 3024)."""
    x = 0x01
    """Reserved: sent as zero, ignored on receipt."""


# Constructing an IntFlag costs microseconds; the hot path looks members up instead.
_FLAGS = [RegFlags(i) for i in range(256)]


def _extension_of(exts: tuple[Extension, ...], kind: type[Extension]) -> Extension | None:
    for ext in exts:
        if isinstance(ext, kind):
            return ext
    return None


def _auth_of(exts: tuple[Extension, ...], ext_type: int) -> AuthExtension | None:
    for ext in exts:
        if isinstance(ext, AuthExtension) and ext.ext_type == ext_type:
            return ext
    return None


@dataclass(frozen=True, slots=True)
class RegistrationRequest:
    flags: RegFlags
    lifetime: int
    home_address: IPv4Address
    home_agent: IPv4Address
    care_of_address: IPv4Address
    identification: int
    extensions: tuple[Extension, ...] = field(default=())

    def encode(self) -> bytes:
        head = _REQ.pack(TYPE_REQUEST, int(self.flags), self.lifetime, int(self.home_address),
                         int(self.home_agent), int(self.care_of_address), self.identification)
        return head + b"".join(e.encode() for e in self.extensions)

    @classmethod
    def decode_header(cls, data: bytes) -> RegistrationRequest:
        """Only the fixed part, so a home agent can answer 134 to a request
        whose extensions are malformed."""
        return cls._decode(data, with_extensions=False)

    @classmethod
    def decode(cls, data: bytes) -> RegistrationRequest:
        return cls._decode(data, with_extensions=True)

    @classmethod
    def _decode(cls, data: bytes, *, with_extensions: bool) -> RegistrationRequest:
        if data and data[0] != TYPE_REQUEST:
            raise DecodeError(f"message type {data[0]} is not a registration request (1)", 0)
        if len(data) < REQUEST_HEADER_LEN:
            raise DecodeError(f"registration request is {len(data)} bytes, needs at least "
                              f"{REQUEST_HEADER_LEN}", len(data))
        _, flags, life, hoa, ha, coa, ident = _REQ.unpack_from(data)
        exts = decode_extensions(data, REQUEST_HEADER_LEN) if with_extensions else ()
        return cls(_FLAGS[flags], life, IPv4Address(hoa), IPv4Address(ha), IPv4Address(coa),
                   ident, exts)

    @property
    def is_deregistration(self) -> bool:
        return self.lifetime == 0 or self.care_of_address == self.home_address

    @property
    def mobile_home_auth(self) -> AuthExtension | None:
        return _auth_of(self.extensions, 32)

    @property
    def foreign_home_auth(self) -> AuthExtension | None:
        return _auth_of(self.extensions, 34)

    @property
    def nai(self) -> str | None:
        ext = _extension_of(self.extensions, NaiExtension)
        return ext.nai if isinstance(ext, NaiExtension) else None

    @property
    def udp_tunnel_request(self) -> UdpTunnelRequest | None:
        ext = _extension_of(self.extensions, UdpTunnelRequest)
        return ext if isinstance(ext, UdpTunnelRequest) else None


@dataclass(frozen=True, slots=True)
class RegistrationReply:
    code: int
    lifetime: int
    home_address: IPv4Address
    home_agent: IPv4Address
    identification: int
    extensions: tuple[Extension, ...] = field(default=())

    def encode(self) -> bytes:
        head = _REP.pack(TYPE_REPLY, self.code, self.lifetime, int(self.home_address),
                         int(self.home_agent), self.identification)
        return head + b"".join(e.encode() for e in self.extensions)

    @classmethod
    def decode(cls, data: bytes) -> RegistrationReply:
        if data and data[0] != TYPE_REPLY:
            raise DecodeError(f"message type {data[0]} is not a registration reply (3)", 0)
        if len(data) < REPLY_HEADER_LEN:
            raise DecodeError(f"registration reply is {len(data)} bytes, needs at least "
                              f"{REPLY_HEADER_LEN}", len(data))
        _, code, life, hoa, ha, ident = _REP.unpack_from(data)
        return cls(code, life, IPv4Address(hoa), IPv4Address(ha), ident,
                   decode_extensions(data, REPLY_HEADER_LEN))

    @property
    def mobile_home_auth(self) -> AuthExtension | None:
        return _auth_of(self.extensions, 32)

    @property
    def foreign_home_auth(self) -> AuthExtension | None:
        return _auth_of(self.extensions, 34)

    @property
    def udp_tunnel_reply(self) -> UdpTunnelReply | None:
        ext = _extension_of(self.extensions, UdpTunnelReply)
        return ext if isinstance(ext, UdpTunnelReply) else None


@dataclass(frozen=True, slots=True)
class TunnelData:
    """RFC 3519 tunnel data message: a 4-byte header, then the tunnelled packet."""

    payload: bytes
    next_header: int = 4  # IP-in-IP

    def encode(self) -> bytes:
        return _TUN.pack(TYPE_TUNNEL_DATA, self.next_header, 0) + self.payload

    @classmethod
    def decode(cls, data: bytes) -> TunnelData:
        if len(data) < _TUN.size:
            raise DecodeError(f"tunnel data message is {len(data)} bytes, needs at least 4",
                              len(data))
        mtype, next_header, _reserved = _TUN.unpack_from(data)
        if mtype != TYPE_TUNNEL_DATA:
            raise DecodeError(f"message type {mtype} is not tunnel data (4)", 0)
        return cls(bytes(data[_TUN.size:]), next_header)


Message = RegistrationRequest | RegistrationReply | TunnelData


def decode_message(data: bytes) -> Message:
    """Decode whatever arrived on UDP 434, by its type byte."""
    if not data:
        raise DecodeError("empty message", 0)
    mtype = data[0]
    if mtype == TYPE_REQUEST:
        return RegistrationRequest.decode(data)
    if mtype == TYPE_REPLY:
        return RegistrationReply.decode(data)
    if mtype == TYPE_TUNNEL_DATA:
        return TunnelData.decode(data)
    raise DecodeError(f"unknown Mobile IP message type {mtype}", 0)
