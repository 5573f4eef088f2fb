"""The gate's allow set, packet by packet, judged by the kernel (root, namespaces).

A mobile-node namespace with an access link (``eth0``, 10.30.1.50/24) to a
network namespace, and a "virtual machine" namespace behind it that it
forwards for.  The gate is the product's (``TrafficGate`` with the rules of
``app.net.gate_rules``); a local packet the gate drops is EPERM for its sender,
and a forwarded one never reaches the listener on the network side.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from app.net.gate_rules import GatePolicy, render
from tests.gate_receiver import REG_PORT
from tests.haproc import env
from tests.lab.procs import Proc
from tests.requirements import require_root

MN, NET, VM = "tr-gt-mn", "tr-gt-net", "tr-gt-vm"
LINK = "10.30.1.50"
NEW_LEASE = "10.30.1.51"  # a second address on the same link: never proven
HOME = "10.20.1.10"
HA = "10.20.1.1"
INTRANET = "10.20.1.99"
SETUP = {
    NET: ["link set lo up", "addr add 10.30.1.1/24 dev eth0", "link set eth0 up",
          f"addr add {HA}/32 dev lo", f"addr add {INTRANET}/32 dev lo",
          "addr add 172.16.0.10/32 dev lo", "addr add 203.0.113.7/32 dev lo",
          "route add 192.168.122.0/24 via 10.30.1.50", "addr add 10.31.0.1/24 dev eth1",
          "link set eth1 up"],
    MN: ["link set lo up", f"addr add {LINK}/24 dev eth0", f"addr add {NEW_LEASE}/24 dev eth0",
         "link set eth0 up", "route add default via 10.30.1.1",
         "addr add 192.168.122.1/24 dev vmlink0", "link set vmlink0 up",
         "addr add 10.31.0.2/24 dev br-uplink", "link set br-uplink up"],
    VM: ["link set lo up", "addr add 192.168.122.2/24 dev eth0", "link set eth0 up",
         "route add default via 192.168.122.1"],
}


def ip_batch(ns: str | None, cmds: list[str]) -> None:
    pre = ["ip", "-n", ns] if ns else ["ip"]
    subprocess.run([*pre, "-batch", "-"], input="\n".join(cmds) + "\n", text=True, check=True)


@pytest.fixture(scope="module")
def world() -> Iterator[None]:
    require_root("the gate test builds network namespaces")
    for ns in (MN, NET, VM):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    ip_batch(None, [f"netns add {ns}" for ns in (MN, NET, VM)] + [
        f"link add eth0 netns {MN} type veth peer name eth0 netns {NET}",
        f"link add vmlink0 netns {MN} type veth peer name eth0 netns {VM}",
        # An uplink whose name looks like a container bridge's (Docker's br-<id>).
        f"link add br-uplink netns {MN} type veth peer name eth1 netns {NET}"])
    for ns, cmds in SETUP.items():
        ip_batch(ns, cmds)
    subprocess.run(["ip", "netns", "exec", MN, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                   check=True)
    try:
        yield
    finally:
        for ns in (MN, NET, VM):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def probe(decision: dict[str, str] | None, tries: list[dict[str, object]],
          install: bool = True, managed: tuple[str, ...] = (), allow_lan: bool = False
          ) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", MN, sys.executable, "-m", "tests.gate_probe",
                          json.dumps({"decision": decision, "tries": tries,
                                      "install": install, "managed": list(managed),
                                      "allow_lan": allow_lan})],
                         capture_output=True, text=True, env=env(), timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    return list(json.loads(out.stdout))


REQUEST, TUNNEL_DATA = "01", "04"
"""The first UDP payload byte to port 434: a Registration Request (RFC 5944 3.3), RFC
3519 tunnel data (3.1)."""


def udp(dst: str, dport: int, **kw: object) -> dict[str, object]:
    return {"proto": "udp", "dst": dst, "dport": dport, **kw}


def test_rules_render_as_nftables_accepts_them(world):
    policy = GatePolicy(IPv4Address(HA), IPv4Address(HOME), "trmn0")
    check = subprocess.run(["ip", "netns", "exec", MN, "nft", "-c", "-f", "-"],
                           input=render(policy, None), capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr


def test_rfc5266_3_4_only_the_decision_traffic_leaves_while_undecided(world):
    tries = {
        "DHCP client to server": udp("255.255.255.255", 67, sport=68),
        "registration to the home agent": udp(HA, 434, helper=True, payload=REQUEST),
        "agent solicitation": {"proto": "icmp", "icmp_type": 10, "dst": "224.0.0.2",
                               "helper": True},
        "IKE to a configured gateway": udp("172.16.0.10", 500, charon=True),
        "NAT-T to a configured gateway": udp("172.16.0.10", 4500, charon=True),
        # What the old gate let through, and must not:
        "source port 68 to an arbitrary host": udp("203.0.113.7", 53, sport=68),
        "source port 434 to an arbitrary host": udp("203.0.113.7", 53, sport=434),
        "IKE to a host that is no gateway": udp("203.0.113.7", 500),
        "NAT-T to a host that is no gateway": udp("203.0.113.7", 4500),
        "port 434 of a host that is not the home agent": udp(INTRANET, 434, helper=True),
        "another process to the home agent's 434": udp(HA, 434),
        "another process soliciting": {"proto": "icmp", "icmp_type": 10, "dst": "224.0.0.2"},
        "DHCP server port from a client that is no client": udp("203.0.113.7", 67),
        "ICMP echo to the home agent": {"proto": "icmp", "icmp_type": 8, "dst": HA},
        "normal traffic to the intranet": udp(INTRANET, 9999),
        "normal traffic to a public host": udp("203.0.113.7", 9999),
    }
    got = dict(zip(tries, probe(None, list(tries.values())), strict=True))
    allowed = {"DHCP client to server", "registration to the home agent",
               "agent solicitation", "IKE to a configured gateway",
               "NAT-T to a configured gateway"}
    assert got == {k: "sent" if k in allowed else "refused" for k in tries}


NOBODY_UID = 65534
GW = "172.16.0.10"


def test_rfc5266_3_4_the_gateways_are_reached_only_by_charons_marked_packets(world):
    """IKE, NAT-T and ESP to a configured gateway leave while undecided only from
    charon (its sockets' mark, socket-default.fwmark; kernel ESP's set_mark_out):
    not from another user's process, not from root's without the mark, and not from
    the home address even with it (MOBIKE could pick it where h or f left it)."""
    ip_batch(MN, [f"addr add {HOME}/32 dev eth0"])
    try:
        tries = {
            "charon's IKE": udp(GW, 500, charon=True),
            "charon's NAT-T": udp(GW, 4500, charon=True, sport=4500),
            "charon's ESP (kernel ESP: set_mark_out)": {"proto": "esp", "dst": GW,
                                                         "charon": True},
            # and not:
            "nobody's datagram to port 500": udp(GW, 500, uid=NOBODY_UID),
            "nobody's datagram to port 4500": udp(GW, 4500, uid=NOBODY_UID),
            "root's unmarked datagram to port 500": udp(GW, 500),
            "root's unmarked datagram to port 4500 from port 4500": udp(GW, 4500, sport=4500),
            "root's unmarked ESP": {"proto": "esp", "dst": GW},
            "the helper's mark is not charon's": udp(GW, 4500, helper=True),
            "charon's mark from the home address": udp(GW, 4500, charon=True, src=HOME),
            "charon's ESP from the home address": {"proto": "esp", "dst": GW, "src": HOME,
                                                   "charon": True},
        }
        got = dict(zip(tries, probe(None, list(tries.values())), strict=True))
        allowed = list(tries)[:3]
        assert got == {k: "sent" if k in allowed else "refused" for k in tries}
    finally:
        ip_batch(MN, [f"addr del {HOME}/32 dev eth0"])


def test_dhcp_leaves_only_by_the_limited_broadcast_while_undecided(world):
    """Port 68 to port 67 is DHCP only to the limited broadcast (the link's server is
    not known to the helper): not a way out to any host for whatever binds port 68."""
    tries = [udp("255.255.255.255", 67, sport=68), udp("203.0.113.7", 67, sport=68),
             udp("10.30.1.1", 67, sport=68)]
    assert probe(None, tries) == ["sent", "refused", "refused"]


def test_rfc5266_3_4_no_registration_from_the_home_address_except_probing_the_home_link(
        world):
    """The helper's request to the home agent from the home address is the home link's
    deregistration (RFC 5944 3.6.1.1): off the link being probed as home it would put
    the home address in clear on a network not proven trusted."""
    ip_batch(MN, [f"addr add {HOME}/32 dev eth0"])
    try:
        tries = [udp(HA, 434, helper=True, src=HOME, payload=REQUEST),
                 udp(HA, 434, helper=True, src=LINK, payload=REQUEST)]
        assert probe(None, tries) == ["refused", "sent"]
        out = subprocess.run(["ip", "netns", "exec", MN, sys.executable, "-m",
                              "tests.gate_probe", json.dumps({"decision": None, "tries": tries,
                                                              "home_probe": "eth0"})],
                             capture_output=True, text=True, env=env(), timeout=30, check=False)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == ["sent", "sent"]
    finally:
        ip_batch(MN, [f"addr del {HOME}/32 dev eth0"])


def test_rfc5266_3_4_a_trusted_decision_opens_only_the_proven_path(world):
    h = {"iface": "eth0", "address": LINK, "mode": "h"}
    tries = [udp(INTRANET, 9999, src=LINK), udp(INTRANET, 9999, src=NEW_LEASE),
             udp("203.0.113.7", 9999, src=NEW_LEASE)]
    assert probe(h, tries) == ["sent", "refused", "refused"]
    # A decision made on the new lease: the old address is no longer proven.
    moved = {"iface": "eth0", "address": NEW_LEASE, "mode": "h"}
    assert probe(moved, tries, install=False) == ["refused", "sent", "sent"]
    # Mode c: the care-of address carries the tunnel's outer packets to the home
    # agent, nothing else in clear.
    c = {"iface": "eth0", "address": LINK, "mode": "c"}
    assert probe(c, [udp(HA, 9999, src=LINK), udp(INTRANET, 9999, src=LINK)],
                 install=False) == ["sent", "refused"]


def test_rfc3519_tunnel_data_to_port_434_leaves_only_by_the_modes_proven_path(world):
    """The undecided rule to the home agent's 434 is for Registration Requests (type 1)
    only: RFC 3519 tunnel data and keepalives (type 4) from the same sockets leave only
    where the mode opens the tunnel: mode c on the proven link, mc only into IPsec."""
    data = udp(HA, 434, helper=True, src=LINK, payload=TUNNEL_DATA)
    request = udp(HA, 434, helper=True, src=LINK, payload=REQUEST)
    assert probe(None, [data, request]) == ["refused", "sent"]
    c = {"iface": "eth0", "address": LINK, "mode": "c"}
    assert probe(c, [data, request], install=False) == ["sent", "sent"]
    mc = {"iface": "eth0", "address": LINK, "mode": "mc", "tia": TIA}
    assert probe(mc, [data], install=False) == ["refused"]


def test_rfc5266_3_4_home_address_in_clear_only_in_modes_h_and_f(world):
    ip_batch(MN, [f"addr add {HOME}/32 dev eth0"])
    try:
        home_src = [udp(INTRANET, 9999, src=HOME)]
        for mode, verdict in (("h", "sent"), ("f", "sent"), ("c", "refused")):
            d = {"iface": "eth0", "address": LINK, "mode": mode}
            assert probe(d, home_src) == [verdict], mode
        assert probe(None, home_src) == ["refused"]
    finally:
        ip_batch(MN, [f"addr del {HOME}/32 dev eth0"])


def test_allow_lan_opens_the_links_own_subnet_in_clear_in_modes_c_and_mc_only(world):
    """issue 19: with allow_lan the link's on-link subnet (10.30.1.0/24 here) is
    reached from the link address in c and mc; the intranet and public hosts still
    only through the tunnel; without it, the subnet is refused too."""
    tries = [udp("10.30.1.1", 9999, src=LINK), udp(INTRANET, 9999, src=LINK),
             udp("203.0.113.7", 9999, src=LINK)]
    c = {"iface": "eth0", "address": LINK, "mode": "c"}
    mc = {**c, "mode": "mc", "tia": "10.99.1.7"}
    for d in (c, mc):
        assert probe(d, tries, allow_lan=True) == ["sent", "refused", "refused"], d
        assert probe(d, tries) == ["refused", "refused", "refused"], d
    # Undecided, it opens nothing.
    assert probe(None, tries, allow_lan=True) == ["refused", "refused", "refused"]


def test_dns_is_refused_at_once_while_undecided(world):
    """issue 19: a lookup to the link's resolver gets an ICMP port unreachable (UDP)
    or a reset (TCP) back at once, not a silent drop; what the gate lets through
    undecided is unchanged (a UDP query to another port still just refused)."""
    dns = [{"proto": "udp", "dst": "10.30.1.1", "dport": 53, "answer": True},
           {"proto": "tcp", "dst": "10.30.1.1", "dport": 53, "answer": True}]
    assert probe(None, dns) == ["icmp 3/3", "reset"]
    assert probe(None, [udp("10.30.1.1", 53), udp("10.30.1.1", 9999)]) == ["refused",
                                                                           "refused"]


def test_the_portal_probes_and_the_signin_windows_dns_is_not_refused_while_undecided(world):
    """Review-portal finding 3: their marked lookups pass the DNS refusal (the portal
    chain, empty here, then drops them: nothing comes back, no ICMP error); an
    unmarked one is still refused at once."""
    from app.net.gate_rules import PROBE_MARK, SIGNIN_MARK

    dns = [{"proto": "udp", "dst": "10.30.1.1", "dport": 53, "answer": True, "mark": m}
           for m in (PROBE_MARK, SIGNIN_MARK, 0)]
    assert probe(None, dns) == ["timeout", "timeout", "icmp 3/3"]


def test_allow_lan_never_lets_dns_out_to_the_visited_networks_resolver(world):
    """Review-portal finding 2: the link's own resolver is inside the opened subnet."""
    tries = [udp("10.30.1.1", p, src=LINK) for p in (53, 853, 5353, 5355)]
    tries.append(udp("10.30.1.1", 9999, src=LINK))
    for mode in ("c", "mc"):
        d = {"iface": "eth0", "address": LINK, "mode": mode, **(
            {"tia": "10.99.1.7"} if mode == "mc" else {})}
        assert probe(d, tries, allow_lan=True) == ["refused"] * 4 + ["sent"], d


