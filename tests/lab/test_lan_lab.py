"""The local network on request, and DNS refused at once while undecided (issue 19).

The real helper in the lab's mobile node:

* ``allow_lan = true`` on the NATed network (192.168.50.0/24, private, mode mc):
  the network's router is reached directly, in clear, from the link address,
  while a correspondent on the intranet is reached only through the VPN (a
  capture on the link sees the echo to the router and nothing to the
  correspondent); on the public network (203.0.113.0/24) the same profile opens
  nothing and the helper says why; without ``allow_lan`` the router is refused.
* A profile without a VPN on the public network: untrusted, the gate shut; a DNS
  query to the link's router gets an ICMP port unreachable back on its socket (TCP:
  a reset), and no DNS packet leaves the link.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.lab.charon import LAB_PSK
from app.lab.configs import CN, MN_HA_KEY, profile_toml, write_helper_files
from app.lab.topology import MN, SWITCH
from app.lab.world import Lab
from tests.dbus_client import call, run_as
from tests.haproc import env
from tests.lab.conftest import ns_exec
from tests.lab.procs import GW1, Proc, helper_world, mac_of_mn, wait_history

NAT_ROUTER = "192.168.50.1"
PUB_ROUTER = "203.0.113.1"


@pytest.fixture(scope="module")
def world(lab: Lab) -> Iterator[dict[str, object]]:
    d = Path(tempfile.mkdtemp(prefix="trustroam-lan-"))
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1,))
    (profiles / "lan.toml").write_text(profile_toml(vpn_gateways=(GW1,))
                                       + "[features]\nallow_lan = true\n")
    (profiles / "plain.toml").write_text(profile_toml())
    with open(secrets, "a") as f:
        for name in ("lan", "plain"):
            f.write(f'[{name}]\nmn_ha_key = "hex:{MN_HA_KEY}"\nvpn_psk = "{LAB_PSK}"\n')
    with helper_world(lab.nm_bus(), d, profiles, secrets) as w:
        yield w


def capture(node: str, iface: str, bpf: str) -> Proc:
    """tcpdump in immediate mode: libpcap otherwise hands packets over in blocks with
    a one-second timeout, and a capture stopped within it loses its last frames (a
    "nothing seen" would then prove nothing)."""
    cap = Proc(node, "tcpdump", "-l", "--immediate-mode", "-n", "-i", iface, bpf,
               stderr_lines=True)
    assert cap.err is not None
    cap.err.wait("listening on")
    return cap


def connect(world: dict[str, object], lab: Lab, profile: str, net: str, mode: str,
            state: str = "untrusted") -> None:
    """``profile`` connected on ``net``, until it reaches ``state`` ``mode``."""
    lab.move(net)
    t = time.time()
    out = subprocess.run([sys.executable, "-m", "app.ctl", "connect", profile],
                         env={**env(), "DBUS_SYSTEM_BUS_ADDRESS": str(world["bus"])},
                         capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    wait_history(world, t, "mode", {"state": state, "mode": mode}, timeout=40)


def ping(dst: str) -> subprocess.CompletedProcess[str]:
    """One echo, answered or not within 5 s (a bound for a lost answer, not a measure)."""
    return ns_exec(MN, "ping", "-n", "-c", "1", "-W", "5", dst)


def udp_send(dst: str) -> str:
    """A datagram to ``dst``: "SENT", or "REFUSED" (the gate's drop: EPERM)."""
    return ns_exec(MN, sys.executable, "-c",
                   "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                   f"try: s.sendto(b'x', ({dst!r}, 9999)); print('SENT')\n"
                   "except PermissionError: print('REFUSED')").stdout.strip()


def refused_and_not_seen(dst: str, bridge: str) -> None:
    """Nothing to ``dst`` leaves in clear: a datagram is refused, and an echo (ping's
    raw socket does not report the drop) never shows on the link's capture."""
    cap = capture(SWITCH, bridge, f"ether src {mac_of_mn()} and ip dst host {dst}")
    try:
        assert udp_send(dst) == "REFUSED"
        assert ping(dst).returncode != 0
    finally:
        cap.stop()
    lines = [x for x in cap.out.rest() if x.strip()]
    assert not lines, lines


def route_dev(dst: str) -> str:
    out = ns_exec(MN, "ip", "-4", "route", "get", dst).stdout.split()
    return out[out.index("dev") + 1]


@pytest.mark.parametrize("net,state,mode,router,bridge", [
    ("nat", "untrusted", "mc", NAT_ROUTER, "br-natl"),
    ("t1", "trusted", "c", "10.30.1.1", "br-t1")])
def test_allow_lan_reaches_the_private_link_subnet_in_clear_and_the_rest_by_the_tunnel(
        lab, world, net, state, mode, router, bridge):
    connect(world, lab, "lan", net, mode, state)
    subnet = router.rsplit(".", 1)[0] + ".0/24"
    assert allow_lan(world) == (True, f"{subnet} on eth0 (the profile's allow_lan)")
    # Routes: the on-link subnet by the physical link (the main table's on-link route,
    # rule pref 90), the intranet by the tunnel.
    assert route_dev(router) == "eth0"
    assert route_dev(CN) == "trmn0"
    mac = mac_of_mn()
    cap = capture(SWITCH, bridge, f"ether src {mac} and icmp")
    try:
        lan = ping(router)
        intranet = ping(CN)
    finally:
        cap.stop()
    assert udp_send(router) == "SENT"
    assert lan.returncode == 0, lan.stdout + lan.stderr
    assert intranet.returncode == 0, intranet.stdout + intranet.stderr
    lines = cap.out.rest()
    # The echo to the router left in clear; the correspondent's never did (it went
    # inside the tunnel: IP-in-IP or ESP in UDP, which this capture does not match).
    assert [x for x in lines if f"> {router}: ICMP echo request" in x], lines
    assert not [x for x in lines if f"> {CN}:" in x], lines


def test_allow_lan_never_opens_a_public_link_subnet_and_says_why(lab, world):
    connect(world, lab, "lan", "pub", "mc")
    helper = world["helper"]
    assert isinstance(helper, Proc)
    helper.wait("allow_lan: the local network of eth0 stays shut: 203.0.113.0/24 is not "
                "private")
    refused_and_not_seen(PUB_ROUTER, "br-pub")
    assert ping(CN).returncode == 0  # the tunnel itself is up


def test_without_allow_lan_the_link_subnet_is_refused_in_mc(lab, world):
    connect(world, lab, "corp", "nat", "mc")
    refused_and_not_seen(NAT_ROUTER, "br-natl")
    assert ping(CN).returncode == 0


def _query(proto: str, dst: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", MN, sys.executable, "-c",
                          "import sys\nfrom tests.gate_probe import _answer\n"
                          f"print(_answer({{'proto': {proto!r}, 'dst': {dst!r}, "
                          "'dport': 53}))"],
                         env=env(), capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_dns_to_the_links_resolver_is_refused_at_once_while_the_gate_is_shut(lab, world):
    mac = mac_of_mn()
    # From before the move: the capture must see what the gate lets out (DHCP, the
    # registration request), so that seeing no DNS means something.
    cap = capture(SWITCH, "br-pub", f"ether src {mac} and (port 53 or port 67 or port 434)")
    try:
        connect(world, lab, "plain", "pub", "none")  # untrusted, no VPN: the gate shut
        udp = _query("udp", PUB_ROUTER)
        tcp = _query("tcp", PUB_ROUTER)
    finally:
        cap.stop()
    assert udp == "icmp 3/3", udp  # port unreachable, read from the socket's error queue
    assert tcp == "reset", tcp
    lines = cap.out.rest()
    assert [x for x in lines if ".434:" in x or ".67:" in x], lines
    assert not [x for x in lines if ".53:" in x], lines


def allow_lan(world: dict[str, object], allow: bool | None = None) -> tuple[bool, str]:
    """GetAllowLan, or SetAllowLan(allow), as root (polkit's active local user)."""
    ok, value = run_as(None, str(world["bus"]), lambda bus: (
        call(bus, "GetAllowLan") if allow is None else call(bus, "SetAllowLan", "b", [allow])))
    assert ok, value
    is_open, why = value[0]
    return bool(is_open), str(why)


def test_the_users_choice_opens_one_network_and_is_remembered_for_it(lab, world):
    """Without allow_lan in the profile, SetAllowLan(true) on nat opens its local
    network now, on nat only (not on t1), and again when the node comes back to nat;
    SetAllowLan(false) shuts it."""
    connect(world, lab, "corp", "nat", "mc")
    assert allow_lan(world) == (False, "not allowed on this network")
    assert udp_send(NAT_ROUTER) == "REFUSED"
    assert allow_lan(world, True) == (True, "192.168.50.0/24 on eth0")
    assert udp_send(NAT_ROUTER) == "SENT"
    assert ping(NAT_ROUTER).returncode == 0
    t = time.time()
    lab.move("t1")
    wait_history(world, t, "mode", {"state": "trusted", "mode": "c"}, timeout=40)
    assert allow_lan(world) == (False, "not allowed on this network")
    assert udp_send("10.30.1.1") == "REFUSED"
    t = time.time()
    lab.move("nat")
    wait_history(world, t, "mode", {"state": "untrusted", "mode": "mc"}, timeout=40)
    assert allow_lan(world) == (True, "192.168.50.0/24 on eth0")
    assert udp_send(NAT_ROUTER) == "SENT"
    assert allow_lan(world, False) == (False, "not allowed on this network")
    assert udp_send(NAT_ROUTER) == "REFUSED"
