"""The real helper (trustroamd) in the lab's MN namespace, on the lab's private system
bus with polkitd: modes across moves with a TCP session from the CN, the gate while
probing, the D-Bus contract, polkit refusals, and a canary secret."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.api import SECRET_AGENT_INTERFACE
from app.lab.configs import HA, HOME, PROFILE_TOML, write_helper_files
from app.lab.world import CHARON_DIR, STATE_DIR, LabState
from app.service.bus import Message, RequestNameReply
from tests import fake_logind
from tests.dbus_client import NOBODY, call, introspect, properties, run_as
from tests.haproc import env
from tests.lab.conftest import mn_address, ns_exec
from tests.lab.procs import TCP_CLIENT, TCP_ECHO_SERVER, Proc, capture, helper_world
from tests.secret_agent import SecretAgent

ROOT = Path(__file__).resolve().parents[2]
CANARY = "c4a9a7c4a9a7c4a9a7c4a9a7c4a9a7c4"  # never shared with the HA: it must deny

@pytest.fixture(scope="module")
def world(lab, tmp_path_factory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("helper")
    profiles, secrets = write_helper_files(d, "corp")
    (profiles / "canary.toml").write_text(PROFILE_TOML)
    with helper_world(lab.nm_bus(), d, profiles, secrets) as world:
        yield world


def ctl(world: dict[str, object], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.ctl", *args], capture_output=True,
                          text=True, timeout=30, check=False,
                          env={**env(), "DBUS_SYSTEM_BUS_ADDRESS": str(world["bus"])})


def status(world: dict[str, object]) -> dict[str, object]:
    out = ctl(world, "status", "--json")
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def mode_here() -> str:
    """The trusted mode the MN reaches on the link it is plugged into now."""
    net = LabState.load().mn_net or "home"
    return "h" if net == "home" else "f" if net.startswith("fa") else "c"


def wait_mode(world: dict[str, object], mode: str, timeout: float = 15) -> None:
    """Wait for the PropertiesChanged (as the monitor prints it) that enters ``mode``.

    Mode and State change in one signal; a move always passes through Mode=none.
    """
    monitor = world["monitor"]
    assert isinstance(monitor, Proc)
    while True:
        tokens = monitor.wait(f"Mode={mode}", timeout)[-1].split()
        if f"Mode={mode}" in tokens:
            break
    assert "State=probing" not in tokens and status(world)["State"] == "trusted", tokens


def test_modes_across_moves_with_a_tcp_session(lab, world):
    monitor = world["monitor"]
    assert isinstance(monitor, Proc)
    first = "".join(monitor.wait("trustroam: "))  # the monitor's opening status
    if "trusted, mode h" not in first:  # the lab starts the MN on the home link
        wait_mode(world, "h")
    server = Proc("tr-mn", sys.executable, "-c", TCP_ECHO_SERVER)
    stop = Path(str(world["dir"])) / "stop-tcp"
    client = None
    try:
        server.wait("LISTENING")
        client = Proc("tr-cn", sys.executable, "-c", TCP_CLIENT, str(stop))
        client.wait("CONNECTED")
        handovers = []
        for net, mode in (("t1", "c"), ("fa1", "f"), ("t2", "c"), ("home", "h")):
            lab.move(net)
            wait_mode(world, mode)
            st = status(world)
            assert st["Mode"] == mode and st["State"] == "trusted", st
            assert float(str(st["LastHandoverMs"])) > 0, st
            handovers.append(st["LastHandoverMs"])
            if mode == "f":
                assert st["CareOfAddress"] == "10.40.1.1", st
            # The same TCP session carries data again on the new path (TCP's own
            # retransmission backoff bounds how soon).
            before = len(client.out.seen)
            while len(client.out.seen) <= before + 1:  # lines that arrive after the move
                client.wait("ECHO", timeout=20)
        stop.touch()
        client.wait("TCP OK", timeout=20)
        assert client.p.wait(10) == 0
    finally:
        stop.touch()
        server.stop()
        if client is not None:
            client.stop()
    history = ctl(world, "history", "200").stdout
    for kind in ("link-up", "probe-sent", "probe-answered", "registered", "handover", "gate"):
        assert f" {kind} " in history, history
    # A person reads the state at a glance.
    text = ctl(world, "status").stdout
    assert "trusted, mode h (at home)" in text and "last handover" in text, text


def test_gate_drops_normal_traffic_while_probing(lab, world):
    # On the pub link's bridge: the MN's own port goes down while it is re-plugged.
    cap = capture("tr-sw", "br-pub", "udp port 9999 or udp port 434")
    try:
        lab.move("pub")  # the firewall drops direct requests from outside: no reply
        mn_address(prefix="203.0.113.")  # routable from here on: only the gate says no
        sender = ns_exec("tr-mn", sys.executable, "-c",
                         "import errno,socket,time\n"
                         "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                         "refused=0\n"
                         "for i in range(40):\n"
                         "    try: s.sendto(b'normal traffic',('10.20.1.99',9999))\n"
                         "    except PermissionError: refused+=1\n"
                         "    time.sleep(0.02)\n"
                         "print('REFUSED', refused)\n")
        # A netfilter drop of a local packet is EPERM for the sender: the gate said no.
        assert "REFUSED 40" in sender.stdout, sender.stdout + sender.stderr
        st = status(world)
        assert st["State"] in ("probing", "untrusted"), st
        cap.wait(f"> {HA}.434:")  # the probe left, straight to the home agent
    finally:
        cap.stop()
    lines = [ln for ln in cap.out.rest() if " IP " in ln]
    assert not [ln for ln in lines if ".9999:" in ln], lines  # nothing normal did
    counter = ns_exec("tr-mn", "nft", "list", "counter", "inet", "trustroam_gate", "blocked")
    packets = int(counter.stdout.split("packets")[1].split()[0])
    assert packets >= 1, counter.stdout
    monitor = world["monitor"]
    assert isinstance(monitor, Proc)
    monitor.wait("State=untrusted", timeout=15)
    # Untrusted: the gate stays shut until the VPN side (next issue) takes over.
    assert ns_exec("tr-mn", "nft", "list", "table", "inet", "trustroam_gate").returncode == 0
    lab.move("t1")
    wait_mode(world, "c")


def _normalise(xml_text: str) -> dict[str, object]:
    root = ET.fromstring(xml_text)
    iface = next(i for i in root.iter("interface") if i.get("name") == "org.trustroam.Helper1")
    out: dict[str, object] = {}
    for m in iface.findall("method"):
        out[f"method {m.get('name')}"] = [
            (a.get("direction", "in"), a.get("type"),
             a.get("name") if a.get("direction", "in") == "in" else None)
            for a in m.findall("arg")]
    for s in iface.findall("signal"):
        out[f"signal {s.get('name')}"] = [a.get("type") for a in s.findall("arg")]
    for p in iface.findall("property"):
        out[f"property {p.get('name')}"] = (p.get("type"), p.get("access"))
    return out


def test_live_service_matches_the_introspection_contract(world):
    live = run_as(None, str(world["bus"]), introspect)
    contract = (ROOT / "resources" / "dbus" / "org.trustroam.Helper1.xml").read_text()
    assert _normalise(live) == _normalise(contract)


async def _unprivileged(bus):
    results = {}
    results["read"] = await properties(bus)
    results["history"] = await call(bus, "GetHistory", "u", [5])
    for name, sig, body in (("Connect", "s", ["corp"]), ("Disconnect", "", []),
                            ("Reprobe", "", []), ("SetPolicy", "s", ["never-vpn"]),
                            ("SaveProfile", "s", ['name = "evil"']), ("ReleaseGate", "", []),
                            ("DeleteProfile", "s", ["canary"]), ("SetAllowLan", "b", [True])):
        results[name] = await call(bus, name, sig, body)
    return results


def test_unauthorised_caller_reads_but_cannot_change_anything(world):
    before = status(world)
    results = run_as(NOBODY, str(world["bus"]), _unprivileged)
    assert results["read"]["State"] == before["State"]
    assert results["history"][0]
    for name in ("Connect", "Disconnect", "Reprobe", "SetPolicy", "SaveProfile", "ReleaseGate",
                 "DeleteProfile", "SetAllowLan"):
        ok, text = results[name]
        assert not ok, (name, text)
        assert "org.trustroam.Error.NotAuthorized" in text, (name, text)
    assert status(world)["Policy"] == "auto"
    assert not (Path(str(world["profiles"])) / "evil.toml").exists()
    assert (Path(str(world["profiles"])) / "canary.toml").exists()
    # The same calls from root (polkit allows it) do work.
    assert ctl(world, "policy", "never-vpn").returncode == 0
    assert status(world)["Policy"] == "never-vpn"
    assert ctl(world, "policy", "auto").returncode == 0


def _canary_agent(bus):
    async def go(bus):
        agent = SecretAgent({"canary": {"mn_ha_key": f"hex:{CANARY}"},
                             "bad": {"mn_ha_key": f"hex:{CANARY}zz"}})
        bus.export("/org/trustroam/test/agent", agent)
        ok, body = await call(bus, "RegisterSecretAgent", "o", ["/org/trustroam/test/agent"])
        assert ok, body
        connect = await call(bus, "Connect", "s", ["canary"])

        for _ in range(200):  # until the probe times out (an event, polled over D-Bus)
            p = await properties(bus)
            if p["State"] == "untrusted":
                break
            await asyncio.sleep(0.05)
        history = await call(bus, "GetHistory", "u", [1000])
        return {"connect": connect, "props": p, "asked": agent.asked, "history": history}
    return go(bus)


def test_canary_secret_never_leaves_the_helper(world):
    result = run_as(None, str(world["bus"]), _canary_agent)
    assert result["asked"] == ["canary"]
    assert result["connect"][0], result["connect"]
    # The HA does not know the canary key: its 131 does not authenticate, so it is
    # discarded (RFC 5944 3.6.2.1 b) and the probe times out, with the hint.
    assert result["props"]["State"] == "untrusted", result["props"]
    assert "Mobile-Home authenticator" in result["props"]["Error"], result["props"]
    # Back to the real profile: the agent is gone, the secrets file answers.
    out = ctl(world, "connect", "corp")
    assert out.returncode == 0, out.stderr
    wait_mode(world, mode_here())
    helper, monitor = world["helper"], world["monitor"]
    assert isinstance(helper, Proc) and isinstance(monitor, Proc)
    seen = {"helper output": "".join(helper.out.seen),
            "signals (monitor)": "".join(monitor.out.seen),
            "properties and history": json.dumps(result, default=str)}
    for d in (Path(str(world["dir"])), STATE_DIR, CHARON_DIR):
        for f in d.rglob("*"):
            if f.is_file() and f.stat().st_size < 5_000_000:
                seen[str(f)] = f.read_bytes().decode(errors="replace")
    assert "connect" in seen["signals (monitor)"]
    for where, text in seen.items():
        assert CANARY not in text, f"canary secret leaked into {where}"
        assert CANARY.upper() not in text, f"canary secret leaked into {where}"
    assert SECRET_AGENT_INTERFACE  # the agent interface the tray implements


def test_bad_secret_is_refused_with_a_message_that_names_the_profile(world):
    async def go(bus):
        agent = SecretAgent({"canary": {"mn_ha_key": f"hex:{CANARY}zz"},
                             "corp": {"mn_ha_key": f"hex:{CANARY}zz"}})
        bus.export("/org/trustroam/test/agent2", agent)
        await call(bus, "RegisterSecretAgent", "o", ["/org/trustroam/test/agent2"])
        # No other source for canary: the agent's bad answer is the error.
        canary = await call(bus, "Connect", "s", ["canary"])
        # corp is in the secrets file: a bad answer means "try the next source".
        corp = await call(bus, "Connect", "s", ["corp"])
        return canary, corp, agent.asked
    (ok, text), corp, asked = run_as(None, str(world["bus"]), go)
    assert not ok
    assert "canary" in text and "not hex digits" in text, text
    assert "secrets file has no [canary]" in text, text
    assert CANARY not in text
    assert corp[0], corp
    assert asked == ["canary", "corp"]
    wait_mode(world, mode_here())  # the file's key, the right one: trusted again


def test_resume_from_suspend_reprobes_at_once(world):
    """logind's PrepareForSleep(false) on the system bus: the helper probes again.
    logind here is tests/fake_logind.py owning org.freedesktop.login1: the helper
    believes the signal only from that name's current owner."""
    async def go(bus):
        assert await bus.request_name(fake_logind.NAME) == RequestNameReply.PRIMARY_OWNER
        before = len((await call(bus, "GetHistory", "u", [1000]))[1][0])
        await bus.send(Message.new_signal("/org/freedesktop/login1",
                                          "org.freedesktop.login1.Manager",
                                          "PrepareForSleep", "b", [False]))
        for _ in range(100):  # the re-probe lands in the history (polled over D-Bus)
            entries = (await call(bus, "GetHistory", "u", [1000]))[1][0]
            kinds = [k for _, k, _ in entries[before:]]
            if "reprobe" in kinds and "handover" in kinds:
                return kinds
            await asyncio.sleep(0.05)
        return kinds
    kinds = run_as(None, str(world["bus"]), go)
    assert kinds[0] == "reprobe", kinds
    assert "probe-sent" in kinds and "handover" in kinds, kinds
    assert status(world)["State"] == "trusted"


