"""Faults on the road (issue 20) with the real helper, charon and home agent.

The home agent down while the VPN comes up on an untrusted network: the status
says the home agent is unreachable (the VPN up, its TIA shown, not an error of
ours), nothing leaves in clear, and mc comes by itself once the home agent is
back.  The home agent restarted in mc: its durable store gives the binding back
(mc never leaves) and the node sends no burst of registrations.  never-vpn in
mc: the TIA's binding is withdrawn at the home agent (RFC 5944 3.6.1.1, through
the VPN before it stops): its binding table holds none for the home address.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.agents.binding_store import BindingStore
from app.lab.configs import HOME
from app.lab.world import Lab
from app.mn.access_mode import NEVER_VPN_REASON
from app.mn.mode_state import HA_UNREACHABLE
from tests.dbus_client import call, properties, run_as
from tests.lab.conftest import a_lab
from tests.lab.leaks import lab_policy, leaks
from tests.lab.procs import (
    MN_VICI,
    Proc,
    capture,
    history,
    mac_of_mn,
    vpn_helper_world,
    wait_history,
)
from tests.lab.procs import world_procs as dump_procs
from tests.lab.vpn_walk import bridge_capture


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from a_lab(gw_inside=False)  # the gateways answer only from outside


@pytest.fixture(scope="module")
def world(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    gen = vpn_helper_world(lab, tmp_path_factory.mktemp("faults"))
    w = next(gen)
    first, first_helper = w["ha"], w["helper"]
    try:
        yield w
    finally:
        if w["helper"] is not first_helper and isinstance(w["helper"], Proc):
            w["helper"].stop()  # a restarted one: while the home agent still answers
        gen.close()
        if w["ha"] is not first and isinstance(w["ha"], Proc):
            w["ha"].stop()


def props(world: dict[str, object]) -> dict[str, object]:
    value = run_as(None, str(world["bus"]), properties)
    assert isinstance(value, dict), value
    return value


def ha_stop(world: dict[str, object]) -> None:
    ha = world["ha"]
    assert isinstance(ha, Proc)
    ha.stop()


def ha_start(world: dict[str, object]) -> list[str]:
    """The home agent again, from the same configuration and state directory; the
    lines it printed up to serving."""
    d = Path(str(world["dir"]))
    ha = Proc("tr-ha", sys.executable, "-m", "app.agents.ha_cli", "--config",
              str(d / "ha.toml"), "--log-level", "debug")
    world["ha"] = dump_procs["ha"] = ha
    return ha.wait("serving registrations")


def stored_binding(world: dict[str, object]) -> str | None:
    """The care-of address the home agent's durable binding table holds for the
    mobile node's home address (None: no binding)."""
    store = BindingStore(Path(str(world["dir"])) / "ha-state", read_only=True)
    try:
        found = [b for b in store.load().bindings if str(b.home_address) == HOME]
    finally:
        store.close()
    return str(found[0].care_of_address) if found else None


def test_ha_down_on_an_untrusted_network_vpn_up_ha_unreachable_then_mc_by_itself(
        lab: Lab, world: dict[str, object]) -> None:
    d = Path(str(world["dir"]))
    mac = mac_of_mn()
    ha_stop(world)
    try:
        with bridge_capture(d / "ha-down.pcap", "pub", f"ether host {mac}") as pcap:
            t = time.time()
            lab.move("pub")
            wait_history(world, t, "mode", {"state": "untrusted", "mode": "none",
                                            "reason": HA_UNREACHABLE}, timeout=30)
            p = props(world)
            assert (p["State"], p["Mode"], p["Error"]) == ("untrusted", "none",
                                                          HA_UNREACHABLE), p
            assert p["TunnelInnerAddress"] != "", "the VPN stays up"
            assert p["HomeAgentProbe"][0] is False, p  # type: ignore[index]
            assert "error" not in [k for tm, k, _ in history(world, 60) if tm >= t]
            t = time.time()
            ha_start(world)
            wait_history(world, t, "mode", {"mode": "mc"}, timeout=40)
        bad = leaks(pcap, lab_policy(mac))
        assert not bad, "\n".join(str(o) for o in bad[:10])
        assert props(world)["Error"] == ""
    finally:
        if isinstance(world["ha"], Proc) and world["ha"].p.poll() is not None:
            ha_start(world)


