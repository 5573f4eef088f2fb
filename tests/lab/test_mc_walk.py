"""Mode mc with the real helper and charon: the walk of issue 12 (RFC 5266 3.3, 3.4, 3.4.2).

The VPN gateways answer only from outside (the lab's firewall drops intranet
traffic to the DMZ), as in most deployments.  The mobile node walks
home -> t1 -> pub -> nat -> pub -> fa1 -> nat -> t2 -> home with a TCP session
from the correspondent node to its home address and a ping stream to it; each
stop must reach its mode (pub and nat: mc through gw1), pub <-> nat moves must
be MOBIKE only (the home agent's binding keeps the TIA: no new registration in
its log), and captures on the untrusted links judged by tshark must show
nothing in clear from the home address or to the intranet, and nothing but
IKE/ESP, DHCP, the direct probe and agent solicitation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from app.lab.configs import profile_toml
from app.lab.topology import MN
from app.lab.world import Lab
from app.mn.access_mode import NEVER_VPN_REASON
from tests.dbus_client import call, properties, run_as
from tests.lab.conftest import a_lab
from tests.lab.leaks import lab_policy, leaks, read_frames
from tests.lab.procs import (
    GW1,
    MN_VICI,
    Proc,
    carries_data_again,
    echo_session,
    history,
    mac_of_mn,
    vpn_helper_world,
    wait_history,
)
from tests.lab.vpn_walk import bridge_capture, ping_stream

WALK = (("t1", "c"), ("pub", "mc"), ("nat", "mc"), ("pub", "mc"), ("fa1", "f"),
        ("nat", "mc"), ("t2", "c"), ("home", "h"))
UNTRUSTED = ("pub", "nat")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from a_lab(gw_inside=False)  # the gateways answer only from outside


@pytest.fixture(scope="module")
def world(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    yield from vpn_helper_world(lab, tmp_path_factory.mktemp("mc"))


def props(world: dict[str, object]) -> dict[str, object]:
    value = run_as(None, str(world["bus"]), properties)
    assert isinstance(value, dict), value
    return value


def arrive(world: dict[str, object], lab: Lab, net: str, mode: str,
           previous: str | None) -> float:
    """Move and wait until the stop's mode holds; returns when the move began."""
    t = time.time()
    lab.move(net)
    if mode == "mc" and previous == "mc":
        # Behind the same gateway: MOBIKE moves the IKE SA, no mode change at all.
        wait_history(world, t, "mobike", timeout=20)
    else:
        wait_history(world, t, "mode", {"mode": mode}, timeout=25)
    return t


def ha_registrations(ha: Proc, since: float) -> list[str]:
    """New or moved bindings the home agent logged at or after ``since`` (renewals are
    logged at debug level: not here).  Its output may come late: judged by the
    time each line carries."""
    out = []
    for line in ha.out.rest(timeout=0.5):
        try:
            stamp, ms = line[:23].split(",")
            at = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
        except ValueError:
            continue
        if at >= since and ("new binding" in line or "moved ->" in line):
            out.append(line)
    return out