def test_save_profile_validates_and_stores(world):
    bad = run_as(None, str(world["bus"]), lambda bus: call(
        bus, "SaveProfile", "s", ['name = "x"\nhome_address = "10.20.1.10"\nkey = "hex:00"']))
    assert not bad[0] and "secrets do not belong in a profile" in bad[1], bad
    good = run_as(None, str(world["bus"]), lambda bus: call(
        bus, "SaveProfile", "s", ['name = "saved"\n' + PROFILE_TOML]))
    assert good == (True, ["saved"]), good
    assert "saved" in ctl(world, "profiles").stdout.split()
    assert (Path(str(world["profiles"])) / "saved.toml").stat().st_mode & 0o777 == 0o644


def test_a_wrong_profile_value_is_named(world):
    out = ctl(world, "connect", "nope")
    assert out.returncode == 1 and "no profile 'nope'" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_trustroamctl_imports_edits_and_deletes_profiles_through_the_helper(world, tmp_path):
    """trustroamctl profile import/set/show/delete on the real helper: SaveProfile,
    GetProfile and DeleteProfile (issue 19), with polkit; mistakes in one line."""
    d = Path(str(world["profiles"]))
    f = tmp_path / "road.toml"
    f.write_text(PROFILE_TOML)
    out = ctl(world, "profile", "import", str(f))
    assert out.returncode == 0 and out.stdout == "saved road\n", out
    out = ctl(world, "profile", "set", "road", "lifetime=900", "probe.retries=3")
    assert out.returncode == 0, out
    stored = (d / "road.toml").read_text()
    assert "lifetime = 900" in stored.splitlines() and "retries = 3" in stored.splitlines()
    assert (d / "road.toml").stat().st_mode & 0o777 == 0o644
    assert ctl(world, "profile", "show", "road").stdout == stored  # what the helper stored
    out = ctl(world, "profile", "set", "road", "home_agent=10.9.9.9")
    assert out.returncode == 1 and "home_agent" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.splitlines()) == 1, out.stderr
    connected = status(world)["Profile"]
    out = ctl(world, "profile", "delete", str(connected))
    assert out.returncode == 1 and "is connected: disconnect it first" in out.stderr, out
    out = ctl(world, "profile", "delete", "road")
    assert out.returncode == 0 and not (d / "road.toml").exists(), out
    assert "road" not in ctl(world, "profile", "list").stdout.split()
    history = ctl(world, "history", "50").stdout
    assert " profile-saved " in history and " profile-deleted " in history, history


