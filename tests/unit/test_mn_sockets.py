"""The mobile node's sockets (app/mn/sockets.py) on loopback, as root, without namespaces.

Real sockets bound to "lo" (SO_BINDTODEVICE, SO_MARK and the IPsec bypass need root);
each peer on its own 127/8 address so that parallel runs do not meet.  What arrives is
awaited on the sinks; that something did *not* arrive is shown by a marker sent after it
on the same socket (the socket is read in order).  The advertisement parser of
app/mip/icmp.py is tested pure, on bytes.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any

import pytest

from app.mip.errors import DecodeError
from app.mip.icmp import ALL_ROUTERS, AgentAdvertisement, AgentFlags, advertisement_in_ip, checksum
from app.mn import access_mode as am
from app.mn.nat_keepalive import echo_request
from app.mn.registration import Datagram
from app.mn.reply_path import Path
from app.mn.sockets import ECHO_FORGET, ECHO_ID, EchoProbe, MobileNodeSockets
from app.net.ipip import TUNNEL_DATA_HEADER
from app.net.mn_routes import VPN_DEVICE
from tests.requirements import require_root

INNER = bytes.fromhex("4500002000000000401100000a140163") + bytes(4) + b"\x00\x35" * 6
WAIT = 5.0
"""Seconds before a datagram that should have come counts as lost (a failure, not a
measure of speed)."""


def _addr() -> IPv4Address:
    """A loopback address of this test's own (all of 127/8 is on lo)."""
    return IPv4Address(f"127.{random.randint(64, 254)}.{random.randint(1, 254)}."
                       f"{random.randint(2, 254)}")


@dataclass
class Sinks:
    datagrams: asyncio.Queue[tuple[bytes, Path]] = field(default_factory=asyncio.Queue)
    tunnel: list[bytes] = field(default_factory=list)
    adverts: asyncio.Queue[am.AgentAdvert] = field(default_factory=asyncio.Queue)
    echoes: asyncio.Queue[tuple[IPv4Address, float]] = field(default_factory=asyncio.Queue)
    history: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    udp_tunnel: bool = False


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root("SO_BINDTODEVICE, SO_MARK and raw ICMP sockets need root")


@pytest.fixture
def ha() -> Iterator[tuple[IPv4Address, socket.socket]]:
    """The home agent's registration port, 434, on an address of its own."""
    addr = _addr()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((str(addr), 434))
    yield addr, s
    s.close()


@pytest.fixture
async def mn(ha: tuple[IPv4Address, socket.socket]
             ) -> AsyncIterator[tuple[MobileNodeSockets, Sinks]]:
    sinks = Sinks()
    errors: list[dict[str, object]] = []  # a callback that raised: asyncio only logs it
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
    socks = MobileNodeSockets(
        ha[0], on_datagram=lambda d, p: sinks.datagrams.put_nowait((d, p)),
        on_tunnel_data=sinks.tunnel.append, udp_tunnel=lambda: sinks.udp_tunnel,
        on_advert=sinks.adverts.put_nowait, on_echo=lambda g, r: sinks.echoes.put_nowait((g, r)),
        on_history=lambda k, d: sinks.history.append((k, d)))
    yield socks, sinks
    socks.close()
    assert errors == []


async def _next(q: asyncio.Queue[Any]) -> Any:
    return await asyncio.wait_for(q.get(), WAIT)


def _port(s: socket.socket | None) -> tuple[str, int]:
    assert s is not None
    return s.getsockname()  # type: ignore[no-any-return]


async def test_a_datagram_on_the_link_socket_reaches_on_datagram_tagged_link(mn, ha) -> None:
    socks, sinks = mn
    socks.open_link("lo", _addr(), hear_agents=False)
    ha[1].sendto(b"\x03reply", _port(socks.registration))
    assert await _next(sinks.datagrams) == (b"\x03reply", Path.LINK)