def test_rfc5266_3_4_walk_across_the_boundary_with_a_tcp_session_and_nothing_leaks(
        lab: Lab, world: dict[str, object]) -> None:
    d = Path(str(world["dir"]))
    ha = world["ha"]
    assert isinstance(ha, Proc)
    wait_history(world, 0, "mode", {"mode": "h"}, timeout=25)
    mac = mac_of_mn()
    seen: list[tuple[str, str, dict[str, object]]] = []
    with ExitStack() as stack:
        pcaps = {net: stack.enter_context(bridge_capture(d / f"{net}.pcap", net,
                                                         f"ether host {mac}"))
                 for net in UNTRUSTED}
        client = stack.enter_context(echo_session(d))
        pings = stack.enter_context(ping_stream(drain=2.0))
        previous = "h"
        for net, mode in WALK:
            print(f"-> {net} (expect {mode})", flush=True)
            t = arrive(world, lab, net, mode, previous)
            t_mode = time.time() - t
            pings.wait_reply(after=time.time(), timeout=20)
            t_ping = time.time() - t
            carries_data_again(client)  # the same TCP session, through the new path
            print(f"   {net}: mode {t_mode:.3f} s, pings {t_ping:.3f} s, "
                  f"TCP {time.time() - t:.3f} s after the move")
            p = props(world)
            seen.append((net, mode, p))
            assert p["Mode"] == mode, (net, p)
            if mode == "mc":
                assert p["State"] == "untrusted" and p["TunnelInnerAddress"], p
                assert p["VpnGateway"] == GW1, p
                assert p["CareOfAddress"] == p["TunnelInnerAddress"], p
                # RFC 5266 4: IPsec NAT-T's detection (charon's), behind the NAT only.
                want_nat = net == "nat"
                if p["NatDetected"] is not want_nat:
                    wait_history(world, t, "vpn-nat", {"detected": str(want_nat).lower()})
                    p = props(world)
                assert p["NatDetected"] is want_nat, (net, p)
            if previous == "mc" and mode == "mc":
                # RFC 5266 3.3: MOBIKE only; the home agent keeps the TIA as care-of.
                assert ha_registrations(ha, t) == [], "a new registration on a MOBIKE move"
                kinds = [k for tm, k, dd in history(world, 80)
                         if tm >= t and k == "probe-sent" and dd.get("vpn") == "true"]
                assert kinds == [], "registered through the VPN again on a MOBIKE move"
            previous = mode
    result = pings.result
    assert result is not None
    print(f"ping stream over the walk: {result.sent} sent, {result.lost} lost, "
          f"longest run {result.longest_run}")
    for net in UNTRUSTED:
        bad = leaks(pcaps[net], lab_policy(mac))
        assert not bad, f"{net}: " + "\n".join(str(o) for o in bad[:10])
        frames = read_frames(pcaps[net])
        assert [f for f in frames if f["esp.spi"]], f"{net}: no ESP seen: judged nothing"


def test_policies_always_vpn_on_t1_gives_mc_and_never_vpn_on_pub_shuts(
        lab: Lab, world: dict[str, object]) -> None:
    bus = str(world["bus"])
    # The gateway answers from inside for this one: always-vpn is mc on t1.
    lab.set_gw_inside(True)
    try:
        t = time.time()
        lab.move("t1")
        wait_history(world, t, "mode", {"mode": "c"}, timeout=25)
        ok, value = run_as(None, bus, lambda b: call(b, "SetPolicy", "s", ["always-vpn"]))
        assert ok, value
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=25)
        assert props(world)["Policy"] == "always-vpn"
    finally:
        lab.set_gw_inside(False)
    t = time.time()
    ok, value = run_as(None, bus, lambda b: call(b, "SetPolicy", "s", ["never-vpn"]))
    assert ok, value
    # Applied at once: out of mc, and t1 (trusted) goes direct.
    wait_history(world, t, "mode", {"state": "trusted", "mode": "c"}, timeout=25)
    t = time.time()
    lab.move("pub")
    wait_history(world, t, "mode", {"state": "untrusted", "mode": "none",
                                    "reason": NEVER_VPN_REASON}, timeout=25)
    p = props(world)
    assert p["Mode"] == "none" and p["Error"] == NEVER_VPN_REASON, p
    assert "vpn-starting" not in [k for tm, k, _ in history(world, 60) if tm >= t]
    t = time.time()
    ok, value = run_as(None, bus, lambda b: call(b, "SetPolicy", "s", ["auto"]))
    assert ok, value
    wait_history(world, t, "mode", {"mode": "mc"}, timeout=25)


def vpn_ups(world: dict[str, object], since: float) -> list[dict[str, str]]:
    return [d for tm, k, d in history(world, 200) if tm >= since and k == "vpn-up"]