def test_connect_ask_answers_the_real_helper_from_the_terminal(world):
    """No agent and no secrets-file entry for canary: trustroamctl connect --ask is
    asked on its terminal (no echo); the canary key reaches the helper (the HA does
    not know it: untrusted, with the authenticator hint) and is seen nowhere."""
    from tests.ui.test_cli import Terminal

    term = Terminal({**env(), "DBUS_SYSTEM_BUS_ADDRESS": str(world["bus"])},
                    "connect", "canary", "--ask")
    term.until("Mobile-Home key (hex:...) for profile canary: ")
    term.type(CANARY)
    rc, screen = term.finish()
    assert rc == 0 and "connected canary" in screen, screen
    assert CANARY not in screen
    monitor = world["monitor"]
    assert isinstance(monitor, Proc)
    lines = monitor.wait("Profile=canary", timeout=30)
    if "Mobile-Home authenticator" not in lines[-1]:  # the HA's 131 is discarded
        monitor.wait("Mobile-Home authenticator", timeout=30)
    out = ctl(world, "connect", "corp")  # the file's key again: trusted
    assert out.returncode == 0, out.stderr
    wait_mode(world, mode_here())
    helper = world["helper"]
    assert isinstance(helper, Proc)
    seen = {"helper output": "".join(helper.out.seen),
            "signals (monitor)": "".join(monitor.out.seen),
            "history": ctl(world, "history", "1000").stdout}
    for where, text in seen.items():
        assert CANARY.lower() not in text.lower(), f"canary secret leaked into {where}"


def test_stop_puts_the_host_back(world):
    helper = world["helper"]
    assert isinstance(helper, Proc)
    helper.p.terminate()
    assert helper.p.wait(10) == 0
    rules = ns_exec("tr-mn", "ip", "rule").stdout
    assert "lookup 100" not in rules and "lookup 101" not in rules, rules
    assert ns_exec("tr-mn", "nft", "list", "table", "inet", "trustroam_gate").returncode != 0
    addrs = ns_exec("tr-mn", "ip", "-4", "addr").stdout
    assert HOME not in addrs, addrs
    assert os.path.exists("/proc/self")  # (the lab itself is torn down by its fixture)