async def test_the_vpn_side_socket_on_the_tia_tags_its_datagrams_vpn(mn, ha) -> None:
    socks, sinks = mn
    tia = _addr()
    socks.open_vpn(tia)  # no ipsec0 here: bound to the TIA only, as with kernel ESP
    assert socks.can_register
    ha[1].sendto(b"\x03through the vpn", _port(socks._vpn_reg))
    assert await _next(sinks.datagrams) == (b"\x03through the vpn", Path.VPN)
    socks.send(am.Send("lo", Datagram(b"\x01request", (ha[0], 434)), through_vpn=True))
    data, peer = ha[1].recvfrom(100)
    assert (data, peer[0]) == (b"\x01request", str(tia))
    assert sinks.history == [("probe-sent", {"to": str(ha[0]), "interface": VPN_DEVICE,
                                             "vpn": "true"})]


async def test_rfc5944_3_6_1_1_a_request_from_another_source_leaves_by_its_own_socket(
        mn, ha) -> None:
    socks, sinks = mn
    link, home = _addr(), _addr()
    socks.open_link("lo", link, hear_agents=False)
    socks.send(am.Send("lo", Datagram(b"\x01from the link", (ha[0], 434))))
    socks.send(am.Send("lo", Datagram(b"\x01from home", (ha[0], 434), source=home, ttl=255)))
    got = {ha[1].recvfrom(100)[1][0] for _ in range(2)}
    assert got == {str(link), str(home)}
    assert [k for k, _ in sinks.history] == ["probe-sent", "probe-sent"]
    # The per-source socket is read as well: the answer to the home address comes back.
    ha[1].sendto(b"\x03to home", _port(socks._by_source[home]))
    assert await _next(sinks.datagrams) == (b"\x03to home", Path.LINK)


async def _tunnel_case(mn, ha, *, active: bool, sender: socket.socket | None = None
                       ) -> list[bytes]:
    socks, sinks = mn
    sinks.udp_tunnel = active
    socks.open_link("lo", _addr(), hear_agents=False)
    dst = _port(socks.registration)
    (sender or ha[1]).sendto(TUNNEL_DATA_HEADER + INNER, dst)
    ha[1].sendto(b"\x03marker", dst)  # read after the tunnel data: it was seen by then
    assert await _next(sinks.datagrams) == (b"\x03marker", Path.LINK)
    return sinks.tunnel


async def test_rfc3519_4_7_tunnel_data_of_a_granted_udp_tunnel_reaches_the_tunnel(
        mn, ha) -> None:
    assert await _tunnel_case(mn, ha, active=True) == [INNER]


async def test_rfc3519_4_7_tunnel_data_without_a_udp_tunnel_binding_is_dropped(mn, ha) -> None:
    # Mode mc, or c with IP-in-IP: the direct socket is visible on the untrusted link.
    assert await _tunnel_case(mn, ha, active=False) == []


@pytest.mark.parametrize("port", [434, 0], ids=["other-address", "other-port"])
async def test_rfc3519_4_7_tunnel_data_only_from_the_home_agents_address_and_port(
        mn, ha, port: int) -> None:
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind((str(_addr()) if port else str(ha[0]), port))
    with other:
        assert await _tunnel_case(mn, ha, active=True, sender=other) == []


async def test_rfc5266_4_in_mc_tunnel_data_is_taken_on_the_tias_socket_only(ha) -> None:
    """A TIA translated by the gateway: the home agent's RFC 3519 tunnel comes through
    the VPN to the TIA's registration socket; the link's (seen on the untrusted
    network) passes nothing to the tunnel then."""
    sinks = Sinks()
    socks = MobileNodeSockets(
        ha[0], on_datagram=lambda d, p: sinks.datagrams.put_nowait((d, p)),
        on_tunnel_data=sinks.tunnel.append, udp_tunnel=lambda: True,
        udp_tunnel_via_vpn=lambda: True)
    try:
        socks.open_link("lo", _addr(), hear_agents=False)
        socks.open_vpn(_addr())
        for s, path in ((socks.registration, Path.LINK), (socks._vpn_reg, Path.VPN)):
            ha[1].sendto(TUNNEL_DATA_HEADER + INNER, _port(s))
            ha[1].sendto(b"\x03marker", _port(s))
            assert await _next(sinks.datagrams) == (b"\x03marker", path)
        assert sinks.tunnel == [INNER]
        assert socks.udp_tunnel_socket(True) is socks._vpn_reg
    finally:
        socks.close()


