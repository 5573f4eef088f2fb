"""What comes in, in mode mc, with the real helper and charon (RFC 5266 3.1.4, 3.4).

On pub an attacker has learned the home address (the direct probe shows it) and
forges, from the pub router's namespace to the mobile node's MAC, packets to the
home address from an intranet host: in clear, and as IP-in-IP claiming the home
agent as outer source (to the TIA and to the link address).  The mobile node has
Debian's loose rp_filter (the lab sets it as a desktop has it).  A receiver bound
to the home address must see none of them, while the correspondent's datagrams
through the home agent and the VPN still arrive.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from app.lab.configs import CN, HA, HOME
from app.lab.topology import MN
from app.lab.world import Lab
from tests.dbus_client import properties, run_as
from tests.lab.conftest import a_lab, mn_address, ns_exec
from tests.lab.procs import Proc, mac_of_mn, vpn_helper_world, wait_history

PORT = 9998
ATTACKER, ATTACKER_IFACE = "tr-er", "pub"  # the pub link's router: any host there can
CN_NODE = "tr-cn"

RECEIVER = f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("{HOME}", {PORT}))
print("READY", flush=True)
while True:
    print("GOT", s.recv(2048).decode(errors="replace"), flush=True)
"""

FORGER = f"""
import sys
from scapy.all import IP, UDP, Ether, get_if_hwaddr, sendp
mac, link, tia = sys.argv[1:]
# The source MAC given: scapy leaves it zero where it has no route, and a bridge
# drops such frames.
eth = Ether(src=get_if_hwaddr("{ATTACKER_IFACE}"), dst=mac)
def inner(text):
    return IP(src="{CN}", dst="{HOME}") / UDP(sport=40000, dport={PORT}) / text.encode()
sendp([eth / inner("forged-clear"),
       eth / IP(src="{HA}", dst=tia) / inner("forged-ipip-tia"),
       eth / IP(src="{HA}", dst=link) / inner("forged-ipip-link")],
      iface="{ATTACKER_IFACE}", verbose=False)
print("FORGED", flush=True)
"""

CN_SENDER = f"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:  # until stopped: the first may wait for ARP on the way
    s.sendto(b"through-the-vpn", ("{HOME}", {PORT}))
    time.sleep(0.2)
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from a_lab(gw_inside=False)


@pytest.fixture(scope="module")
def world(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    yield from vpn_helper_world(lab, tmp_path_factory.mktemp("inbound"))


def blocked_in() -> int:
    """Packets the gate refused on the way in (0 for a gate without that counter)."""
    out = ns_exec(MN, "nft", "list", "counter", "inet", "trustroam_gate", "blocked_in").stdout
    return int(out.split("packets")[1].split()[0]) if "packets" in out else 0


def test_rfc5266_3_4_in_mc_packets_forged_on_pub_to_the_home_address_are_not_delivered(
        lab: Lab, world: dict[str, object]) -> None:
    wait_history(world, 0, "mode", {"mode": "h"}, timeout=25)
    t = time.time()
    lab.move("pub")
    wait_history(world, t, "mode", {"mode": "mc"}, timeout=25)
    p = run_as(None, str(world["bus"]), properties)
    assert isinstance(p, dict) and p["Mode"] == "mc", p
    tia, link = str(p["TunnelInnerAddress"]), mn_address(prefix="203.0.113.")
    receiver = Proc(MN, sys.executable, "-u", "-c", RECEIVER)
    cn = None
    try:
        receiver.wait("READY")
        before = blocked_in()
        forger = subprocess.run(["ip", "netns", "exec", ATTACKER, sys.executable, "-c", FORGER,
                                 mac_of_mn(), link, tia], capture_output=True, text=True,
                                timeout=60, check=False)
        assert "FORGED" in forger.stdout, forger.stderr
        cn = Proc(CN_NODE, sys.executable, "-u", "-c", CN_SENDER)
        receiver.wait("GOT through-the-vpn", timeout=20)
        got = [ln.split(" ", 1)[1].strip() for ln in receiver.out.seen if ln.startswith("GOT ")]
        assert [g for g in got if g.startswith("forged")] == [], got
        # They did reach the mobile node: its gate refused them on the way in.
        assert blocked_in() - before >= 3
    finally:
        for proc in (cn, receiver):
            if proc is not None:
                proc.stop()
