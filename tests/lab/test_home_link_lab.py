"""Returning home on the wire, with the real helper (RFC 5944 4.6, RFC 5266 3.1.1).

A capture on the home link's bridge (frames from the mobile node only, read back
by tshark) over moves t1 -> home: the probe leaves from the link's own DHCP
address first; nothing names the home address before it is answered; then the
mobile node's gratuitous ARP for its home address, and only after it the
deregistration from the home address (4.6: "Before transmitting the
(de)Registration Request ... MUST transmit this gratuitous ARP").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from app.lab.configs import HA, HOME
from tests.lab.test_gate_lab import Captures, mac_of_mn, settle, wait_state, world
from tests.requirements import require_tshark

__all__ = ["world"]  # the helper's world, shared with the gate's lab tests


def _names_home(f: dict[str, str]) -> bool:
    if f["eth.type"] == "0x0806":
        return HOME in (f["arp.src.proto_ipv4"], f["arp.dst.proto_ipv4"])
    return f["ip.src"] == HOME


def _first(frames: list[dict[str, str]], match: Callable[[dict[str, str]], bool],
           what: str) -> int:
    found = [i for i, f in enumerate(frames) if match(f)]
    assert found, f"not on the home link: {what}"
    return found[0]


def test_rfc5944_4_6_on_the_wire_the_gratuitous_arp_goes_before_the_deregistration(
        lab, world):
    require_tshark()
    d = Path(str(world["dir"])) / "home-arp"
    d.mkdir(exist_ok=True)
    settle(lab, world, "c")
    caps = Captures(d, mac_of_mn(), ["home"])
    arrivals = []
    try:
        for _ in range(3):
            t = time.time()
            lab.move("home")
            wait_state(world, t, "trusted", "h")
            arrivals.append(t)
            t = time.time()
            lab.move("t1")
            wait_state(world, t, "trusted", "c")
    finally:
        caps.stop()
    frames = [f for f in caps.frames("home") if float(f["frame.time_epoch"]) >= arrivals[0]]
    for i, start in enumerate(arrivals):
        end = arrivals[i + 1] if i + 1 < len(arrivals) else float("inf")
        visit = [f for f in frames if start <= float(f["frame.time_epoch"]) < end]
        probe = _first(visit, lambda f: f["ip.dst"] == HA and f["udp.dstport"] == "434"
                       and f["ip.src"] != HOME, "a probe from the link's own address")
        garp = _first(visit, lambda f: f["eth.type"] == "0x0806"
                      and f["arp.src.proto_ipv4"] == HOME == f["arp.dst.proto_ipv4"],
                      "the gratuitous ARP for the home address")
        dereg = _first(visit, lambda f: f["ip.src"] == HOME and f["ip.dst"] == HA
                       and f["udp.dstport"] == "434", "the deregistration from the home address")
        first_home = _first(visit, _names_home, "a frame naming the home address")
        assert probe < first_home, "the home address exposed before the probe"
        assert garp < dereg, (i, visit[garp], visit[dereg])
