"""RFC 3519 4.7: "UDP tunnelling SHALL be used only for data packets, and only when the
mobility binding used for sending was established using the UDP Tunnel Request, and
accepted by an UDP Tunnel Reply".

The direct registration socket stays open in mode mc (the direct probe goes on), and
its port is visible on the untrusted link.  The driver hands RFC 3519 tunnel data that
arrives on it to the tunnel device only while the binding has a UDP tunnel (its
keepalive runs exactly then).  The driver is built bare here: only the socket drain is
under test, on a socket that replays what the network sent.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from types import SimpleNamespace
from typing import Any

from app.mn.driver import MobileNodeDriver
from app.mn.nat_keepalive import NatKeepalive
from app.net.ipip import TUNNEL_DATA_HEADER

HA = IPv4Address("10.20.1.1")
HOME = IPv4Address("10.20.1.10")
INNER = (bytes.fromhex("4500002000000000401100000a140163") + HOME.packed
         + b"\x00\x35\x27\x0f\x00\x0c\x00\x00evil")


class Replay:
    """recvfrom() of what the network sent, then EAGAIN."""

    def __init__(self, *datagrams: tuple[bytes, tuple[str, int]]) -> None:
        self.left = list(datagrams)

    def recvfrom(self, _size: int) -> tuple[bytes, tuple[str, int]]:
        if not self.left:
            raise BlockingIOError
        return self.left.pop(0)


def _drain(keepalive: NatKeepalive | None) -> tuple[list[bytes], list[Any]]:
    written: list[bytes] = []
    queued: list[Any] = []
    sock = Replay((TUNNEL_DATA_HEADER + INNER, (str(HA), 434)))
    drv: Any = object.__new__(MobileNodeDriver)
    drv.profile = SimpleNamespace(home_agent=HA)
    drv._reg, drv._vpn_reg, drv._keepalive = sock, None, keepalive
    drv.routes = SimpleNamespace(tunnel_write=written.append)
    drv._queue = SimpleNamespace(put_nowait=queued.append)
    drv.clock = lambda: 0.0
    MobileNodeDriver._readable(drv, sock)
    return written, queued


def test_rfc3519_4_7_tunnel_data_without_a_udp_tunnel_binding_is_dropped() -> None:
    written, queued = _drain(keepalive=None)  # mode mc, or c with IP-in-IP
    assert written == [] and queued == []


def test_rfc3519_4_7_tunnel_data_of_a_granted_udp_tunnel_reaches_the_tunnel() -> None:
    written, _ = _drain(keepalive=NatKeepalive.start(20, 0.0))
    assert written == [INNER]
