"""Gateway failover with the real helper and charon (issue 20, "Gateway failover").

The profile lists both lab gateways (gw1 first).  The mobile node is in mc via gw1
on pub (untrusted) with a TCP session from the correspondent node to its home
address; gw1's charon is killed (SIGKILL: its host still answers pings, only IKE
and ESP die).  charon's DPD (delay from ``dead_gateway_after``, the packaged
retransmissions) finds it dead; the helper shuts the gate and brings mc up via
gw2 (a new IKE SA, a new TIA, a new registration through it) with the TCP
session alive, and keeps gw2 as the gateway that works on pub.  A reconnect on
pub tries gw2 first.  Then gw2 dies too: the gate stays shut and the status says
every gateway is down, naming both.  A capture of pub's link, judged packet by
packet (``tests/lab/leaks.py``), holds nothing in clear throughout.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from app.lab.configs import write_helper_files
from app.lab.world import Lab
from app.mn.gateway_order import network_key
from app.service.gateway_memory import FILE
from app.vpn import liveness
from app.vpn.charon import ALL_DOWN
from app.vpn.profile import VpnConfig
from tests.dbus_client import call, properties, run_as
from tests.lab.conftest import a_lab
from tests.lab.leaks import IKE_PORTS, PROTO_UDP, Frame, lab_policy, leaks, read_frames
from tests.lab.procs import (
    GW1,
    Proc,
    carries_data_again,
    echo_session,
    helper_world,
    history,
    mac_of_mn,
    wait_history,
)
from tests.lab.vpn_walk import bridge_capture, ping_stream

GW2 = "172.16.0.12"
PUB = network_key(IPv4Interface("203.0.113.0/24"), IPv4Address("203.0.113.1"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from a_lab(gw_inside=False)  # the gateways answer only from outside


@pytest.fixture(scope="module")
def world(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("failover")
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1, GW2))
    with helper_world(lab.nm_bus(), d, profiles, secrets,
                      helper_args=("--state-dir", str(d / "state"))) as w:
        yield w


def props(world: dict[str, object]) -> dict[str, object]:
    value = run_as(None, str(world["bus"]), properties)
    assert isinstance(value, dict), value
    return value


def wait_error(world: dict[str, object], prefix: str, timeout: float) -> str:
    """The helper's Error once it starts with ``prefix`` (woken by its property changes)."""
    deadline = time.monotonic() + timeout
    monitor = world["monitor"]
    assert isinstance(monitor, Proc)
    while time.monotonic() < deadline:
        error = str(props(world)["Error"])
        if error.startswith(prefix):
            return error
        with contextlib.suppress(TimeoutError):
            monitor.wait("", timeout=max(0.05, min(1.0, deadline - time.monotonic())))
    raise AssertionError(f"no Error starting {prefix!r}: {props(world)}")


def assert_dead_within_the_bound(frames: list[Frame], t_kill: float, t_down: float) -> None:
    """The dead-gateway bound from the capture's kernel timestamps, not the test's or
    the helper's clock (either may be seconds late on a loaded 2-core machine):

    * after gw1's last packet (IKE or ESP, before its charon died), the MN sent
      exactly one liveness check and the packaged retransmissions of it -- a count,
      which load cannot change (strongSwan's defaults would send 5 over 165 s);
    * the check left within the derived DPD delay plus charon's whole-second DPD
      clock (the bound's own definition, ``app.vpn.liveness``), + 0.5 s for charon's
      timer job being scheduled late;
    so charon gave up within that plus the packaged retransmissions, which is
    ``dead_gateway_after`` (+ the same 0.5 s).  The helper's ``vpn-down`` only
    orders the packets (the last retransmission before it)."""
    def at(f: Frame) -> float:
        return float(f["frame.time_epoch"])

    # UDP only: gw1's host answers ICMP port unreachable once its charon is gone (the
    # quoted UDP header would look like IKE).
    udp = [f for f in frames if f["ip.proto"] == PROTO_UDP]
    from_gw1 = [at(f) for f in udp if f["ip.src"] == GW1 and f["udp.srcport"] in IKE_PORTS
                and at(f) < t_down]
    assert from_gw1, "nothing from gw1 captured"
    last = max(from_gw1)
    checks = [at(f) for f in udp if f["ip.dst"] == GW1 and f["udp.dstport"] in IKE_PORTS
              and f["_ws.col.Protocol"] == "ISAKMP"  # not ESP-in-UDP, not NAT keep-alives
              and last < at(f) < t_down + 1.0]
    assert len(checks) == 1 + liveness.RETRANSMIT_TRIES, (last, checks)
    dead_after = VpnConfig(gateways=(GW1,), identity="x").dead_gateway_after
    dpd = liveness.dpd_delay_for(dead_after, VpnConfig(gateways=(GW1,), identity="x").dpd_delay)
    first_check = checks[0] - last
    assert first_check <= dpd + liveness.DPD_GRANULARITY + 0.5, first_check
    assert first_check + liveness.retransmit_total() <= dead_after + 0.5
    assert last <= t_kill + 1.0, "gw1 answered after its charon was killed"