def _advert_packet(source: IPv4Address, adv: AgentAdvertisement, ihl: int = 5) -> bytes:
    icmp = adv.encode()
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 4 * ihl + len(icmp), 0, 0, 1, 1, 0,
                       source.packed, IPv4Address("224.0.0.1").packed)
    return head + bytes(4 * ihl - 20) + icmp


FA = IPv4Address("10.30.0.1")
ADV = AgentAdvertisement(3, 600, AgentFlags.F | AgentFlags.B, (IPv4Address("10.30.0.2"),))
HA_ONLY = AgentAdvertisement(4, 600, AgentFlags.H)


def test_rfc5944_2_1_an_advertisement_is_read_out_of_its_ip_packet_past_the_options() -> None:
    assert advertisement_in_ip(_advert_packet(FA, ADV)) == (FA, ADV)
    assert advertisement_in_ip(_advert_packet(FA, ADV, ihl=7)) == (FA, ADV)


def test_other_icmp_messages_are_not_advertisements() -> None:
    echo = echo_request(FA, IPv4Address("10.30.0.9"), 1, 1)
    assert advertisement_in_ip(echo) is None


@pytest.mark.parametrize(("packet", "says"), [
    (b"\x45" + bytes(10), "shorter than an IPv4 header"),
    (b"\x65" + _advert_packet(FA, ADV)[1:], "IP version 6"),
    (b"\x44" + _advert_packet(FA, ADV)[1:], "IHL"),
    (_advert_packet(FA, ADV)[:9] + b"\x11" + _advert_packet(FA, ADV)[10:], "protocol 17"),
    (b"\x4f" + _advert_packet(FA, ADV)[1:20], "leaves no ICMP message"),
    (_advert_packet(FA, ADV)[:-2], "checksum"),
], ids=["short", "version", "ihl", "protocol", "ihl-past-end", "icmp-checksum"])
def test_a_malformed_advertisement_packet_says_what_is_wrong(packet: bytes, says: str) -> None:
    with pytest.raises(DecodeError, match=says):
        advertisement_in_ip(packet)


async def test_rfc5944_2_1_an_advertisement_heard_on_the_link_reaches_on_advert(mn) -> None:
    socks, sinks = mn
    socks.open_link("lo", _addr(), hear_agents=True)
    agent = _addr()
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with raw:
        raw.bind((str(agent), 0))
        raw.sendto(b"\x0a" + bytes(7), (str(agent), 0))  # not an advertisement: ignored
        raw.sendto(HA_ONLY.encode(), (str(agent), 0))  # no care-of address: not an FA
        raw.sendto(ADV.encode(), (str(agent), 0))
        got = await _next(sinks.adverts)
    assert got == am.AgentAdvert("lo", IPv4Address("10.30.0.2"), 600, agent=agent, busy=True)
    assert sinks.adverts.empty()


async def test_rfc5944_2_2_the_solicitation_leaves_the_links_icmp_socket_with_ttl_1(
        mn) -> None:
    socks, _ = mn
    socks.solicit("lo")  # no ICMP socket yet: nothing, no error
    socks.open_link("lo", _addr(), hear_agents=True)
    router = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    with router:
        router.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                          ALL_ROUTERS.packed + IPv4Address("127.0.0.1").packed)
        router.settimeout(WAIT)
        socks.solicit("lo")
        while True:
            pkt = router.recv(100)
            if pkt[20] == 10:
                break
    assert pkt[8] == 1 and pkt[16:20] == ALL_ROUTERS.packed  # TTL 1, to all routers
    assert checksum(pkt[20:]) == 0


