"""Independent oracles: Wireshark's tshark and scapy decode what app.mip encodes.

tshark (not written here) must read every message type and extension with the
values we meant; scapy's mobileip layer must parse the fixed parts, and a
request built by scapy (a stranger's client) must be served by our HA.
"""

from __future__ import annotations

import random
import subprocess
import xml.etree.ElementTree as ET
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.mobileip import MobileIP, MobileIPRRP, MobileIPRRQ, MobileIPTunnelData
from scapy.packet import Raw
from scapy.utils import wrpcap

from app.mip.auth import Algorithm, append_authenticator, verify
from app.mip.extensions import (
    ExtType,
    NaiExtension,
    SkippedExtension,
    UdpTunnelReply,
    UdpTunnelRequest,
)
from app.mip.icmp import AgentAdvertisement, AgentFlags, AgentSolicitation
from app.mip.messages import RegFlags, RegistrationReply, RegistrationRequest, TunnelData
from tests.haproc import HaProcess
from tests.mipclient import KEY_A
from tests.requirements import TSHARK, require_tshark

A = IPv4Address


@pytest.fixture(autouse=True)
def _tshark() -> None:
    """The oracle: skipped with this reason locally, a failure in CI."""
    require_tshark()


Fields = dict[str, list[tuple[str, str]]]


def _udp(payload: bytes) -> Ether:
    return (Ether() / IP(src="10.30.0.5", dst="10.20.1.1") / UDP(sport=434, dport=434)
            / Raw(load=payload))


def _icmp(payload: bytes) -> Ether:
    return Ether() / IP(src="10.30.1.1", dst="224.0.0.1", proto=1, ttl=1) / Raw(load=payload)


def tshark_fields(tmp_path: Path, frames: list[Ether]) -> list[Fields]:
    pcap = tmp_path / "oracle.pcap"
    wrpcap(str(pcap), frames)
    out = subprocess.run([TSHARK, "-r", str(pcap), "-T", "pdml"], capture_output=True,
                         text=True, check=True, timeout=120)
    packets: list[Fields] = []
    for pkt in ET.fromstring(out.stdout).iter("packet"):
        fields: Fields = {}
        for f in pkt.iter("field"):
            name = f.get("name")
            if name:
                fields.setdefault(name, []).append((f.get("show", ""), f.get("value", "")))
        packets.append(fields)
    assert len(packets) == len(frames)
    return packets


def show(fields: Fields, name: str) -> list[str]:
    return [s for s, _ in fields.get(name, [])]


def value(fields: Fields, name: str) -> list[int]:
    return [int(v, 16) for _, v in fields.get(name, [])]


def signed(msg: bytes) -> bytes:
    return append_authenticator(msg, ExtType.MOBILE_HOME_AUTH, 0x1234, KEY_A, Algorithm.HMAC_MD5)


def check_request(f: Fields, m: RegistrationRequest) -> None:
    assert value(f, "mip.type") == [1]
    assert value(f, "mip.flags") == [int(m.flags)]
    for flag, field in [(RegFlags.S, "mip.s"), (RegFlags.B, "mip.b"), (RegFlags.D, "mip.d"),
                        (RegFlags.M, "mip.m"), (RegFlags.G, "mip.g"), (RegFlags.r, "mip.v"),
                        (RegFlags.T, "mip.t"), (RegFlags.x, "mip.x")]:
        assert value(f, field) == [int(bool(m.flags & flag))], field
    assert show(f, "mip.life") == [str(m.lifetime)]
    assert show(f, "mip.homeaddr") == [str(m.home_address)]
    assert show(f, "mip.haaddr") == [str(m.home_agent)]
    assert show(f, "mip.coa") == [str(m.care_of_address)]
    assert value(f, "mip.ident") == [m.identification]