TIA = "10.99.1.7"
GATEWAY = "172.16.0.10"


def test_rfc5266_3_4_mode_mc_lets_out_only_mobile_ip_inside_the_vpn(world):
    """Mode mc: the home address's traffic into the Mobile IP tunnel, its outer packets
    (TIA -> home agent) into the VPN's device; on the link only what undecided allows
    (IKE/ESP to the gateways, the helper's echo to them), nothing from the TIA or the
    home address, nothing to the intranet."""
    ip_batch(MN, ["link add ipsec0 type veth peer name vpnpeer", "link add trmn0 type veth "
                  "peer name mippeer", f"addr add {TIA}/32 dev ipsec0", "link set ipsec0 up",
                  "link set vpnpeer up", f"addr add {HOME}/32 dev trmn0", "link set trmn0 up",
                  "link set mippeer up", f"route add {HA}/32 dev ipsec0 src {TIA}",
                  f"route add {INTRANET}/32 dev trmn0 src {HOME}"])
    try:
        tries = {
            "the home address into the Mobile IP tunnel": udp(INTRANET, 9999, src=HOME),
            "TIA -> home agent into the VPN (the tunnel's outer packets)":
                udp(HA, 9999, src=TIA),
            "the registration through the VPN": udp(HA, 434, src=TIA, helper=True,
                                                    payload=REQUEST),
            "charon's IKE to the gateway": udp(GATEWAY, 4500, src=LINK, charon=True),
            "the helper's echo to the gateway": {"proto": "icmp", "icmp_type": 8,
                                                 "dst": GATEWAY, "helper": True},
            # and not:
            "TIA -> the intranet past Mobile IP": udp(INTRANET, 9999, src=TIA,
                                                      iface="ipsec0"),
            "TIA -> home agent out of the link in clear": udp(HA, 9999, src=TIA,
                                                             iface="eth0"),
            "the home address out of the link": udp(INTRANET, 9999, src=HOME, iface="eth0"),
            "the link address to the intranet": udp(INTRANET, 9999, src=LINK, iface="eth0"),
            "the link address to a public host": udp("203.0.113.7", 9999, src=LINK),
            "another process's echo to the gateway": {"proto": "icmp", "icmp_type": 8,
                                                      "dst": GATEWAY},
        }
        mc = {"iface": "eth0", "address": LINK, "mode": "mc", "tia": TIA}
        got = dict(zip(tries, probe(mc, list(tries.values())), strict=True))
        allowed = list(tries)[:5]
        assert got == {k: "sent" if k in allowed else "refused" for k in tries}
        # Undecided, the same tunnel traffic is refused: mc opens only when proven.
        shut = probe(None, [tries["the home address into the Mobile IP tunnel"],
                            tries["TIA -> home agent into the VPN (the tunnel's outer packets)"]],
                     install=False)
        assert shut == ["refused", "refused"]
    finally:
        ip_batch(MN, ["link del ipsec0", "link del trmn0"])