def test_ha_down_on_a_trusted_network_never_vpn_stays_shut_auto_falls_back_to_the_vpn(
        lab: Lab, world: dict[str, object]) -> None:
    """(Out of mc first: mc carried onto t1 by MOBIKE would hold until its binding
    runs out, the home agent being asked nothing before its renewal.)"""
    bus = str(world["bus"])

    def policy(name: str) -> None:
        ok, value = run_as(None, bus, lambda b: call(b, "SetPolicy", "s", [name]))
        assert ok, value

    lab.set_gw_inside(True)  # the gateway answers from t1 too
    try:
        policy("never-vpn")
        ha_stop(world)
        t = time.time()
        lab.move("t1")
        wait_history(world, t, "mode", {"state": "untrusted", "mode": "none",
                                        "reason": NEVER_VPN_REASON}, timeout=30)
        assert props(world)["TunnelInnerAddress"] == "", "never-vpn: no VPN"
        t = time.time()
        policy("auto")
        wait_history(world, t, "mode", {"state": "untrusted", "mode": "none",
                                        "reason": HA_UNREACHABLE}, timeout=30)
        assert props(world)["TunnelInnerAddress"] != "", "the VPN is up"
        t = time.time()
        ha_start(world)
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=40)
    finally:
        lab.set_gw_inside(False)
        if isinstance(world["ha"], Proc) and world["ha"].p.poll() is not None:
            ha_start(world)
        policy("auto")
        t = time.time()
        lab.move("pub")  # where the next tests start: mc on an untrusted network
        wait_history(world, t, "mobike", timeout=30)


def test_ha_restarted_in_mc_keeps_the_binding_and_brings_no_registration_storm(
        lab: Lab, world: dict[str, object]) -> None:
    t = time.time()
    if props(world)["Mode"] != "mc":
        lab.move("pub")
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)
    tia = str(props(world)["TunnelInnerAddress"])
    requests = capture("tr-ha", "any", "udp dst port 434")
    try:
        t = time.time()
        ha_stop(world)
        serving = ha_start(world)
        assert any("1 bindings restored" in line for line in serving), serving
        assert stored_binding(world) == tia
        # A storm would come at once (every retransmission and renewal answered with
        # a refusal and repaired): ten seconds of what reaches the home agent.
        time.sleep(10)
    finally:
        requests.stop()
    got = [line for line in requests.out.printed if "434" in line]
    assert len(got) <= 2, got
    assert [k for tm, k, _ in history(world, 60) if tm >= t and k in ("mode", "error")] == []
    assert props(world)["Mode"] == "mc"


def test_rfc5944_3_6_1_1_never_vpn_in_mc_withdraws_the_tia_binding_at_the_home_agent(
        lab: Lab, world: dict[str, object]) -> None:
    bus = str(world["bus"])
    t = time.time()
    if props(world)["Mode"] != "mc":
        lab.move("pub")
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)
    tia = str(props(world)["TunnelInnerAddress"])
    assert stored_binding(world) == tia
    ha = world["ha"]
    assert isinstance(ha, Proc)
    t = time.time()
    ok, value = run_as(None, bus, lambda b: call(b, "SetPolicy", "s", ["never-vpn"]))
    assert ok, value
    try:
        wait_history(world, t, "mode", {"state": "untrusted", "mode": "none",
                                        "reason": NEVER_VPN_REASON}, timeout=25)
        ha.wait(f"deregistered (binding to {tia} removed)", timeout=10)
        # The log line and the store's commit are one batch; read the table until it
        # shows the batch (or give up).
        deadline = time.monotonic() + 5
        while stored_binding(world) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stored_binding(world) is None, "the home agent still tunnels to the TIA"
    finally:
        t = time.time()
        ok, value = run_as(None, bus, lambda b: call(b, "SetPolicy", "s", ["auto"]))
        assert ok, value
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)


def test_rfc5944_3_6_1_1_disconnect_in_mc_withdraws_the_tia_binding_at_the_home_agent(
        lab: Lab, world: dict[str, object]) -> None:
    bus = str(world["bus"])
    t = time.time()
    if props(world)["Mode"] != "mc":
        lab.move("pub")
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)
    tia = str(props(world)["TunnelInnerAddress"])
    assert stored_binding(world) == tia
    ha = world["ha"]
    assert isinstance(ha, Proc)
    ok, value = run_as(None, bus, lambda b: call(b, "Disconnect"))
    assert ok, value
    try:
        ha.wait(f"deregistered (binding to {tia} removed)", timeout=10)
        deadline = time.monotonic() + 5  # the log line and the commit: one batch
        while stored_binding(world) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stored_binding(world) is None
    finally:
        t = time.time()
        ok, value = run_as(None, bus, lambda b: call(b, "Connect", "s", ["corp"]))
        assert ok, value
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)


