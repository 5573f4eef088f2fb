"""Round trips, fixed vectors and error reporting of the app.mip codec."""

from __future__ import annotations

import hashlib
import hmac
import struct
from ipaddress import IPv4Address

import pytest
from hypothesis import given

from app.mip import codes
from app.mip.auth import Algorithm, append_authenticator, compute, verify
from app.mip.errors import DecodeError, UnknownExtensionError
from app.mip.extensions import (
    AuthExtension,
    NaiExtension,
    SkippedExtension,
    UdpTunnelReply,
    UdpTunnelRequest,
)
from app.mip.icmp import AgentAdvertisement, AgentFlags, AgentSolicitation, checksum
from app.mip.messages import (
    RegFlags,
    RegistrationReply,
    RegistrationRequest,
    TunnelData,
    decode_message,
)
from tests import strategies as s

A = IPv4Address


def _rrq(exts=()):
    return RegistrationRequest(RegFlags.D | RegFlags.T, 600, A("10.20.1.10"), A("10.20.1.1"),
                               A("192.0.2.7"), 0x1122334455667788, tuple(exts))


@given(s.request)
def test_request_round_trip(msg):
    decoded = RegistrationRequest.decode(msg.encode())
    assert decoded == msg
    assert decoded.encode() == msg.encode()


@given(s.reply)
def test_reply_round_trip(msg):
    assert RegistrationReply.decode(msg.encode()) == msg


@given(s.tunnel)
def test_tunnel_data_round_trip(msg):
    assert TunnelData.decode(msg.encode()) == msg
    assert decode_message(msg.encode()) == msg


@given(s.advert)
def test_agent_advertisement_round_trip(msg):
    wire = msg.encode()
    assert checksum(wire) == 0
    assert AgentAdvertisement.decode(wire) == msg


def test_agent_solicitation_round_trip():
    wire = AgentSolicitation().encode()
    assert wire == bytes.fromhex("0a00f5ff00000000")
    assert AgentSolicitation.decode(wire) == AgentSolicitation()


def test_request_layout_is_rfc5944():
    wire = _rrq().encode()
    assert wire == bytes.fromhex(
        "01" "22" "0258" "0a14010a" "0a140101" "c0000207" "1122334455667788")


def test_every_flag_bit_position():
    expected = {"S": 0x80, "B": 0x40, "D": 0x20, "M": 0x10, "G": 0x08, "r": 0x04, "T": 0x02,
                "x": 0x01}
    for name, bit in expected.items():
        msg = RegistrationRequest(RegFlags[name], 0, A("1.2.3.4"), A("1.2.3.5"), A("1.2.3.6"), 0)
        assert msg.encode()[1] == bit
        assert RegistrationRequest.decode(msg.encode()).flags == RegFlags[name]


def test_extension_layouts():
    assert NaiExtension("a@b").encode() == b"\x83\x03a@b"
    assert UdpTunnelRequest(force=True, encapsulation=4).encode() == bytes.fromhex(
        "9006" "00" "00" "80" "04" "0000")
    assert UdpTunnelRequest(fa_required=True).encode()[4] == 0x40
    assert UdpTunnelReply(0, True, 110).encode() == bytes.fromhex("2c06" "00" "00" "8000" "006e")
    assert AuthExtension(32, 256, b"\xaa" * 16).encode() == bytes.fromhex("2014" "00000100") + (
        b"\xaa" * 16)


def test_hmac_md5_rfc2104_vector():
    # RFC 2104 test case 2.
    digest = compute(Algorithm.HMAC_MD5, b"Jefe", b"what do ya want for nothing?")
    assert digest.hex() == "750c783e6ab0b503eaa86e310a5db738"


def test_keyed_md5_is_prefix_plus_suffix():
    key, data = b"k" * 16, b"payload"
    assert compute(Algorithm.KEYED_MD5, key, data) == hashlib.md5(key + data + key).digest()