def test_tshark_decodes_every_message_and_extension(tmp_path):
    rrq = RegistrationRequest(
        RegFlags.S | RegFlags.B | RegFlags.D | RegFlags.T, 1800, A("10.20.1.10"),
        A("10.20.1.1"), A("10.30.0.5"), 0xEAD8_1234_5678_9ABC,
        (NaiExtension("alice@corp.example"), UdpTunnelRequest(True, True, 4)))
    rrq_wire = signed(rrq.encode())
    rrp = RegistrationReply(133, 0, A("10.20.1.10"), A("10.20.1.1"), 0xEAD8_1234_0000_0001,
                            (UdpTunnelReply(0, True, 110),))
    rrp_wire = signed(rrp.encode())
    declined = RegistrationReply(0, 600, A("10.20.1.10"), A("10.20.1.1"), 7,
                                 (UdpTunnelReply(64, False, 0),)).encode()
    inner = bytes(IP(src="10.20.1.99", dst="10.20.1.10") / UDP(sport=1, dport=2))
    tun = TunnelData(inner).encode()
    adv = AgentAdvertisement(4242, 900, AgentFlags.F | AgentFlags.T | AgentFlags.U | AgentFlags.R,
                             (A("10.30.2.1"), A("10.30.2.2")), ((A("10.30.2.1"), 5),), 600,
                             (24,), 16).encode()
    sol = AgentSolicitation().encode()
    # An FA-relayed request: Mobile-Home, then Mobile-Foreign (33) and Foreign-Home (34).
    relayed = append_authenticator(append_authenticator(rrq_wire, 33, 0x2222, KEY_A,
                                                        Algorithm.HMAC_MD5),
                                   34, 0x3333, KEY_A, Algorithm.KEYED_MD5)
    f = tshark_fields(tmp_path, [_udp(rrq_wire), _udp(rrp_wire), _udp(declined), _udp(tun),
                                 _icmp(adv), _icmp(sol), _udp(relayed)])

    check_request(f[0], rrq)
    assert value(f[0], "mip.ext.type") == [131, 144, 32]
    assert show(f[0], "mip.nai") == ["alice@corp.example"]
    assert value(f[0], "mip.ext.utrq.f") == [1]
    assert value(f[0], "mip.ext.utrq.r") == [1]
    assert show(f[0], "mip.ext.utrq.encaptype") == ["4"]
    assert value(f[0], "mip.auth.spi") == [0x1234]
    assert [v for _, v in f[0]["mip.auth.auth"]] == [rrq_wire[-16:].hex()]

    assert value(f[1], "mip.type") == [3]
    assert show(f[1], "mip.code") == ["133"]
    assert show(f[1], "mip.life") == ["0"]
    assert value(f[1], "mip.ident") == [rrp.identification]
    assert value(f[1], "mip.ext.type") == [44, 32]
    assert show(f[1], "mip.ext.utrp.code") == ["0"]
    assert value(f[1], "mip.ext.utrp.f") == [1]
    assert show(f[1], "mip.ext.utrp.keepalive") == ["110"]
    assert show(f[2], "mip.ext.utrp.code") == ["64"]

    assert value(f[3], "mip.type") == [4]
    assert show(f[3], "mip.nattt.nexthdr") == ["4"]
    assert show(f[3], "ip.src")[-1] == "10.20.1.99"  # the tunnelled packet, decoded

    assert show(f[4], "icmp.type") == ["9"] and show(f[4], "icmp.code") == ["16"]
    assert show(f[4], "icmp.checksum.status") == ["1"]
    assert show(f[4], "icmp.router_address") == ["10.30.2.1"]
    assert show(f[4], "icmp.pref_level") == ["5"]
    assert show(f[4], "icmp.lifetime") == ["600"]
    assert show(f[4], "icmp.mip.seq") == ["4242"]
    assert show(f[4], "icmp.mip.life") == ["900"]
    assert value(f[4], "icmp.mip.flags")[0] == 0x8000 | 0x1000 | 0x0100 | 0x0080
    assert show(f[4], "icmp.mip.coa") == ["10.30.2.1", "10.30.2.2"]
    assert show(f[4], "icmp.mip.prefixlength") == ["24"]
    assert show(f[5], "icmp.type") == ["10"]
    assert show(f[5], "icmp.checksum.status") == ["1"]

    assert value(f[6], "mip.ext.type") == [131, 144, 32, 33, 34]
    assert value(f[6], "mip.auth.spi") == [0x1234, 0x2222, 0x3333]
    assert [v for _, v in f[6]["mip.auth.auth"]][1:] == [relayed[-38:-22].hex(),
                                                        relayed[-16:].hex()]


