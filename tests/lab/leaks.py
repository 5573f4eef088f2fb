"""A judge for captures taken on the untrusted links (RFC 5266 3.4 and issue 12's gate).

Given a pcap from an untrusted link (the lab's ``br-pub`` or ``br-natl`` bridge),
it names every frame that breaks one of two rules:

- ``Rule.CLEAR`` (nothing in clear): no frame whose OUTERMOST IPv4 header, or
  whose ARP sender or target, names the home address or an intranet address,
  except the direct registration probe (UDP to the home agent's port 434 from
  an address that is not the home address, and the agent's reply from 434),
  which RFC 5266 3.4 sends without VPN encapsulation.  Everything else for the
  intranet must travel inside ESP, where the outer header names the gateway.
- ``Rule.ALLOWED`` (nothing but the allowed set): IKE, ESP-in-UDP and NAT-T
  keepalives (UDP 500/4500 on the gateway's side) and ESP to or from a VPN
  gateway, DHCP (UDP 68 <-> 67), the direct probe and its reply, agent
  solicitations (ICMP type 10 to 224.0.0.2 or 255.255.255.255), the VPN probe
  (ICMP echo to a gateway and its reply: the helper's RTT to it), ICMP errors
  about the direct probe sent back to its source (the untrusted network's router
  has no route to the home agent), ARP not naming the home address; no IPv6, no
  other EtherType.

tshark decodes (the fields below), not this module: a frame's protocols are
what Wireshark says they are.  With ``mac`` given, only frames from or to that
station are judged (the other hosts' chatter on the bridge is not the MN's).
"""

from __future__ import annotations

import enum
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from tests.requirements import TSHARK

FIELDS = ("frame.number", "frame.time_epoch", "eth.src", "eth.dst", "eth.type", "ip.src",
          "ip.dst", "ip.proto", "udp.srcport", "udp.dstport", "esp.spi", "icmp.type",
          "arp.src.proto_ipv4", "arp.dst.proto_ipv4", "ipv6.src", "ipv6.dst",
          "_ws.col.Protocol", "udp.payload")
IKE_PORTS = frozenset({"500", "4500"})
SOLICITATION_TO = frozenset({"224.0.0.2", "255.255.255.255"})
ETH_IPV4, ETH_ARP, ETH_IPV6 = "0x0800", "0x0806", "0x86dd"
PROTO_ICMP, PROTO_UDP, PROTO_ESP = "1", "17", "50"
MIP_PORT = "434"
MIP_REQUEST, MIP_REPLY = "01", "03"
"""The first UDP payload byte (hex, tshark's udp.payload): RFC 5944 3.3, 3.4."""
ICMP_ERRORS = frozenset({"3", "11"})
"""Destination unreachable, time exceeded."""


class Rule(enum.Enum):
    CLEAR = "clear"
    """(i) home address or intranet named outside ESP (the probe excepted)."""
    ALLOWED = "allowed"
    """(ii) anything but IKE/ESP to the gateways, DHCP, the probe, solicitations, ARP."""


@dataclass(frozen=True)
class Policy:
    home: IPv4Address
    intranet: tuple[IPv4Network, ...]
    home_agent: IPv4Address
    gateways: tuple[IPv4Address, ...]
    mac: str | None = None
    """Judge only frames from or to this Ethernet address (None: every frame)."""

    def inside(self, address: str) -> bool:
        """The home address or an address of the intranet."""
        if not address:
            return False
        a = IPv4Address(address)
        return a == self.home or any(a in n for n in self.intranet)


@dataclass(frozen=True)
class Frame:
    """One frame as tshark decoded it: field name -> first (outermost) occurrence, ""
    if absent; ``inner`` holds the second occurrence (the packet an ICMP error quotes)."""

    fields: dict[str, str]
    inner: dict[str, str] = dataclass_field(default_factory=dict)

    def __getitem__(self, name: str) -> str:
        return self.fields.get(name, "")

    @property
    def number(self) -> int:
        return int(self["frame.number"])

    @property
    def time(self) -> float:
        return float(self["frame.time_epoch"])

    def describe(self) -> str:
        """One line: number, time, src -> dst, protocol (and ports)."""
        if self["eth.type"] == ETH_ARP:
            src, dst = self["arp.src.proto_ipv4"], self["arp.dst.proto_ipv4"]
        elif self["ipv6.src"]:
            src, dst = self["ipv6.src"], self["ipv6.dst"]
        else:
            src, dst = self["ip.src"] or self["eth.src"], self["ip.dst"] or self["eth.dst"]
        if self["ip.proto"] == PROTO_UDP:
            src, dst = f"{src}:{self['udp.srcport']}", f"{dst}:{self['udp.dstport']}"
        proto = self["_ws.col.Protocol"] or self["ip.proto"] or self["eth.type"]
        return f"#{self.number} {self.time:.6f} {src} -> {dst} {proto}"


@dataclass(frozen=True)
class Offence:
    rule: Rule
    frame: int
    time: float
    line: str

    def __str__(self) -> str:
        return f"{self.rule.value}: {self.line}"