def test_rfc5266_3_4_2_keep_alive_inside_the_ike_sa_survives_trusted_stops(
        lab: Lab, world: dict[str, object]) -> None:
    """Gateways reachable from inside, ``keep_alive_inside = true``: the IKE SA made on
    the first untrusted stop lives through the trusted ones (MOBIKE moves it), and
    the next untrusted stop needs no new IKE_SA."""
    bus = str(world["bus"])
    d = Path(str(world["dir"]))
    profiles = Path(str(world["profiles"]))
    (profiles / "corpk.toml").write_text(
        profile_toml(vpn_gateways=(GW1,), keep_alive_inside=True))
    secrets = d / "secrets.toml"
    secrets.write_text(secrets.read_text() + secrets.read_text().replace("[corp]", "[corpk]"))
    lab.set_gw_inside(True)
    try:
        t0 = time.time()
        lab.move("pub")
        ok, value = run_as(None, bus, lambda b: call(b, "Connect", "s", ["corpk"]))
        assert ok, value
        wait_history(world, t0, "mode", {"mode": "mc"}, timeout=25)
        first = vpn_ups(world, t0)
        assert len(first) == 1, first
        ike = first[0]["ike"]
        for net, mode in (("t1", "c"), ("nat", "mc"), ("t2", "c"), ("pub", "mc")):
            t = time.time()
            lab.move(net)
            wait_history(world, t, "mode", {"mode": mode}, timeout=25)
            if mode == "c":
                # Trusted, and the VPN stays up inside: MOBIKE moved it here.
                wait_history(world, t, "mobike", timeout=20)
                assert "vpn-stop" not in [k for tm, k, _ in history(world, 60) if tm >= t]
        assert vpn_ups(world, t0)[1:] == [], "a new IKE SA after the first"
        sas = subprocess.run(["swanctl", "--list-sas", "--uri", f"unix://{MN_VICI}"],
                             capture_output=True, text=True, check=True).stdout
        assert f"trustroam: #{ike}," in sas, sas
    finally:
        lab.set_gw_inside(False)
        ok, value = run_as(None, bus, lambda b: call(b, "Connect", "s", ["corp"]))
        assert ok, value


def test_charon_killed_in_mc_keeps_the_gate_shut_and_mc_comes_back_by_itself(
        lab: Lab, world: dict[str, object]) -> None:
    d = Path(str(world["dir"]))
    t = time.time()
    lab.move("pub")
    wait_history(world, t, "mode", {"mode": "mc"}, timeout=25)
    mac = mac_of_mn()
    with bridge_capture(d / "kill.pcap", "pub", f"ether host {mac}") as pcap, \
            ping_stream(drain=0.5) as pings:
        t = time.time()
        lab.kill_charon(MN)
        wait_history(world, t, "mode", {"state": "untrusted", "mode": "none"}, timeout=20)
        p = props(world)
        assert p["Error"] == f"VPN service not reachable at {MN_VICI}", p
        assert p["Mode"] == "none" and p["TunnelInnerAddress"] == "", p
        # Traffic for the home address goes on arriving: none of it leaves in clear.
        pings.wait_reply(after=0, timeout=1)  # (the stream ran before the kill)
        time.sleep(2)  # two seconds of the CN's pings and the MN's own attempts, shut
        t = time.time()
        lab.start_charon(MN)
        wait_history(world, t, "vpn-service-up", timeout=20)
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=25)
        pings.wait_reply(after=time.time(), timeout=20)
    bad = leaks(pcap, lab_policy(mac))
    assert not bad, "\n".join(str(o) for o in bad[:10])
    assert props(world)["Error"] == ""


def test_rfc5266_3_4_1_mc_says_the_home_agent_is_reached_through_the_vpn_and_a_link_left_clears_the_binding(  # noqa: E501
        lab: Lab, world: dict[str, object]) -> None:
    """Issue 19: in mc `trustroamctl status` says the home agent is reached through
    the VPN (the registration through it is the proof), not the direct probe's
    failure; and the PropertiesChanged of a link left (Mode none) clears
    BindingExpires in the same signal."""
    monitor = world["monitor"]
    assert isinstance(monitor, Proc)
    t = time.time()
    lab.move("t1")
    wait_history(world, t, "mode", {"mode": "c"}, timeout=25)
    assert float(str(props(world)["BindingExpires"])) > time.time()  # the direct binding
    before = len(monitor.out.printed)
    t = time.time()
    lab.move("pub")
    wait_history(world, t, "mode", {"mode": "mc"}, timeout=25)
    out = subprocess.run([sys.executable, "-m", "app.ctl", "status"], capture_output=True,
                         text=True, timeout=30, check=False,
                         env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": str(world["bus"])})
    assert out.returncode == 0, out
    assert "home agent     reached through the VPN (registered through it)" in out.stdout, out
    assert "not answering" not in out.stdout.split("TIA")[0], out.stdout
    left = [line for line in monitor.out.printed[before:] if "Mode=none" in line.split()]
    assert left, monitor.out.printed[before:]
    assert "BindingExpires=0.0" in left[0].split(), left[0]
