"""The untrusted-link judge (tests/lab/leaks.py) on captures written here with scapy
and decoded by tshark: the allowed set passes, and each forbidden frame is named
by exactly the rule(s) it breaks (RFC 5266 3.4; issue 12's gate)."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6ND_RS, IPv6
from scapy.layers.ipsec import ESP
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw
from scapy.utils import wrpcap

from tests.lab.leaks import Rule, judge, lab_policy, leaks, read_frames
from tests.requirements import require_tshark

MN_MAC = "02:00:00:00:00:01"
ROUTER_MAC = "02:00:00:00:00:fe"
OTHER_MAC = "02:00:00:00:00:77"
LINK = "203.0.113.100"
ROUTER = "203.0.113.1"
HOME = "10.20.1.10"
HA = "10.20.1.1"
CN = "10.20.1.99"
GW = "172.16.0.11"
TIA = "10.99.1.1"


def out(p: Packet, src: str = MN_MAC, dst: str = ROUTER_MAC) -> Packet:
    return Ether(src=src, dst=dst) / p


def back(p: Packet) -> Packet:
    return Ether(src=ROUTER_MAC, dst=MN_MAC) / p


ALLOWED = [
    out(IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / Raw(b"\x01" * 240),
        dst="ff:ff:ff:ff:ff:ff"),
    back(IP(src=ROUTER, dst=LINK) / UDP(sport=67, dport=68) / Raw(b"\x02" * 240)),
    out(ARP(op=1, psrc=LINK, pdst=ROUTER, hwsrc=MN_MAC), dst="ff:ff:ff:ff:ff:ff"),
    back(ARP(op=2, psrc=ROUTER, pdst=LINK, hwsrc=ROUTER_MAC, hwdst=MN_MAC)),
    # The direct probe (RFC 5266 3.4): from the link address to HA:434, and its reply.
    out(IP(src=LINK, dst=HA) / UDP(sport=40000, dport=434) / Raw(b"\x01" + b"\0" * 23)),
    back(IP(src=HA, dst=LINK) / UDP(sport=434, dport=40000) / Raw(b"\x03" + b"\0" * 19)),
    out(IP(src=LINK, dst="224.0.0.2", ttl=1) / ICMP(type=10, code=0), dst="01:00:5e:00:00:02"),
    out(IP(src=LINK, dst="255.255.255.255", ttl=1) / ICMP(type=10, code=0),
        dst="ff:ff:ff:ff:ff:ff"),
    # IKE, ESP-in-UDP, a NAT-T keepalive, plain ESP: to and from the gateway.
    out(IP(src=LINK, dst=GW) / UDP(sport=500, dport=500) / Raw(b"\x11" * 8 + b"\0" * 8
                                                                + b"\x21\x20\x22\x08" + b"\0" * 8)),
    out(IP(src=LINK, dst=GW) / UDP(sport=4500, dport=4500) / ESP(spi=0xC1A55E5, seq=1)
        / Raw(b"\xaa" * 64)),
    back(IP(src=GW, dst=LINK) / UDP(sport=4500, dport=4500) / ESP(spi=0xC0FFEE, seq=1)
         / Raw(b"\xbb" * 64)),
    out(IP(src=LINK, dst=GW) / UDP(sport=4500, dport=4500) / Raw(b"\xff")),
    out(IP(src=LINK, dst=GW) / ESP(spi=0x1234, seq=7) / Raw(b"\xcc" * 48)),
    # The untrusted network's router cannot reach the home agent: its error about
    # the probe comes back to the probe's source.
    back(IP(src=ROUTER, dst=LINK) / ICMP(type=3, code=0)
         / IP(src=LINK, dst=HA) / UDP(sport=40000, dport=434) / Raw(b"\x01" + b"\0" * 23)),
    # A gateway whose IKE daemon died: its host's port unreachable about our IKE to it.
    back(IP(src=GW, dst=LINK) / ICMP(type=3, code=3)
         / IP(src=LINK, dst=GW) / UDP(sport=4500, dport=4500) / Raw(b"\0" * 8)),
    # The VPN probe: the helper's echo to the gateway (RTT), and its reply.
    out(IP(src=LINK, dst=GW) / ICMP(type=8, id=0x5452, seq=1)),
    back(IP(src=GW, dst=LINK) / ICMP(type=0, id=0x5452, seq=1)),
    # Between two other hosts on the bridge: not the MN's (judged only without a mac).
    Ether(src=OTHER_MAC, dst=ROUTER_MAC) / IP(src="203.0.113.7", dst="198.51.100.9")
    / UDP(sport=1, dport=2),
]

FORBIDDEN = {
    # rule (i) only: an ARP asking for an intranet address on the untrusted link
    "ARP for an intranet address": (
        out(ARP(op=1, psrc=LINK, pdst=CN, hwsrc=MN_MAC), dst="ff:ff:ff:ff:ff:ff"),
        {Rule.CLEAR}),
    # both: normal traffic from the home address in clear
    "UDP from the home address": (
        out(IP(src=HOME, dst=CN) / UDP(sport=5000, dport=9999) / Raw(b"x")),
        {Rule.CLEAR, Rule.ALLOWED}),
    "TCP from the link address to the intranet": (
        out(IP(src=LINK, dst=CN) / TCP(sport=40001, dport=7)), {Rule.CLEAR, Rule.ALLOWED}),
    # RFC 3519 tunnel data (type 4) to and from the HA's 434: the Mobile IP tunnel in
    # clear, not the probe (the judge reads the Mobile IP type).
    "RFC 3519 tunnel data to the home agent's 434": (
        out(IP(src=LINK, dst=HA) / UDP(sport=40000, dport=434)
            / Raw(b"\x04\x04\0\0" + bytes(IP(src=HOME, dst=CN) / UDP(sport=5, dport=9)))),
        {Rule.CLEAR, Rule.ALLOWED}),
    "RFC 3519 tunnel data from the home agent's 434": (
        back(IP(src=HA, dst=LINK) / UDP(sport=434, dport=40000)
             / Raw(b"\x04\x04\0\0" + bytes(IP(src=CN, dst=HOME) / UDP(sport=9, dport=5)))),
        {Rule.CLEAR, Rule.ALLOWED}),
    "a registration from the home address": (
        out(IP(src=HOME, dst=HA) / UDP(sport=434, dport=434) / Raw(b"\x01" + b"\0" * 23)),
        {Rule.CLEAR, Rule.ALLOWED}),
    "IP-in-IP to the home agent in clear (mode c on an untrusted link)": (
        out(IP(src=LINK, dst=HA, proto=4) / IP(src=HOME, dst=CN) / UDP()),
        {Rule.CLEAR, Rule.ALLOWED}),
    "IP-in-IP from the TIA outside ESP": (
        out(IP(src=TIA, dst=HA, proto=4) / IP(src=HOME, dst=CN) / UDP()),
        {Rule.CLEAR, Rule.ALLOWED}),
    "a gratuitous ARP for the home address": (
        out(ARP(op=1, psrc=HOME, pdst=HOME, hwsrc=MN_MAC), dst="ff:ff:ff:ff:ff:ff"),
        {Rule.CLEAR, Rule.ALLOWED}),
    "the HA's reply to the home address": (
        back(IP(src=HA, dst=HOME) / UDP(sport=434, dport=434) / Raw(b"\x03" + b"\0" * 19)),
        {Rule.CLEAR, Rule.ALLOWED}),
    # rule (ii) only
    "a ping to a public host (only the gateway is probed)": (
        out(IP(src=LINK, dst="198.51.100.9") / ICMP(type=8)), {Rule.ALLOWED}),
    "an echo reply to someone else's ping (not from a gateway)": (
        out(IP(src=LINK, dst="198.51.100.9") / ICMP(type=0)), {Rule.ALLOWED}),
    "DNS to a public server": (
        out(IP(src=LINK, dst="198.51.100.53") / UDP(sport=5353, dport=53) / Raw(b"q")),
        {Rule.ALLOWED}),
    "ESP-in-UDP to a host that is not a gateway": (
        out(IP(src=LINK, dst="198.51.100.7") / UDP(sport=4500, dport=4500)
            / ESP(spi=0x99, seq=1) / Raw(b"\xaa" * 32)),
        {Rule.ALLOWED}),
    "plain ESP to a host that is not a gateway": (
        out(IP(src=LINK, dst="198.51.100.7") / ESP(spi=0x98, seq=1) / Raw(b"\xaa" * 32)),
        {Rule.ALLOWED}),
    "IKE to a gateway's other port": (
        out(IP(src=LINK, dst=GW) / UDP(sport=4500, dport=4501) / Raw(b"\xff")),
        {Rule.ALLOWED}),
    "a ping to the router": (
        out(IP(src=LINK, dst=ROUTER) / ICMP(type=8)), {Rule.ALLOWED}),
    "a solicitation to a unicast address": (
        out(IP(src=LINK, dst=ROUTER) / ICMP(type=10)), {Rule.ALLOWED}),
    "an ICMP error about traffic that is not the probe": (
        back(IP(src=ROUTER, dst=LINK) / ICMP(type=3, code=1)
             / IP(src=LINK, dst=CN) / UDP(sport=40000, dport=9999)),
        {Rule.ALLOWED}),
    "an ICMP error about IKE from a host that is not the gateway it quotes": (
        back(IP(src=ROUTER, dst=LINK) / ICMP(type=3, code=3)
             / IP(src=LINK, dst=GW) / UDP(sport=4500, dport=4500) / Raw(b"\0" * 8)),
        {Rule.ALLOWED}),
    "an ICMP error about the probe to another address": (
        back(IP(src=ROUTER, dst="203.0.113.55") / ICMP(type=3, code=1)
             / IP(src=LINK, dst=HA) / UDP(sport=40000, dport=434)),
        {Rule.ALLOWED}),
    "an ICMP error about the probe, sent to the home address": (
        back(IP(src=ROUTER, dst=HOME) / ICMP(type=3, code=1)
             / IP(src=HOME, dst=HA) / UDP(sport=40000, dport=434)),
        {Rule.CLEAR, Rule.ALLOWED}),
    "IPv6 router solicitation": (
        out(IPv6(src="fe80::1", dst="ff02::2") / ICMPv6ND_RS(), dst="33:33:00:00:00:02"),
        {Rule.ALLOWED}),
}


@pytest.fixture(autouse=True)
def _tshark() -> None:
    require_tshark()


def write(tmp_path: Path, frames: list[Packet], name: str = "c.pcap") -> Path:
    for i, f in enumerate(frames):
        f.time = 1_800_000_000 + i / 1000
    path = tmp_path / name
    wrpcap(str(path), frames)
    return path


def test_tshark_decodes_what_the_judge_reads(tmp_path: Path) -> None:
    """The judge trusts tshark's fields: check the ones the allowed set depends on."""
    frames = read_frames(write(tmp_path, ALLOWED))
    assert len(frames) == len(ALLOWED)
    esp_in_udp = frames[9]
    assert esp_in_udp["esp.spi"] and esp_in_udp["udp.dstport"] == "4500"
    assert frames[12]["ip.proto"] == "50" and frames[12]["esp.spi"]
    assert frames[2]["eth.type"] == "0x0806" and frames[2]["arp.dst.proto_ipv4"] == ROUTER


