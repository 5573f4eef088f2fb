"""Registration extensions (RFC 5944 section 3.5, RFC 2794, RFC 3519).

Most extensions are Type, Length (one byte), data.  Types 0-127 are
non-skippable: one this codec does not know makes the whole message invalid.
Types 128-255 are skippable: unknown ones are kept as :class:`SkippedExtension`
so an agent that relays a message can pass them on untouched, and ignored
otherwise.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum

from app.mip.errors import DecodeError, UnknownExtensionError


class ExtType(IntEnum):
    PAD = 0
    MOBILE_HOME_AUTH = 32
    MOBILE_FOREIGN_AUTH = 33
    FOREIGN_HOME_AUTH = 34
    UDP_TUNNEL_REPLY = 44
    MN_NAI = 131
    UDP_TUNNEL_REQUEST = 144


AUTH_TYPES = frozenset({ExtType.MOBILE_HOME_AUTH, ExtType.MOBILE_FOREIGN_AUTH,
                        ExtType.FOREIGN_HOME_AUTH})
ENCAP_IPIP = 4
ENCAP_GRE = 47
ENCAP_MINIMAL = 55


@dataclass(frozen=True, slots=True)
class AuthExtension:
    """Mobile-Home (32), Mobile-Foreign (33) or Foreign-Home (34) authentication."""

    ext_type: int
    spi: int
    authenticator: bytes
    covered: bytes = field(default=b"", compare=False, repr=False)
    """On decode: the bytes this authenticator covers (message up to and including the SPI)."""

    def encode(self) -> bytes:
        return struct.pack("!BBI", self.ext_type, 4 + len(self.authenticator),
                           self.spi) + self.authenticator


@dataclass(frozen=True, slots=True)
class NaiExtension:
    """Mobile Node NAI (RFC 2794), e.g. ``alice@corp.example``."""

    nai: str

    def encode(self) -> bytes:
        raw = self.nai.encode("utf-8")
        if not 0 < len(raw) <= 255:
            raise ValueError(f"NAI must be 1..255 bytes, got {len(raw)}")
        return struct.pack("!BB", ExtType.MN_NAI, len(raw)) + raw


@dataclass(frozen=True, slots=True)
class UdpTunnelRequest:
    """RFC 3519 UDP Tunnel Request (144): the MN asks for UDP 434 tunnelling."""

    force: bool = False
    """F: tunnel over UDP even if the home agent sees no NAT."""
    fa_required: bool = False
    """R: registration through a foreign agent is required (set by an FA)."""
    encapsulation: int = ENCAP_IPIP
    """0: "as the M and G bits say" (RFC 3519 3.1.4)."""
    reserved3: int = 0
    """Sent as 0; a home agent answers 134 to anything else (RFC 3519 4.6.1)."""

    def encode(self) -> bytes:
        flags = (0x80 if self.force else 0) | (0x40 if self.fa_required else 0)
        return struct.pack("!BBBBBBH", ExtType.UDP_TUNNEL_REQUEST, 6, 0, 0, flags,
                           self.encapsulation, self.reserved3)


UDP_TUNNEL_ACCEPTED = 0
UDP_TUNNEL_DECLINED = 64


@dataclass(frozen=True, slots=True)
class UdpTunnelReply:
    """RFC 3519 UDP Tunnel Reply (44): the HA's answer and keepalive interval."""

    code: int = UDP_TUNNEL_ACCEPTED
    forced: bool = False
    keepalive_interval: int = 110

    def encode(self) -> bytes:
        return struct.pack("!BBBBHH", ExtType.UDP_TUNNEL_REPLY, 6, 0, self.code,
                           0x8000 if self.forced else 0, self.keepalive_interval)


@dataclass(frozen=True, slots=True)
class SkippedExtension:
    """A skippable extension (type >= 128) this codec does not interpret."""

    ext_type: int
    data: bytes

    def encode(self) -> bytes:
        return struct.pack("!BB", self.ext_type, len(self.data)) + self.data


Extension = AuthExtension | NaiExtension | UdpTunnelRequest | UdpTunnelReply | SkippedExtension


def decode_extensions(data: bytes, offset: int) -> tuple[Extension, ...]:
    """Decode every extension from ``offset`` to the end of ``data``."""
    out: list[Extension] = []
    end = len(data)
    while offset < end:
        ext_type = data[offset]
        if ext_type == ExtType.PAD:  # one byte, no length
            offset += 1
            continue
        if offset + 2 > end:
            raise DecodeError(f"extension {ext_type} has no length byte", offset)
        length = data[offset + 1]
        body = offset + 2
        if body + length > end:
            raise DecodeError(
                f"extension {ext_type} length {length} runs past the end of the "
                f"message ({end - body} bytes left)", offset + 1)
        if ext_type in AUTH_TYPES:
            if length < 4:
                raise DecodeError(f"authentication extension {ext_type} length {length} "
                                  "is shorter than its SPI", offset + 1)
            (spi,) = struct.unpack_from("!I", data, body)
            out.append(AuthExtension(ext_type, spi, bytes(data[body + 4:body + length]),
                                     covered=bytes(data[:body + 4])))
        elif ext_type == ExtType.MN_NAI:
            if length == 0:
                raise DecodeError("empty NAI extension", offset + 1)
            try:
                nai = bytes(data[body:body + length]).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DecodeError(f"NAI is not UTF-8 ({exc.reason})", body + exc.start) from None
            out.append(NaiExtension(nai))
        elif ext_type == ExtType.UDP_TUNNEL_REQUEST:
            _expect_length(ext_type, length, 6, offset)
            subtype, _r1, flags, encap, r3 = struct.unpack_from("!BBBBH", data, body)
            _expect_subtype(ext_type, subtype, body)
            out.append(UdpTunnelRequest(bool(flags & 0x80), bool(flags & 0x40), encap, r3))
        elif ext_type == ExtType.UDP_TUNNEL_REPLY:
            _expect_length(ext_type, length, 6, offset)
            subtype, code, flags, keepalive = struct.unpack_from("!BBHH", data, body)
            _expect_subtype(ext_type, subtype, body)
            out.append(UdpTunnelReply(code, bool(flags & 0x8000), keepalive))
        elif ext_type >= 128:
            out.append(SkippedExtension(ext_type, bytes(data[body:body + length])))
        else:
            raise UnknownExtensionError(ext_type, offset)
        offset = body + length
    return tuple(out)


def _expect_length(ext_type: int, length: int, want: int, offset: int) -> None:
    if length != want:
        raise DecodeError(f"extension {ext_type} length is {length}, must be {want}", offset + 1)


def _expect_subtype(ext_type: int, subtype: int, offset: int) -> None:
    if subtype != 0:
        raise DecodeError(f"extension {ext_type} sub-type {subtype} is not supported", offset)