def test_authenticator_covers_message_extensions_and_spi():
    key = b"\x01" * 16
    body = _rrq([NaiExtension("alice@corp.example")]).encode()
    wire = append_authenticator(body, 32, 0x1234, key, Algorithm.HMAC_MD5)
    covered = body + bytes.fromhex("2014" "00001234")
    assert wire[-16:] == hmac.digest(key, covered, "md5")
    auth = RegistrationRequest.decode(wire).mobile_home_auth
    assert auth is not None and auth.covered == covered
    assert verify(Algorithm.HMAC_MD5, key, auth.covered, auth.authenticator)
    # Any change to a covered byte breaks it.
    for i in range(len(covered)):
        tampered = bytearray(wire)
        tampered[i] ^= 0x01
        try:
            t_auth = RegistrationRequest.decode(bytes(tampered)).mobile_home_auth
        except DecodeError:
            continue
        assert t_auth is None or not verify(Algorithm.HMAC_MD5, key, t_auth.covered,
                                            t_auth.authenticator)


def test_unknown_skippable_extension_is_skipped_and_kept():
    wire = _rrq().encode() + bytes([200, 3, 1, 2, 3]) + NaiExtension("x@y").encode()
    msg = RegistrationRequest.decode(wire)
    assert msg.extensions == (SkippedExtension(200, b"\x01\x02\x03"), NaiExtension("x@y"))
    assert msg.nai == "x@y"


def test_unknown_nonskippable_extension_is_an_error_at_its_offset():
    wire = _rrq().encode() + bytes([99, 2, 0, 0])
    with pytest.raises(UnknownExtensionError) as err:
        RegistrationRequest.decode(wire)
    assert err.value.offset == 24 and err.value.ext_type == 99
    assert "offset 24" in str(err.value)


def test_pad_extension_is_one_byte():
    wire = _rrq().encode() + b"\x00\x00" + NaiExtension("x@y").encode()
    assert RegistrationRequest.decode(wire).nai == "x@y"


@pytest.mark.parametrize(("tail", "offset", "words"), [
    (b"\x83", 24, "no length byte"),
    (b"\x83\x09ab", 25, "runs past the end"),
    (b"\x20\x02\x00\x00", 25, "shorter than its SPI"),
    (b"\x90\x05\x00\x00\x00\x04\x00", 25, "length is 5, must be 6"),
    (b"\x83\x02\xff\xfe", 26, "not UTF-8"),
    (b"\x90\x06\x01\x00\x00\x04\x00\x00", 26, "sub-type 1"),
])
def test_malformed_extensions_say_what_and_where(tail, offset, words):
    with pytest.raises(DecodeError) as err:
        RegistrationRequest.decode(_rrq().encode() + tail)
    assert err.value.offset == offset
    assert words in str(err.value)


def test_short_and_wrong_type_messages():
    with pytest.raises(DecodeError, match="needs at least 24"):
        RegistrationRequest.decode(b"\x01" * 10)
    with pytest.raises(DecodeError, match="not a registration reply"):
        RegistrationReply.decode(_rrq().encode())
    with pytest.raises(DecodeError, match="unknown Mobile IP message type 9"):
        decode_message(b"\x09" * 30)
    with pytest.raises(DecodeError, match="empty"):
        decode_message(b"")


def test_agent_advertisement_layout_and_checks():
    adv = AgentAdvertisement(7, 600, AgentFlags.F | AgentFlags.T | AgentFlags.U,
                             (A("10.30.1.1"),), ((A("10.30.1.1"), 0),), 1800, (24,), 16)
    wire = adv.encode()
    assert wire[0] == 9 and wire[1] == 16
    assert wire[16:18] == b"\x10\x0a"  # extension 16, length 6 + 4
    assert struct.unpack_from("!HHH", wire, 18) == (7, 600, 0x1000 | 0x0100 | 0x0080)
    assert wire[-3:] == b"\x13\x01\x18"
    bad = bytearray(wire)
    bad[20] ^= 0xFF
    with pytest.raises(DecodeError, match="checksum"):
        AgentAdvertisement.decode(bytes(bad))
    plain_ra = struct.pack("!BBHBBH", 9, 0, 0, 0, 2, 1800)
    plain_ra = plain_ra[:2] + struct.pack("!H", checksum(plain_ra)) + plain_ra[4:]
    with pytest.raises(DecodeError, match="no mobility agent extension"):
        AgentAdvertisement.decode(plain_ra)


def test_reply_code_descriptions():
    assert codes.describe(133) == "denied by home agent: identification mismatch (133)"
    assert codes.describe(69) == "denied by foreign agent: requested lifetime too long (69)"
    assert codes.describe(0) == "registration accepted (0)"
    assert codes.describe(142) == "denied by home agent: UDP encapsulation unavailable (142)"
    for code in codes.ReplyCode:
        assert codes.meaning(code) != "unknown code", code