def read_frames(pcap: Path) -> list[Frame]:
    """Every frame of ``pcap`` as tshark decodes it (outermost occurrence of each field)."""
    if TSHARK is None:
        raise RuntimeError("tshark is not installed (scripts/install-deps installs it)")
    out = subprocess.run([TSHARK, "-n", "-r", str(pcap), "-T", "fields", "-E", "occurrence=a",
                          "-E", "aggregator=|",
                          "-E", "separator=\t", *[a for f in FIELDS for a in ("-e", f)]],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"tshark could not read {pcap}: {out.stderr.strip()}")
    frames = []
    for line in out.stdout.splitlines():
        if not line.strip():
            continue
        values = [v.split("|") for v in line.split("\t")]
        frames.append(Frame({k: v[0] for k, v in zip(FIELDS, values, strict=True)},
                            {k: v[1] for k, v in zip(FIELDS, values, strict=True) if len(v) > 1}))
    return frames


def is_probe(f: Frame, p: Policy) -> bool:
    """The direct registration request to the home agent, or its reply (RFC 5266 3.4)."""
    if f["ip.proto"] != PROTO_UDP:
        return False
    ha = str(p.home_agent)
    # The Mobile IP type (the payload's first byte): only a request out and a reply
    # in; RFC 3519 tunnel data (4) to or from the same port is the tunnel itself.
    mip_type = f["udp.payload"][:2]
    if f["ip.dst"] == ha and f["udp.dstport"] == MIP_PORT:
        return f["ip.src"] != str(p.home) and mip_type == MIP_REQUEST
    if f["ip.src"] == ha and f["udp.srcport"] == MIP_PORT:
        return f["ip.dst"] != str(p.home) and mip_type == MIP_REPLY
    return False


def quotes_probe(f: Frame, p: Policy) -> bool:
    """An ICMP error (e.g. the untrusted network's router: no route to the home agent)
    about the direct probe, sent to the address the probe came from."""
    q = f.inner
    return (q.get("ip.dst") == str(p.home_agent) and q.get("ip.proto") == PROTO_UDP
            and f["udp.dstport"] == MIP_PORT  # the quoted UDP header is the only one
            and q.get("ip.src") == f["ip.dst"] and f["ip.dst"] != str(p.home))


def quotes_ike(f: Frame, p: Policy) -> bool:
    """An ICMP error from a gateway about the IKE/NAT-T we sent it (a gateway whose IKE
    daemon died answers with port unreachable), sent to the link address it left from."""
    q = f.inner
    gateways = {str(g) for g in p.gateways}
    return (f["ip.src"] in gateways and q.get("ip.dst") == f["ip.src"]
            and q.get("ip.proto") == PROTO_UDP and f["udp.dstport"] in IKE_PORTS
            and q.get("ip.src") == f["ip.dst"] and f["ip.dst"] != str(p.home))


def breaks_clear(f: Frame, p: Policy) -> bool:
    if f["eth.type"] == ETH_ARP:
        return p.inside(f["arp.src.proto_ipv4"]) or p.inside(f["arp.dst.proto_ipv4"])
    if f["eth.type"] != ETH_IPV4:
        return False
    if not (p.inside(f["ip.src"]) or p.inside(f["ip.dst"])):
        return False
    return not is_probe(f, p)


def allowed(f: Frame, p: Policy) -> bool:
    kind = f["eth.type"]
    if kind == ETH_ARP:
        return str(p.home) not in (f["arp.src.proto_ipv4"], f["arp.dst.proto_ipv4"])
    if kind != ETH_IPV4:
        return False  # IPv6 and anything else: never on an untrusted link
    gateways = {str(g) for g in p.gateways}
    proto, src, dst = f["ip.proto"], f["ip.src"], f["ip.dst"]
    if proto == PROTO_ESP:
        return dst in gateways or src in gateways
    if proto == PROTO_UDP:
        sport, dport = f["udp.srcport"], f["udp.dstport"]
        if (dst in gateways and dport in IKE_PORTS) or (src in gateways and sport in IKE_PORTS):
            return True
        if (sport, dport) in (("68", "67"), ("67", "68")):
            return True
        return is_probe(f, p)
    if proto == PROTO_ICMP:
        if f["icmp.type"] == "10":
            return dst in SOLICITATION_TO
        if f["icmp.type"] in ("8", "0"):  # the VPN probe: echo to a gateway, its reply
            return (f["icmp.type"] == "8" and dst in gateways) or (
                f["icmp.type"] == "0" and src in gateways)
        return f["icmp.type"] in ICMP_ERRORS and (quotes_probe(f, p) or quotes_ike(f, p))
    return False


def judge(frames: Iterable[Frame], policy: Policy) -> list[Offence]:
    """Every (rule, frame) broken, in frame order."""
    bad = []
    mac = policy.mac.lower() if policy.mac else None
    for f in frames:
        if mac is not None and mac not in (f["eth.src"].lower(), f["eth.dst"].lower()):
            continue
        if breaks_clear(f, policy):
            bad.append(Offence(Rule.CLEAR, f.number, f.time, f.describe()))
        if not allowed(f, policy):
            bad.append(Offence(Rule.ALLOWED, f.number, f.time, f.describe()))
    return bad


def leaks(pcap: Path, policy: Policy) -> list[Offence]:
    """``judge`` over a capture file."""
    return judge(read_frames(pcap), policy)


def lab_policy(mac: str | None = None) -> Policy:
    """The lab's values: home 10.20.1.10, HA 10.20.1.1, intranet 10.0.0.0/8 (home net,
    trusted links, FA links, the TIA pools 10.99.x), gateways 172.16.0.11/.12."""
    from app.lab import charon
    from app.lab.configs import HA, HOME
    return Policy(IPv4Address(HOME), (IPv4Network(charon.INTRANET_TS),), IPv4Address(HA),
                  tuple(IPv4Address(g.address) for g in charon.GATEWAYS), mac)