def test_rfc5266_3_4_forwarded_traffic_is_gated_like_the_hosts_own(world):
    """A guest behind the mobile node, masqueraded as a desktop's shared connection or
    libvirt's default network is: it leaves only by the proven path, and not after
    the decision moved to another address."""
    nat = ("table ip vmnat {\n chain post {\n type nat hook postrouting priority srcnat;\n"
           " oifname \"eth0\" ip saddr 192.168.122.0/24 masquerade\n }\n}\n")
    subprocess.run(["ip", "netns", "exec", MN, "nft", "-f", "-"], input=nat, text=True,
                   check=True)
    listener = Proc(NET, sys.executable, "-u", "-c",
                    "import socket\n"
                    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    f"s.bind(('{INTRANET}', 9999)); print('LISTENING')\n"
                    "while True:\n"
                    "    d, a = s.recvfrom(100); print('GOT', d.decode(), a[0])\n")
    send = (f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.sendto(b'%s', ('{INTRANET}', 9999))")

    def guest(text: str) -> None:
        subprocess.run(["ip", "netns", "exec", VM, sys.executable, "-c", send % text],
                       check=True)
    try:
        listener.wait("LISTENING")
        probe(None, [])  # undecided
        guest("while-shut")
        probe({"iface": "eth0", "address": LINK, "mode": "h"}, [], install=False)
        guest("when-open")
        assert listener.wait("GOT")[-1].split()[1:3] == ["when-open", LINK]
        probe({"iface": "eth0", "address": NEW_LEASE, "mode": "h"}, [], install=False)
        guest("after-the-move")  # still masqueraded as LINK: not the proven address
        probe({"iface": "eth0", "address": LINK, "mode": "h"}, [], install=False)
        guest("back")
        # One path, in order: a datagram let through earlier would have come first.
        assert listener.wait("GOT")[-1].split()[1] == "back"
        assert not [ln for ln in listener.out.seen if "while-shut" in ln or "after" in ln]
    finally:
        listener.stop()
        subprocess.run(["ip", "netns", "exec", MN, "nft", "delete", "table", "ip", "vmnat"],
                       check=False)
    counter = subprocess.run(["ip", "netns", "exec", MN, "nft", "list", "counter", "inet",
                              "trustroam_gate", "blocked"], capture_output=True, text=True,
                             check=True).stdout
    assert int(counter.split("packets")[1].split()[0]) >= 2, counter


ARP_ASK = f"""
from scapy.all import ARP, Ether, srp1
r = srp1(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="{HOME}", psrc="10.30.1.1"),
         iface="eth0", timeout=1, verbose=False)
print("ANSWERED" if r is not None else "SILENT")
"""


def test_rfc5944_4_6_the_home_address_is_not_answered_for_away_from_home(world):
    """The kernel answers ARP for any of its addresses on any link (arp_ignore=0):
    the gate's arp table keeps the home address quiet except in mode h there."""
    ip_batch(MN, [f"addr add {HOME}/32 dev eth0"])
    try:
        def ask() -> str:
            out = subprocess.run(["ip", "netns", "exec", NET, sys.executable, "-c", ARP_ASK],
                                 capture_output=True, text=True, timeout=30, check=True)
            return out.stdout.strip()
        probe({"iface": "eth0", "address": LINK, "mode": "h"}, [])
        assert ask() == "ANSWERED"  # the control: at home it must answer
        probe({"iface": "eth0", "address": LINK, "mode": "c"}, [], install=False)
        assert ask() == "SILENT"
        probe(None, [], install=False)
        assert ask() == "SILENT"
        # The exception: the foreign agent of the proven link (here the asker) learns
        # it; any other host does not.
        fa = {"iface": "eth0", "address": LINK, "mode": "f", "fa": "10.30.1.1"}
        probe(fa, [], install=False)
        assert ask() == "ANSWERED"
        probe({**fa, "fa": "10.30.1.9"}, [], install=False)
        assert ask() == "SILENT"
    finally:
        ip_batch(MN, [f"addr del {HOME}/32 dev eth0"])


def test_rfc5266_3_4_a_managed_link_named_like_a_bridge_is_still_gated(world):
    """Container bridges pass as local, but not an uplink the helper manages whose
    name happens to look like one."""
    out = udp("10.31.0.1", 9999, iface="br-uplink")
    assert probe(None, [out]) == ["sent"]  # local, as far as the gate knows
    assert probe(None, [out], managed=("br-uplink",)) == ["refused"]


def test_removing_the_gate_restores_the_host(world):
    probe(None, [])
    subprocess.run(["ip", "netns", "exec", MN, sys.executable, "-c",
                    "import asyncio; from app.net.gate import remove_table; "
                    "asyncio.run(remove_table())"], env=env(), check=True)
    s = subprocess.run(["ip", "netns", "exec", MN, "nft", "list", "tables"],
                       capture_output=True, text=True, check=True)
    assert "trustroam_gate" not in s.stdout


def _ip4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                       IPv4Address(src).packed, IPv4Address(dst).packed)
    s = sum(struct.unpack("!10H", head))
    s = (s >> 16) + (s & 0xFFFF)
    return head[:10] + struct.pack("!H", ~(s + (s >> 16)) & 0xFFFF) + head[12:] + payload


