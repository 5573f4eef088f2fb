"""RFC 3519 4.9/4.10 keepalives on the registration socket (app/mn/tunnel_keepalive.py):
Echo Requests sent from the socket given, the home agent's Echo Reply taken, other
tunnel data left for the tunnel.  A plain UDP socket pair on loopback, no root."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from app.mn import tunnel_keepalive
from app.mn.nat_keepalive import RETRANSMISSIONS, echo_request, parse_echo_reply
from app.mn.tunnel_keepalive import TunnelKeepalive
from app.net.ipip import TUNNEL_DATA_HEADER

HOME, HA = IPv4Address("10.20.1.10"), IPv4Address("127.0.0.1")


def _reply_to(request: bytes) -> bytes:
    """The home agent's Echo Reply to an inner Echo Request (type 0, addresses swapped)."""
    ihl = (request[0] & 0x0F) * 4
    ident, seq = request[ihl + 4:ihl + 6], request[ihl + 6:ihl + 8]
    reply = echo_request(HA, HOME, int.from_bytes(ident, "big"), int.from_bytes(seq, "big"))
    return reply[:20] + b"\x00" + reply[21:]


@pytest.fixture
def ha(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    monkeypatch.setattr(tunnel_keepalive, "MIP_PORT", s.getsockname()[1])
    yield s
    s.close()


@pytest.fixture
def reg() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield s
    s.close()


def test_rfc3519_4_9_the_echo_request_leaves_from_the_registration_socket(ha, reg):
    k = TunnelKeepalive(HOME, HA)
    assert not k.running and k.get_timer() is None and not k.tick(0.0, reg)
    k.start(20, now=100.0)
    assert k.running and k.get_timer() == 120.0
    assert not k.tick(119.0, reg)  # not yet due
    assert not k.tick(120.0, reg)
    data = ha.recv(2048)
    assert data.startswith(TUNNEL_DATA_HEADER)
    inner = data[len(TUNNEL_DATA_HEADER):]
    assert inner[12:16] == HOME.packed and inner[16:20] == HA.packed
    # The home agent's answer is ours: taken, the next one K later.
    assert not k.reply(b"\x45" + bytes(40), 120.5)  # tunnel data: for the tunnel
    assert parse_echo_reply(_reply_to(inner), HA) is not None
    assert k.reply(_reply_to(inner), 120.5)
    assert k.get_timer() == 140.5
    k.stop()
    assert not k.running and not k.reply(_reply_to(inner), 121.0)


def test_rfc3519_4_10_unanswered_keepalives_ask_for_a_registration(ha, reg):
    k = TunnelKeepalive(HOME, HA)
    k.start(20, now=0.0)
    answers = []
    for _ in range(RETRANSMISSIONS + 2):
        t = k.get_timer()
        assert t is not None
        answers.append(k.tick(t, reg))
    assert answers == [False] * (RETRANSMISSIONS + 1) + [True]


def test_a_keepalive_that_cannot_leave_is_logged_not_raised(caplog):
    k = TunnelKeepalive(HOME, HA)
    k.start(20, now=0.0)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        # Sending to a broadcast address without SO_BROADCAST fails with EACCES.
        k.home_agent = IPv4Address("255.255.255.255")
        with caplog.at_level("INFO", "trustroam.mn"):
            assert not k.tick(20.0, s)
        assert "keepalive to the home agent not sent" in caplog.text
    finally:
        s.close()


def test_rfc3519_4_9_keepalives_run_exactly_while_the_data_plane_is_udp_tunnelled():
    k = TunnelKeepalive(HOME, HA)
    assert k.configure(True, 20, now=100.0) == [("udp-tunnel", {"keepalive_s": "20"})]
    assert k.running and k.get_timer() == 120.0
    assert k.configure(False, 0, now=101.0) == []  # another mode: its mapping is none
    assert not k.running and k.get_timer() is None