def test_tshark_agrees_on_random_requests(tmp_path):
    rng = random.Random(3344)
    msgs = []
    for _ in range(60):
        exts = []
        if rng.random() < 0.5:
            exts.append(NaiExtension(f"user{rng.randrange(10**6)}@example.net"))
        if rng.random() < 0.5:
            exts.append(UdpTunnelRequest(rng.random() < 0.5, False, 4))
        if rng.random() < 0.3:
            exts.append(SkippedExtension(rng.choice([129, 137, 145]), b"\x01\x02\x03\x04\x05"))
        msgs.append(RegistrationRequest(
            RegFlags(rng.getrandbits(8)), rng.getrandbits(16), A(rng.getrandbits(32)),
            A(rng.getrandbits(32)), A(rng.getrandbits(32)), rng.getrandbits(64), tuple(exts)))
    decoded = tshark_fields(tmp_path, [_udp(signed(m.encode())) for m in msgs])
    for f, m in zip(decoded, msgs, strict=True):
        check_request(f, m)
        assert value(f, "mip.ext.type") == [getattr(e, "ext_type", None) or {
            NaiExtension: 131, UdpTunnelRequest: 144}[type(e)] for e in m.extensions] + [32]
        assert show(f, "mip.nai") == ([m.nai] if m.nai else [])


def test_scapy_parses_the_fixed_parts():
    rrq = RegistrationRequest(RegFlags.D | RegFlags.T, 600, A("10.20.1.10"), A("10.20.1.1"),
                              A("10.30.0.5"), 0x0102030405060708)
    pkt = UDP(sport=434, dport=434) / Raw(load=rrq.encode())
    parsed = UDP(bytes(pkt))
    assert parsed.haslayer(MobileIPRRQ)
    p = parsed[MobileIPRRQ]
    assert (p.flags, p.lifetime, p.homeaddr, p.haaddr, p.coaddr, p.id) == (
        0x22, 600, "10.20.1.10", "10.20.1.1", "10.30.0.5", 0x0102030405060708)
    rrp = RegistrationReply(131, 0, A("10.20.1.10"), A("10.20.1.1"), 99)
    p2 = UDP(bytes(UDP(sport=434, dport=434) / Raw(load=rrp.encode())))[MobileIPRRP]
    assert (p2.code, p2.lifetime, p2.homeaddr, p2.haaddr, p2.id) == (
        131, 0, "10.20.1.10", "10.20.1.1", 99)
    p3 = UDP(bytes(UDP(sport=434, dport=434) / Raw(load=TunnelData(b"x" * 20).encode())))
    assert p3[MobileIPTunnelData].nexthdr == 4


def test_strangers_client_built_with_scapy_is_served(tmp_path):
    """A request whose fixed part scapy builds is accepted; scapy reads the reply."""
    from app.mip import ident

    ha = HaProcess(tmp_path).start()
    try:
        fixed = bytes(MobileIP(type=1) / MobileIPRRQ(
            flags=0x22, lifetime=120, homeaddr="10.20.1.10", haaddr="10.20.1.1",
            coaddr="127.0.0.1", id=ident.ntp_from_unix(__import__("time").time())))
        wire = append_authenticator(fixed, 32, 256, KEY_A, Algorithm.HMAC_MD5)
        reply = ha.exchange(wire)
        p = UDP(bytes(UDP(sport=434, dport=434) / Raw(load=reply)))[MobileIPRRP]
        assert p.code == 1 and p.lifetime == 120 and p.homeaddr == "10.20.1.10"
        auth = RegistrationReply.decode(reply).mobile_home_auth
        assert auth is not None and verify(Algorithm.HMAC_MD5, KEY_A, auth.covered,
                                           auth.authenticator)
    finally:
        ha.stop()