def _reply(gw: IPv4Address, ident: int, seq: int) -> bytes:
    icmp = struct.pack("!BBHHH", 0, 0, 0, ident, seq) + b"x"
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0, gw.packed,
                       IPv4Address("10.0.0.9").packed) + icmp


def test_the_vpn_probe_matches_a_reply_only_by_its_id_sequence_and_gateway() -> None:
    gw = IPv4Address("192.0.2.1")
    probe = EchoProbe()
    seq, request = probe.request(IPv4Address("10.0.0.9"), gw)
    assert request[0] == 8 and request[4:8] == struct.pack("!HH", ECHO_ID, seq)
    probe.sent(seq, gw, 100.0)
    assert probe.reply(_reply(gw, ECHO_ID + 1, seq), 100.5) is None
    assert probe.reply(_reply(gw, ECHO_ID, seq + 1), 100.5) is None
    assert probe.reply(_reply(IPv4Address("192.0.2.2"), ECHO_ID, seq), 100.5) is None
    assert probe.reply(_reply(gw, ECHO_ID, seq), 100.25) == (gw, 0.25)
    assert probe.reply(_reply(gw, ECHO_ID, seq), 100.5) is None  # answered once


def test_the_vpn_probe_forgets_a_request_left_unanswered() -> None:
    gw = IPv4Address("192.0.2.1")
    probe = EchoProbe()
    old, _ = probe.request(gw, gw)
    probe.sent(old, gw, 0.0)
    new, _ = probe.request(gw, gw)
    probe.sent(new, gw, ECHO_FORGET)
    assert probe.reply(_reply(gw, ECHO_ID, old), ECHO_FORGET) is None
    assert probe.reply(_reply(gw, ECHO_ID, new), ECHO_FORGET + 1) == (gw, 1.0)


async def test_the_vpn_probe_goes_from_the_link_and_its_reply_gives_the_rtt(mn) -> None:
    socks, sinks = mn
    gw = _addr()
    socks.send_echo(gw, "lo", _addr())  # the kernel answers on lo
    got_gw, rtt = await _next(sinks.echoes)
    assert got_gw == gw and 0 <= rtt < WAIT


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_close_closes_every_socket_it_opened(ha) -> None:
    before = _fds()
    socks = MobileNodeSockets(ha[0], on_datagram=lambda d, p: None,
                              on_tunnel_data=lambda b: None, udp_tunnel=lambda: False)
    socks.open_link("lo", _addr(), hear_agents=True)
    socks.send(am.Send("lo", Datagram(b"\x01", (ha[0], 434), source=_addr())))
    socks.open_vpn(_addr())
    socks.send_echo(_addr(), "lo", _addr())
    assert len(_fds() - before) == 5  # link, per-source, ICMP, TIA, echo
    socks.close()
    assert _fds() - before == set()
    assert not socks.can_register and socks.registration is None


async def test_a_link_going_down_closes_its_sockets_but_not_the_tias(mn, ha) -> None:
    socks, _ = mn
    before = _fds()
    socks.open_link("lo", _addr(), hear_agents=True)
    socks.open_vpn(_addr())
    socks.close_link()
    assert len(_fds() - before) == 1 and socks.can_register and socks.registration is None


async def test_probe_sent_only_for_a_datagram_that_left(mn, ha) -> None:
    socks, sinks = mn
    request = Datagram(b"\x01", (ha[0], 434))
    socks.send(am.Send("lo", request))  # no link socket yet
    socks.send(am.Send("lo", request, through_vpn=True))  # no TIA yet
    socks.open_link("lo", _addr(), hear_agents=False)
    socks.open_vpn(_addr())
    refused = Datagram(b"\x01", (ha[0], 0))  # port 0: the kernel refuses it
    socks.send(am.Send("lo", refused))
    socks.send(am.Send("lo", refused, through_vpn=True))
    assert sinks.history == []