def _udp_packet(src: str, dst: str, text: str) -> bytes:
    data = text.encode()
    return _ip4(src, dst, 17, struct.pack("!HHHH", 40000, 9999, 8 + len(data), 0) + data)


FORGE = f"""
import socket, sys
kind, dst, data = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
if kind == "udp":  # from an intranet address, as a host on the link can claim
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("{INTRANET}", 40000))
    s.sendto(data, (dst, 9999))
elif kind == "mip":  # from the home agent's registration port, as RFC 3519 data comes
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("{HA}", 434))
    s.sendto(data, (dst, int(sys.argv[4])))
else:  # IP-in-IP with the home agent's address as outer source
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
    s.bind(("{HA}", 0))
    s.sendto(data, (dst, 0))
"""

INJECT = """
import socket, sys
# A frame arriving on ipsec0 from its peer: what charon's TUN hands the kernel.
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("vpnpeer", 0))
mac = open("/sys/class/net/ipsec0/address").read().strip().replace(":", "")
s.send(bytes.fromhex(mac) + bytes(6) + b"\\x08\\x00" + bytes.fromhex(sys.argv[1]))
"""


def forge(kind: str, dst: str, packet: bytes, port: int = 9999) -> None:
    """From the link's other end (the network namespace), to the mobile node."""
    subprocess.run(["ip", "netns", "exec", NET, sys.executable, "-c", FORGE, kind, dst,
                    packet.hex(), str(port)], check=True, timeout=30)