def test_tshark_reads_what_the_agents_now_put_on_the_wire(tmp_path):
    """Issue 10's wire changes: the MN's UDP Tunnel Request (auto), the FA's relayed
    request (trailing extensions removed, Foreign-Home authenticator added), its 76
    with the request's lifetime, and the HA's code 1 signed for the FA."""
    from app.agents.fa_config import ForeignAgentConfig, HomeAgentSA
    from app.agents.fa_core import ForeignAgent, ToHomeAgent, ToMobileNode
    from app.agents.ha_config import ForeignAgentSA
    from app.agents.ha_core import HomeAgent
    from app.mn.registration import RegistrationClient, RegistrationConfig, UdpTunnelling
    from tests.support.identities import ALICE, HA, T0, config

    fa_key = bytes(range(32, 48))
    coa = A("10.40.1.1")
    c = RegistrationClient(RegistrationConfig(ALICE, HA, 256, Algorithm.HMAC_MD5, KEY_A,
                                              nai="alice@corp.example", lifetime=120,
                                              udp_tunnelling=UdpTunnelling.AUTO))
    c.register(A("10.30.0.5"), T0)
    colocated = c.datagrams_to_send()[0].data
    fa = ForeignAgent(ForeignAgentConfig(coa, "fa", max_lifetime=300, home_agents=(
        HomeAgentSA(HA, 900, Algorithm.HMAC_MD5, fa_key),)))
    c.register(coa, T0 + 1, via=coa)
    via_fa = c.datagrams_to_send()[0].data
    [relayed] = [a.data for a in fa.from_mobile_node(
        via_fa + SkippedExtension(200, b"fa-only").encode(), (ALICE, 434), T0 + 1,
        ttl=255).actions if isinstance(a, ToHomeAgent)]
    ha = HomeAgent(config(foreign_agents=(ForeignAgentSA(coa, 900, Algorithm.HMAC_MD5,
                                                         fa_key),)))
    reply = ha.handle_request(relayed, (A("10.0.0.11"), 434), T0 + 1).reply
    c.register(coa, T0 + 2, via=coa)
    [denial] = [a.data for a in fa.from_mobile_node(c.datagrams_to_send()[0].data,
                                                    (ALICE, 434), T0 + 2, ttl=64).actions
                if isinstance(a, ToMobileNode)]
    f = tshark_fields(tmp_path, [_udp(colocated), _udp(relayed), _udp(reply), _udp(denial)])

    assert value(f[0], "mip.ext.type") == [131, 144, 32]
    assert value(f[0], "mip.ext.utrq.f") == [0] and value(f[0], "mip.d") == [1]
    assert value(f[1], "mip.ext.type") == [131, 32, 34]  # 200 removed, FHAE added
    assert value(f[1], "mip.auth.spi") == [256, 900] and value(f[1], "mip.d") == [0]
    assert show(f[2], "mip.code") == ["1"] and value(f[2], "mip.ext.type") == [32, 34]
    assert show(f[3], "mip.code") == ["76"] and show(f[3], "mip.life") == ["120"]


@pytest.mark.parametrize("engine", ["python", "compiled"])
def test_rfc2784_tshark_decodes_our_gre_encapsulated_packet(tmp_path, engine):
    """What each tunnel engine sends for a GRE binding, taken off loopback by a raw
    GRE socket, is GRE to Wireshark: version 0, no checksum (RFC 2784 2.1), protocol
    type 0x0800 (3: IPv4 payload), and the inner packet whole behind it."""
    import socket

    from app.net import ipip
    from tests.requirements import require, require_root

    require_root("raw GRE sockets need root")
    if engine == "compiled":
        require(ipip.compiled_engine_available(), "app.net._fastpath is not built")
    inner = bytes(IP(src="10.20.1.1", dst="10.20.1.10", id=7) / UDP(sport=5000, dport=6000)
                  / Raw(load=b"gre oracle"))
    tun, feed = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # stands in for TUN
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, ipip.IPPROTO_IPIP)
    gre = socket.socket(socket.AF_INET, socket.SOCK_RAW, ipip.IPPROTO_GRE)
    sniff = socket.socket(socket.AF_INET, socket.SOCK_RAW, ipip.IPPROTO_GRE)
    sniff.settimeout(5)
    key = socket.inet_aton("10.20.1.10")
    tun.setblocking(False)
    eng: ipip.Engine
    if engine == "compiled":
        eng = ipip._fastpath.Engine(tun.fileno(), raw.fileno(), -1, 16, 12,
                                    gre_fd=gre.fileno())
    else:
        eng = ipip.PythonEngine(tun.fileno(), raw.fileno(), -1, 16, 12, gre_fd=gre.fileno())
    try:
        eng.set_route(key, socket.inet_aton("127.0.0.1"), 0, True)
        feed.send(inner)
        assert eng.pump_tun() == 1 and eng.counters()["out"] == 1
        wire = sniff.recv(65535)  # the outer IPv4 header, the GRE header, the packet
    finally:
        if isinstance(eng, ipip.PythonEngine):
            eng.close()  # its duplicates of the sockets
        for s in (tun, feed, raw, gre, sniff):
            s.close()
    [f] = tshark_fields(tmp_path, [Ether() / IP(wire)])
    assert value(f, "ip.proto")[0] == 47
    assert value(f, "gre.proto") == [0x0800]
    assert value(f, "gre.flags.checksum") == [0] and value(f, "gre.flags.version") == [0]
    assert show(f, "ip.src") == ["127.0.0.1", "10.20.1.1"]
    assert show(f, "ip.dst") == ["127.0.0.1", "10.20.1.10"]
    assert wire[(wire[0] & 0x0F) * 4:] == ipip.GRE_HEADER + inner