def test_failover_gw1_dead_in_mc_moves_to_gw2_with_tcp_alive_then_all_dead_shuts(
        lab: Lab, world: dict[str, object]) -> None:
    d = Path(str(world["dir"]))
    wait_history(world, 0, "mode", {"mode": "h"}, timeout=25)
    mac = mac_of_mn()
    with bridge_capture(d / "pub.pcap", "pub", f"ether host {mac}") as pcap:
        t = time.time()
        lab.move("pub")
        wait_history(world, t, "vpn-up", {"gateway": GW1}, timeout=25)
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=25)
        with echo_session(d) as client, ping_stream(drain=1.0) as pings:
            tia1 = props(world)["TunnelInnerAddress"]
            t_kill = time.time()
            lab.kill_charon("tr-gw1")
            # The gate shuts on the loss, then mc again via gw2: a new IKE SA and TIA.
            wait_history(world, t_kill, "mode", {"mode": "none"}, timeout=30)
            t_down = min(tm for tm, k, _ in history(world, 200)
                         if tm >= t_kill and k == "vpn-down")
            # At once: the next gateway is the very next start (no back-off between).
            after = [(k, dd) for tm, k, dd in history(world, 200)
                     if tm >= t_down and k in ("vpn-down", "vpn-starting")]
            up = wait_history(world, t_kill, "vpn-up", {"gateway": GW2}, timeout=30)
            wait_history(world, t_kill, "mode", {"mode": "mc"}, timeout=30)
            print(f"failover gw1 -> gw2: mc again {time.time() - t_kill:.1f} s after the kill")
            p = props(world)
            assert p["VpnGateway"] == GW2 and p["Mode"] == "mc", p
            assert p["TunnelInnerAddress"] == up["tia"] != tia1, (p, tia1)
            starting = [dd for tm, k, dd in history(world, 200)
                        if tm >= t_kill and k == "vpn-starting"]
            assert starting and starting[0].get("gateways") == f"{GW2},{GW1}", starting
            firsts = [dd for k, dd in after if k == "vpn-starting"]
            assert firsts and firsts[0].get("gateways") == f"{GW2},{GW1}", after
            pings.wait_reply(after=time.time(), timeout=20)
            carries_data_again(client)  # the same TCP session, through gw2
        # gw2 is what works on pub: kept in the state directory.
        kept = json.loads((d / "state" / FILE).read_text())["profiles"]["corp"]
        assert kept[PUB] == GW2, kept
        # A new connection (no memory of gw1's death) tries gw2 first on pub.
        t = time.time()
        ok, value = run_as(None, str(world["bus"]), lambda b: call(b, "Connect", "s", ["corp"]))
        assert ok, value
        started = wait_history(world, t, "vpn-starting", timeout=25)
        assert started.get("gateways") == f"{GW2},{GW1}", started
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=25)
        # Both dead: the gate stays shut and the status names every gateway tried.
        t = time.time()
        lab.kill_charon("tr-gw2")
        wait_history(world, t, "mode", {"state": "untrusted", "mode": "none"}, timeout=30)
        error = wait_error(world, f"the VPN did not come up: {ALL_DOWN}", timeout=60)
        assert GW1 in error and GW2 in error, error
        p = props(world)
        assert p["Mode"] == "none" and p["TunnelInnerAddress"] == "", p
        # The gate's decisions since gw2 died: shut, and never opened again.
        gates = [dd for tm, k, dd in history(world, 200) if tm >= t and k == "gate"]
        assert gates and all(g["blocked"] == "true" for g in gates), gates
    bad = leaks(pcap, lab_policy(mac))
    assert not bad, "\n".join(str(o) for o in bad[:10])
    frames = read_frames(pcap)
    assert [f for f in frames if f["esp.spi"]], "no ESP seen: judged nothing"
    assert_dead_within_the_bound(frames, t_kill, t_down)