@pytest.fixture
def vpn_link(world: None) -> Iterator[None]:
    """charon's TUN as kernel-libipsec has it (a veth here, its peer the "inside"),
    the mobile node's loose rp_filter as on Debian, and the network side able to
    address the home address and the TIA to the mobile node's link."""
    ip_batch(MN, ["link add ipsec0 type veth peer name vpnpeer", f"addr add {TIA}/32 dev ipsec0",
                  "link set ipsec0 up", "link set vpnpeer up"])
    ip_batch(NET, [f"route add {HOME}/32 via {LINK}", f"route add {TIA}/32 via {LINK}"])
    subprocess.run(["ip", "netns", "exec", MN, "sysctl", "-qw",
                    "net.ipv4.conf.all.rp_filter=2"], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip", "netns", "exec", MN, "sysctl", "-qw",
                        "net.ipv4.conf.all.rp_filter=0"], check=True)
        ip_batch(NET, [f"route del {HOME}/32", f"route del {TIA}/32"])
        ip_batch(MN, ["link del ipsec0"])


def receiver(mode: str, gate: bool) -> Proc:
    r = Proc(MN, sys.executable, "-u", "-m", "tests.gate_receiver",
             json.dumps({"mode": mode, "gate": gate, "tia": TIA}))
    r.wait("READY")
    return r