# -- suspend and resume in mc -----------------------------------------------------------

def test_resume_in_mc_reprobes_keeps_mc_and_nothing_leaves_in_clear(
        lab: Lab, world: dict[str, object]) -> None:
    """logind's PrepareForSleep(false) (tests/fake_logind.py owning its name): the
    helper probes again; mc stays open (its SA, moved by MOBIKE if need be), the
    capture on pub holds nothing in clear."""
    from app.service.bus import Message, RequestNameReply
    from tests import fake_logind
    d = Path(str(world["dir"]))
    t = time.time()
    if props(world)["Mode"] != "mc":
        lab.move("pub")
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)
    mac = mac_of_mn()

    async def resume(bus):  # type: ignore[no-untyped-def]
        assert await bus.request_name(fake_logind.NAME) == RequestNameReply.PRIMARY_OWNER
        await bus.send(Message.new_signal("/org/freedesktop/login1",
                                          "org.freedesktop.login1.Manager",
                                          "PrepareForSleep", "b", [False]))
        return await call(bus, "GetHistory", "u", [1])

    with bridge_capture(d / "resume.pcap", "pub", f"ether host {mac}") as pcap:
        t = time.time()
        run_as(None, str(world["bus"]), resume)
        wait_history(world, t, "reprobe", timeout=20)
        wait_history(world, t, "direct-timeout", timeout=30)  # the probe's budget spent
    kinds = [(k, dt) for tm, k, dt in history(world, 100) if tm >= t]
    assert not [x for x in kinds if x[0] in ("mode", "error")], kinds
    assert not [x for x in kinds if x[0] == "gate" and x[1].get("blocked") == "true"], kinds
    assert props(world)["Mode"] == "mc"
    bad = leaks(pcap, lab_policy(mac))
    assert not bad, "\n".join(str(o) for o in bad[:10])


# -- the helper killed (SIGKILL) and started again ---------------------------------------

def helper_restart(world: dict[str, object]) -> None:
    """SIGKILL the helper (no clean-up of any kind) and start it again as systemd
    would (the state directory's profile, no --connect)."""
    old = world["helper"]
    assert isinstance(old, Proc)
    old.p.send_signal(signal.SIGKILL)
    old.p.wait(10)
    d = Path(str(world["dir"]))
    helper = Proc("tr-mn", sys.executable, "-m", "app.service.daemon",
                  "--profiles-dir", str(world["profiles"]), "--secrets",
                  str(d / "secrets.toml"), "--connect", "corp", "--links", "rtnetlink",
                  "--vici-socket", str(MN_VICI),
                  extra_env={"DBUS_SYSTEM_BUS_ADDRESS": str(world["bus"])})
    world["helper"] = dump_procs["helper"] = helper
    helper.wait("serving org.trustroam.Helper1", timeout=30)


def left_state() -> dict[str, list[str]]:
    """What a helper leaves in the MN's namespace: rules, routes, links, XFRM states
    and policies, nftables tables (sorted lines, so a leftover doubled shows)."""
    cmds = {"rules": ["ip", "-n", "tr-mn", "rule"],
            "routes": ["ip", "-n", "tr-mn", "-4", "route", "show", "table", "all"],
            "links": ["ip", "-n", "tr-mn", "-br", "link"],
            "xfrm-state": ["ip", "-n", "tr-mn", "xfrm", "state", "count"],
            "xfrm-policy": ["ip", "-n", "tr-mn", "xfrm", "policy", "count"],
            "nft": ["ip", "netns", "exec", "tr-mn", "nft", "list", "tables"]}
    out = {}
    for name, cmd in cmds.items():
        text = subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                              check=True).stdout
        # (cache and link-state columns change on their own: names only for links)
        lines = [ln.split()[0] if name == "links" else ln for ln in text.splitlines()]
        out[name] = sorted(ln for ln in lines if "cache" not in ln)
    return out