def test_rfc5266_3_4_allowed_set_passes_both_rules(tmp_path: Path) -> None:
    policy = lab_policy(MN_MAC)
    assert leaks(write(tmp_path, ALLOWED), policy) == []


def test_other_stations_are_judged_only_without_a_mac(tmp_path: Path) -> None:
    pcap = write(tmp_path, ALLOWED)
    bad = leaks(pcap, lab_policy())
    assert [(o.rule, o.frame) for o in bad] == [(Rule.ALLOWED, len(ALLOWED))], bad


@pytest.mark.parametrize("name", list(FORBIDDEN))
def test_rfc5266_3_4_each_forbidden_frame_is_named_by_its_rules(tmp_path: Path,
                                                                 name: str) -> None:
    frame, rules = FORBIDDEN[name]
    # In the middle of the allowed traffic, as on a real link.
    frames = [*ALLOWED[:5], frame, *ALLOWED[5:]]
    bad = leaks(write(tmp_path, frames), lab_policy(MN_MAC))
    assert {o.rule for o in bad} == rules, [str(o) for o in bad]
    assert {o.frame for o in bad} == {6}, [str(o) for o in bad]


def test_the_line_names_number_time_addresses_and_protocol(tmp_path: Path) -> None:
    frame, _ = FORBIDDEN["UDP from the home address"]
    (bad,) = [o for o in leaks(write(tmp_path, [frame]), lab_policy(MN_MAC))
              if o.rule is Rule.CLEAR]
    assert bad.frame == 1 and abs(bad.time - 1_800_000_000) < 1e-3
    assert bad.line == f"#1 1800000000.000000 {HOME}:5000 -> {CN}:9999 UDP", bad.line
    assert str(bad).startswith("clear: #1 ")


def test_judge_takes_frames_already_read(tmp_path: Path) -> None:
    frames = read_frames(write(tmp_path, [*ALLOWED, FORBIDDEN["DNS to a public server"][0]]))
    assert [o.frame for o in judge(frames, lab_policy(MN_MAC))] == [len(ALLOWED) + 1]


def test_an_unreadable_capture_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.pcap"
    bad.write_bytes(b"not a pcap")
    with pytest.raises(RuntimeError, match=r"tshark could not read .*x\.pcap"):
        read_frames(bad)