def through_the_vpn(text: str) -> None:
    """What the home agent tunnels to the TIA, as charon's TUN delivers it."""
    packet = _ip4(HA, TIA, 4, _udp_packet(INTRANET, HOME, text))
    subprocess.run(["ip", "netns", "exec", MN, sys.executable, "-c", INJECT, packet.hex()],
                   check=True, timeout=30)


def forgeries() -> list[str]:
    """Sent on the link in clear: to the home address from an intranet host, and
    IP-in-IP from the home agent's address to the TIA and to the link address."""
    forge("udp", HOME, b"forged-clear")
    forge("ipip", TIA, _udp_packet(INTRANET, HOME, "forged-ipip-tia"))
    forge("ipip", LINK, _udp_packet(INTRANET, HOME, "forged-ipip-link"))
    return ["forged-clear", "forged-ipip-tia", "forged-ipip-link"]


def seen_before(r: Proc, marker: str) -> list[str]:
    """What the receiver got, up to and including ``marker`` (sent last: one path in
    order, so anything let through earlier arrives before it)."""
    r.wait(f"GOT {marker}")
    return [ln.split(" ", 1)[1].strip() for ln in r.out.seen if ln.startswith("GOT ")]


def test_rfc5266_3_4_in_mc_nothing_reaches_the_home_address_in_clear_on_the_link(vpn_link):
    """Mode mc with the helper's data plane and gate, rp_filter loose: packets to the
    home address forged on the untrusted link (clear, or IP-in-IP claiming the home
    agent) are not delivered; what the home agent tunnels through the VPN is."""
    r = receiver("mc", gate=True)
    try:
        forgeries()
        through_the_vpn("through-the-vpn")
        assert seen_before(r, "through-the-vpn") == ["through-the-vpn"]
    finally:
        r.stop()