def ike_sas() -> list[str]:
    out = subprocess.run(["swanctl", "--list-sas", "--uri", f"unix://{MN_VICI}"],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return [line for line in out.splitlines() if line.startswith("trustroam")]


def test_helper_killed_in_mc_and_started_again_is_back_in_mc_with_nothing_in_clear(
        lab: Lab, world: dict[str, object]) -> None:
    d = Path(str(world["dir"]))
    t = time.time()
    if props(world)["Mode"] != "mc":
        lab.move("pub")
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)
    mac = mac_of_mn()
    before = left_state()
    with bridge_capture(d / "killed-mc.pcap", "pub", f"ether host {mac}") as pcap:
        t = time.time()
        helper_restart(world)
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=40)
    after = left_state()
    changed = {k: (sorted(set(before[k]) - set(after[k])), sorted(set(after[k]) - set(before[k])))
               for k in after if after[k] != before[k]}
    assert not changed, changed
    bad = leaks(pcap, lab_policy(mac))
    assert not bad, "\n".join(str(o) for o in bad[:10])
    assert len(ike_sas()) == 1, ike_sas()  # charon's SA adopted or replaced, not doubled


def test_helper_killed_in_c_and_started_again_is_back_in_c_with_nothing_from_the_home_address_in_clear(  # noqa: E501
        lab: Lab, world: dict[str, object]) -> None:
    from tests.lab.leaks import read_frames
    d = Path(str(world["dir"]))
    t = time.time()
    lab.move("t1")
    wait_history(world, t, "mode", {"mode": "c"}, timeout=30)
    mac = mac_of_mn()
    before = left_state()
    with bridge_capture(d / "killed-c.pcap", "t1", f"ether host {mac}") as pcap:
        t = time.time()
        helper_restart(world)
        wait_history(world, t, "mode", {"mode": "c"}, timeout=40)
    after = left_state()
    changed = {k: (sorted(set(before[k]) - set(after[k])), sorted(set(after[k]) - set(before[k])))
               for k in after if after[k] != before[k]}
    assert not changed, changed
    clear = [f.describe() for f in read_frames(pcap)
             if f["eth.type"] == "0x0800" and HOME in (f["ip.src"], f["ip.dst"])]
    assert not clear, clear[:10]
    assert ike_sas() == [], "no VPN left standing on a trusted network"


# -- the home agent down while in mc (last: it restarts the home agent with short lifetimes)

def test_ha_down_in_mc_keeps_the_vpn_says_the_ha_is_unreachable_once_the_binding_runs_out_and_mc_comes_back(  # noqa: E501
        lab: Lab, world: dict[str, object]) -> None:
    """The home agent grants 20 s here, so its silence shows in seconds: the renewal
    through the VPN goes unanswered, the binding runs out, the status says VPN up,
    home agent unreachable (the gate shut, the TIA kept), and mc comes back by
    itself once the home agent answers again; nothing in clear meanwhile."""
    bus = str(world["bus"])
    d = Path(str(world["dir"]))
    toml = d / "ha.toml"
    original = toml.read_text()

    def policy(name: str) -> None:
        ok, value = run_as(None, bus, lambda b: call(b, "SetPolicy", "s", [name]))
        assert ok, value

    t = time.time()
    lab.move("pub")
    wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)
    mac = mac_of_mn()
    try:
        toml.write_text(original.replace("[home_agent]\n", "[home_agent]\nmax_lifetime = 20\n"))
        ha_stop(world)
        ha_start(world)
        t = time.time()
        policy("never-vpn")  # a new registration through the VPN: 20 s granted
        policy("auto")
        wait_history(world, t, "registered", {"lifetime": "20"}, timeout=30)
        with bridge_capture(d / "ha-down-mc.pcap", "pub", f"ether host {mac}") as pcap:
            t = time.time()
            ha_stop(world)
            wait_history(world, t, "mode", {"state": "untrusted", "mode": "none",
                                            "reason": HA_UNREACHABLE}, timeout=40)
            p = props(world)
            assert p["TunnelInnerAddress"] != "" and p["Error"] == HA_UNREACHABLE, p
            assert "vpn-stop" not in [k for tm, k, _ in history(world, 100) if tm >= t]
            t = time.time()
            ha_start(world)
            wait_history(world, t, "mode", {"mode": "mc"}, timeout=40)
        bad = leaks(pcap, lab_policy(mac))
        assert not bad, "\n".join(str(o) for o in bad[:10])
    finally:
        toml.write_text(original)
        ha_stop(world)
        ha_start(world)
