"""Boot and restart (issue 19), the helper as installed: the lab's private system
bus with the distribution's system.conf, our D-Bus policy and real polkitd.

- a profile with ``autoconnect = true`` is connected at the helper's start, its
  key from the root-only secrets file, or, where that has none, from the first
  secret agent of a user polkit allows to connect;
- the policy a user chose (SetPolicy is org.trustroam.connect) and the connected
  profile come back after a restart;
- ``lockdown = true`` in the helper's configuration: the shut gate is loaded
  before anything else (``--lockdown-only``, the boot unit's command), stays
  shut across a restart with no profile (a probe: nothing leaves), is not the
  user's to lift, and goes only by the administrator's ReleaseGate.

The local user is uid 1 ("daemon").  polkitd decides allow_active from logind's
session files, which the lab cannot make (it has no logind), so a polkit rule,
added as an administrator would, grants that user org.trustroam.connect: what the
installed action gives the active local session.  Nothing grants it configure.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.api import ERROR_NOT_AUTHORIZED
from app.lab import polkit as lab_polkit
from app.lab.configs import MN_HA_KEY, PROFILE_TOML, ha_toml, write_helper_files
from app.lab.world import CHARON_DIR
from tests.dbus_client import call, hold_as, properties, run_as
from tests.lab.conftest import ns_exec
from tests.lab.procs import Proc
from tests.secret_agent import SecretAgent

USER = 1  # "daemon": a local user other than root and nobody
HA = "10.20.1.1"
AGENT_PATH = "/org/trustroam/test/agent"


def start_helper(bus: str, d: Path, *extra: str, secrets: Path | None = None) -> Proc:
    helper = Proc("tr-mn", sys.executable, "-m", "app.service.daemon", "--profiles-dir",
                  str(d / "profiles"), "--secrets", str(secrets or d / "secrets.toml"),
                  "--links", "rtnetlink", "--state-dir", str(d / "state"),
                  "--config", str(d / "trustroamd.toml"), *extra,
                  extra_env={"DBUS_SYSTEM_BUS_ADDRESS": bus})
    helper.wait("serving org.trustroam.Helper1")
    return helper


@pytest.fixture(scope="module")
def world(lab, tmp_path_factory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("helper-boot")
    (d / "ha.toml").write_text(ha_toml(d / "ha-state"))
    write_helper_files(d, "corp")
    bus = lab.nm_bus()
    rules = lab_polkit.rules_dir(CHARON_DIR / "nm") / "50-trustroam-lab-user.rules"
    rules.write_text('polkit.addRule(function(action, subject) {\n'
                     '  if (action.id == "org.trustroam.connect" && subject.user == "daemon")\n'
                     '    return polkit.Result.YES;\n});\n')
    rules.chmod(0o644)
    ha = Proc("tr-ha", sys.executable, "-m", "app.agents.ha_cli", "--config", str(d / "ha.toml"))
    w: dict[str, object] = {"bus": bus, "dir": d}
    try:
        ha.wait("serving registrations")
        yield w
    finally:
        helper = w.get("helper")
        if isinstance(helper, Proc):
            helper.stop()
        ns_exec("tr-mn", sys.executable, "-m", "app.ctl", "release-gate")
        rules.unlink(missing_ok=True)
        ha.stop()


def restart(world, *extra: str, secrets: Path | None = None) -> Proc:
    old = world.get("helper")
    if isinstance(old, Proc):
        old.stop()  # SIGTERM: the clean stop
    world["helper"] = None
    helper = start_helper(str(world["bus"]), Path(str(world["dir"])), *extra, secrets=secrets)
    world["helper"] = helper
    return helper


def as_root(world, fn):
    return run_as(None, str(world["bus"]), fn)


def as_user(world, fn):
    return run_as(USER, str(world["bus"]), fn)


async def until(bus, pred, timeout: float = 20) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        while True:
            p = await properties(bus)
            if pred(p):
                return p
            await asyncio.sleep(0.05)


def settled(world) -> dict[str, object]:
    return as_root(world, lambda bus: until(
        bus, lambda p: p["State"] in ("trusted", "untrusted", "error")))


async def user_call(bus, member: str, sig: str = "", body=None):
    """A user's call, once polkitd has read the lab's rule (it reloads on its own)."""
    async with asyncio.timeout(10):
        while True:
            ok, text = await call(bus, member, sig, body)
            if ok or "NotAuthorized" not in str(text) or member in ("ReleaseGate",):
                return ok, text
            await asyncio.sleep(0.1)


def gate_installed() -> bool:
    return "inet trustroam_gate" in ns_exec("tr-mn", "nft", "list", "tables").stdout


def something_leaves() -> bool:
    """The probe: an echo request to the home agent on the MN's link, and a UDP
    datagram to it, from root (a drop by the gate is EPERM for the sender)."""
    ping = ns_exec("tr-mn", "ping", "-n", "-c", "1", "-W", "1", HA)
    udp = ns_exec("tr-mn", sys.executable, "-c",
                  "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                  f"s.sendto(b'x', ('{HA}', 9))")
    return ping.returncode == 0 or udp.returncode == 0


def test_autoconnect_at_start_with_the_secrets_files_key(world, tmp_path):
    d = Path(str(world["dir"]))
    (d / "profiles" / "corp.toml").write_text("autoconnect = true\n" + PROFILE_TOML)
    (d / "state").mkdir(exist_ok=True)
    (d / "state" / "state.json").unlink(missing_ok=True)  # no last profile: autoconnect's
    try:
        helper = restart(world)  # no --connect, no --profile
        props = settled(world)
        assert (props["State"], props["Profile"]) == ("trusted", "corp"), props
        assert any("connect profile=corp" in ln for ln in helper.out.printed)
    finally:
        (d / "profiles" / "corp.toml").write_text(PROFILE_TOML)


def test_autoconnect_without_a_key_in_the_file_takes_the_first_allowed_users_agent(
        world, tmp_path):
    d = Path(str(world["dir"]))
    (d / "profiles" / "corp.toml").write_text("autoconnect = true\n" + PROFILE_TOML)
    (d / "state" / "state.json").unlink(missing_ok=True)
    empty = d / "empty-secrets.toml"
    empty.write_text("")
    empty.chmod(0o600)
    held = None
    try:
        restart(world, secrets=empty)
        props = as_root(world, properties)
        assert props["State"] == "offline" and gate_installed() and not something_leaves()

        async def register(bus):
            a = SecretAgent({"corp": {"mn_ha_key": "hex:" + MN_HA_KEY}})
            bus.export(AGENT_PATH, a)
            ok, body = await call(bus, "RegisterSecretAgent", "o", [AGENT_PATH])
            assert ok, body
            return lambda: list(a.asked)
        held = hold_as(USER, str(world["bus"]), register)
        props = as_root(world, lambda bus: until(bus, lambda p: p["State"] == "trusted"))
        assert props["Profile"] == "corp", props
    finally:
        asked = held.stop() if held is not None else None
        (d / "profiles" / "corp.toml").write_text(PROFILE_TOML)
    assert asked == ["corp"]


def test_a_users_policy_and_the_connected_profile_survive_a_restart(world):
    restart(world, "--connect", "corp")
    settled(world)
    ok, text = as_user(world, lambda bus: user_call(bus, "SetPolicy", "s", ["always-vpn"]))
    assert ok, text  # an ordinary user's action now
    restart(world)  # no --connect: the state's profile
    props = as_root(world, lambda bus: until(bus, lambda p: p["State"] == "trusted"))
    assert (props["Policy"], props["Profile"]) == ("always-vpn", "corp"), props
    ok, text = as_user(world, lambda bus: call(bus, "SetPolicy", "s", ["auto"]))
    assert ok, text


def test_lockdown_keeps_the_gate_shut_across_a_restart_with_no_profile_until_the_administrator(
        world):
    d = Path(str(world["dir"]))
    conf = d / "trustroamd.toml"
    old = world.get("helper")
    if isinstance(old, Proc):
        old.stop()
        world["helper"] = None
    ns_exec("tr-mn", sys.executable, "-m", "app.ctl", "release-gate")
    assert not gate_installed() and something_leaves()  # the probe can see a way out
    (d / "state" / "state.json").unlink(missing_ok=True)
    conf.write_text("lockdwon = true\n")  # an administrator's typo: fail closed
    conf.chmod(0o644)
    try:
        boot = ns_exec("tr-mn", sys.executable, "-m", "app.service.daemon", "--config",
                       str(conf), "--lockdown-only")
        assert boot.returncode == 2 and "lockdwon: is not a known setting" in boot.stderr, boot
        assert gate_installed() and not something_leaves()
        ns_exec("tr-mn", sys.executable, "-m", "app.ctl", "release-gate")
        conf.write_text("lockdown = true\n")
        # At boot: the oneshot unit's command, before any network and without D-Bus.
        boot = ns_exec("tr-mn", sys.executable, "-m", "app.service.daemon", "--config",
                       str(conf), "--lockdown-only")
        assert boot.returncode == 0 and "the gate is installed and shut" in boot.stdout, boot
        assert gate_installed() and not something_leaves()
        world["helper"] = start_helper(str(world["bus"]), d)  # no profile: adopts it
        assert gate_installed() and not something_leaves()
        restart(world)  # a clean stop under lockdown leaves it; the next start adopts it
        assert gate_installed() and not something_leaves()
        props = as_root(world, properties)
        assert props["Profile"] == "" and props["State"] == "offline", props

        async def user_tries(bus):
            return (await user_call(bus, "SetPolicy", "s", ["never-vpn"]),
                    await call(bus, "ReleaseGate"))
        policy, release = as_user(world, user_tries)
        assert policy[0], policy  # the user may choose the policy...
        assert not release[0] and ERROR_NOT_AUTHORIZED in release[1], release
        assert gate_installed() and not something_leaves()  # ...not lift lockdown
        released = ns_exec("tr-mn", "env", f"DBUS_SYSTEM_BUS_ADDRESS={world['bus']}",
                           sys.executable, "-m", "app.ctl", "release")  # root: the admin
        assert released.returncode == 0 and "gate released" in released.stdout, released
        assert not gate_installed() and something_leaves()
        # Lockdown again at the next start; a profile connecting replaces its gate.
        restart(world)
        assert gate_installed() and not something_leaves()
        ok, text = as_user(world, lambda bus: user_call(bus, "Connect", "s", ["corp"]))
        assert ok, text
        props = as_root(world, lambda bus: until(bus, lambda p: p["State"] == "trusted"))
        assert props["Profile"] == "corp" and something_leaves(), props  # its proven path
    finally:
        conf.unlink(missing_ok=True)
        helper = world.get("helper")
        if isinstance(helper, Proc):
            helper.stop()
        world["helper"] = None
        ns_exec("tr-mn", sys.executable, "-m", "app.ctl", "release-gate")