def test_rfc3519_4_7_in_mc_no_udp_tunnel_data_reaches_the_direct_registration_socket(
        vpn_link):
    """RFC 3519 4.7: UDP tunnelling only for a binding that was granted it.  In mc the
    direct probe's socket is visible on the untrusted link; datagrams from the home
    agent's address and port 434 to it pass only as registration replies (type 3),
    never as tunnel data (type 4) that the helper would write into its tunnel."""
    r = receiver("mc", gate=True)
    try:
        forge("mip", LINK, bytes([4, 4, 0, 0]) + b"forged-tunnel-data", REG_PORT)
        forge("mip", LINK, bytes([3]) + b"a-reply", REG_PORT)
        r.wait("REG 3 a-reply")
        assert [ln.strip() for ln in r.out.seen if ln.startswith("REG ")] == ["REG 3 a-reply"]
    finally:
        r.stop()


def test_rfc5266_3_4_in_mc_the_tunnel_socket_takes_only_what_ipsec_delivers(vpn_link):
    """Without any gate: the userspace tunnel's raw socket is bound to the TIA on
    charon's TUN, so IP-in-IP claiming the home agent on the link is not
    decapsulated.  (The clear packet does arrive: the weak host model and loose
    rp_filter take it, which is why the gate filters what comes in; it also shows
    the forged packets reach the mobile node.)"""
    r = receiver("mc", gate=False)
    try:
        forgeries()
        through_the_vpn("through-the-vpn")
        assert seen_before(r, "through-the-vpn") == ["forged-clear", "through-the-vpn"]
    finally:
        r.stop()


def test_rfc5266_3_4_in_mode_c_the_home_address_comes_only_out_of_the_tunnel(vpn_link):
    """Mode c: the home agent's IP-in-IP to the care-of address is decapsulated; a
    clear packet to the home address on the link is not delivered."""
    r = receiver("c", gate=True)
    try:
        forge("udp", HOME, b"forged-clear")
        forge("ipip", LINK, _udp_packet(INTRANET, HOME, "tunnelled"))
        assert seen_before(r, "tunnelled") == ["tunnelled"]
    finally:
        r.stop()


GUEST = "192.168.123.2"


def test_rfc5266_3_4_nothing_is_forwarded_to_the_guests_but_by_the_proven_path(world):
    """A guest on a local bridge (libvirt's virbr*): the gate lets everything out to
    it, so what the machine would forward to it from the access link is judged by
    where it came from: nothing while undecided or in mc, the proven link in h."""
    ip_batch(None, [f"link add virbr9 netns {MN} type veth peer name eth1 netns {VM}"])
    ip_batch(MN, ["addr add 192.168.123.1/24 dev virbr9", "link set virbr9 up"])
    ip_batch(VM, [f"addr add {GUEST}/24 dev eth1", "link set eth1 up"])
    ip_batch(NET, [f"route add {GUEST}/32 via {LINK}"])
    listener = Proc(VM, sys.executable, "-u", "-c",
                    "import socket\n"
                    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    f"s.bind(('{GUEST}', 9999)); print('LISTENING')\n"
                    "while True:\n"
                    "    print('GOT', s.recv(100).decode())\n")
    send = (f"import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            f"s.sendto(sys.argv[1].encode(), ('{GUEST}', 9999))")

    def from_the_link(text: str) -> None:
        subprocess.run(["ip", "netns", "exec", NET, sys.executable, "-c", send, text],
                       check=True)
    try:
        listener.wait("LISTENING")
        probe(None, [])
        from_the_link("while-undecided")
        probe({"iface": "eth0", "address": LINK, "mode": "mc", "tia": TIA}, [], install=False)
        from_the_link("in-mc-in-clear")
        probe({"iface": "eth0", "address": LINK, "mode": "h"}, [], install=False)
        from_the_link("at-home")
        # One path, in order: a datagram let through earlier would have come first.
        assert listener.wait("GOT")[-1].split()[1] == "at-home"
    finally:
        listener.stop()
        ip_batch(NET, [f"route del {GUEST}/32"])
        ip_batch(MN, ["link del virbr9"])
