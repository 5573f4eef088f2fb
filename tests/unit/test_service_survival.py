"""What keeps the helper up and its choices kept, without a bus or namespaces
(issue 17): bounds on calls in flight per caller, the rate-limited log, the state
file across restarts, and resume signals believed only from logind's owner."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import pytest

from app.api import Policy
from app.net import sleep
from app.service import state
from app.service.bus import Message, MessageType
from app.service.limits import CallerLimits, InFlight, QuietLog
from app.service.state import HelperState, StateError


def test_in_flight_refuses_beyond_the_limit_and_forgets_idle_keys():
    f = InFlight(2)
    assert f.enter("a") and f.enter("a") and not f.enter("a")
    assert f.enter("b")
    f.leave("a")
    assert f.enter("a")
    for k in ("a", "a", "b"):
        f.leave(k)
    assert len(f) == 0


def test_caller_limits_take_both_slots_or_none():
    c = CallerLimits(per_name=4, per_uid=2)
    assert c.enter(":1.1", 1000) and c.enter(":1.2", 1000)
    assert not c.enter(":1.3", 1000)  # the uid's quota, over several connections
    assert c.names.held(":1.3") == 0  # the name's slot was given back
    assert c.enter(":1.4", 1001)  # another uid is not affected


def test_quiet_log_keeps_a_burst_then_counts_what_it_left_out(caplog):
    now = [0.0]
    q = QuietLog(logging.getLogger("t"), burst=3, interval=10, clock=lambda: now[0])
    caplog.set_level(logging.INFO)
    for i in range(100):
        q(logging.INFO, "refused %d", i)
    assert [r.getMessage() for r in caplog.records] == ["refused 0", "refused 1", "refused 2"]
    now[0] = 11
    q(logging.INFO, "refused %d", 100)
    assert [r.getMessage() for r in caplog.records][3:] == [
        "97 more such lines left out in the last 10 s", "refused 100"]


def test_state_round_trips_atomically_root_only(tmp_path):
    d = tmp_path / "state"
    assert state.load(d) == HelperState()  # none yet: the defaults
    state.save(d, HelperState(Policy.ALWAYS_VPN, "corp"))
    assert state.load(d) == HelperState(Policy.ALWAYS_VPN, "corp")
    assert (d / state.FILE).stat().st_mode & 0o777 == 0o600
    assert d.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in d.iterdir()] == [state.FILE]  # no temporary file left


@pytest.mark.parametrize(("doc", "field"), [
    ({"version": 1, "policy": "off"}, "policy:"),
    ({"version": 1, "profile": "../etc/x"}, "profile:"),
    ({"version": 1, "profile": 7}, "profile:"),
    ({"version": 2}, "version:"),
    ({"version": 1, "extra": 1}, "unknown key 'extra'"),
    ([1], "not a JSON object"),
])
def test_a_bad_state_file_is_refused_naming_the_file_and_field(tmp_path, doc, field):
    (tmp_path / state.FILE).write_text(json.dumps(doc))
    (tmp_path / state.FILE).chmod(0o600)
    with pytest.raises(StateError) as err:
        state.load(tmp_path)
    assert str(tmp_path / state.FILE) in str(err.value) and field in str(err.value)
    assert "\n" not in str(err.value)


def test_a_state_file_others_may_write_or_a_symlink_is_refused(tmp_path):
    (tmp_path / "real").write_text('{"version": 1, "policy": "never-vpn"}')
    (tmp_path / "real").chmod(0o666)
    os.symlink(tmp_path / "real", tmp_path / state.FILE)
    with pytest.raises(StateError, match="is a symbolic link"):
        state.load(tmp_path)
    (tmp_path / state.FILE).unlink()
    (tmp_path / "real").rename(tmp_path / state.FILE)
    with pytest.raises(StateError, match="writable by group or others"):
        state.load(tmp_path)
    (tmp_path / state.FILE).chmod(0o600)
    assert state.load(tmp_path).policy is Policy.NEVER_VPN
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / state.FILE).unlink()
    (tmp_path / "fifo").rename(tmp_path / state.FILE)
    with pytest.raises(StateError, match="not a regular file"):
        state.load(tmp_path)


class LogindBus:
    """Answers AddMatch and GetNameOwner (logind is ``owner``); records handlers."""

    def __init__(self, owner: str | None) -> None:
        self.owner = owner
        self.handlers: list = []
        self.calls: list[Message] = []
        self._method_return_handlers: dict = {}

    def add_message_handler(self, h):
        self.handlers.append(h)

    def remove_message_handler(self, h):
        self.handlers.remove(h)

    async def call(self, msg):
        self.calls.append(msg)
        if msg.member == "GetNameOwner":
            if self.owner is None:
                return Message(message_type=MessageType.ERROR, reply_serial=1,
                               error_name="org.freedesktop.DBus.Error.NameHasNoOwner",
                               signature="s", body=["none"])
            return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1,
                           signature="s", body=[self.owner])
        return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1)

    def deliver(self, msg):
        for h in list(self.handlers):
            h(msg)


def signal(sender, member="PrepareForSleep", body=None, path=sleep.LOGIN1_PATH,
           interface=sleep.LOGIN1_MANAGER, signature="b"):
    msg = Message.new_signal(path, interface, member, signature,
                             [False] if body is None else body)
    msg.sender = sender
    return msg


def owner_changed(new, sender="org.freedesktop.DBus"):
    return signal(sender, "NameOwnerChanged", ["org.freedesktop.login1", "", new],
                  "/org/freedesktop/DBus", "org.freedesktop.DBus", "sss")


async def test_prepare_for_sleep_is_believed_only_from_loginds_current_owner():
    bus = LogindBus(":1.5")
    resumed = []
    w = sleep.ResumeWatcher(bus, lambda: resumed.append(1), min_interval=0)
    await w.start()
    rules = [m.body[0] for m in bus.calls if m.member == "AddMatch"]
    assert all("sender='" in r for r in rules), rules
    bus.deliver(signal(":1.66"))  # nobody's forgery
    assert resumed == []
    bus.deliver(owner_changed(":1.66", sender=":1.66"))  # a forged owner change
    bus.deliver(signal(":1.66"))
    assert resumed == []
    bus.deliver(signal(":1.5"))  # logind
    assert resumed == [1]
    bus.deliver(owner_changed(":1.9"))  # logind restarted (the bus daemon says so)
    bus.deliver(signal(":1.5"))
    assert resumed == [1]
    bus.deliver(signal(":1.9"))
    assert resumed == [1, 1]
    bus.deliver(owner_changed(""))  # logind gone: nothing is believed
    bus.deliver(signal(":1.9"))
    assert resumed == [1, 1]
    w.close()


async def test_no_logind_at_start_means_no_resume_until_it_comes():
    bus = LogindBus(None)
    resumed = []
    w = sleep.ResumeWatcher(bus, lambda: resumed.append(1), min_interval=0)
    await w.start()
    bus.deliver(signal(":1.3"))
    assert resumed == []
    bus.deliver(owner_changed(":1.3"))
    bus.deliver(signal(":1.3"))
    assert resumed == [1]


async def test_resumes_are_rate_limited_and_the_last_one_is_not_lost():
    bus = LogindBus(":1.5")
    now = [100.0]
    resumed: list[float] = []
    second = asyncio.Event()

    def on_resume():
        resumed.append(now[0])
        if len(resumed) == 2:
            second.set()
    w = sleep.ResumeWatcher(bus, on_resume, min_interval=0.05, clock=lambda: now[0])
    await w.start()
    for _ in range(50):
        bus.deliver(signal(":1.5"))
    assert resumed == [100.0]  # one at once; one more is due at the interval's end
    now[0] = 100.05
    async with asyncio.timeout(5):  # a guard: the loop's timer sets it
        await second.wait()
    assert resumed == [100.0, 100.05]
    w.close()


class FakeGate:
    def __init__(self):
        self.decisions: list[object] = []
        self.removed = False

    async def decide(self, path):
        self.decisions.append(path)

    async def remove(self):
        self.removed = True


class FakeDriver:
    def __init__(self, gate):
        self.gate = gate
        self.profile = type("P", (), {"name": "corp"})()

    def set_policy(self, policy):
        pass


def a_helper(tmp_path, **kw):
    from app.net.mn_routes import Backend
    from app.service.helper import Helper
    from app.service.secrets import SecretSource
    helper = Helper(profiles_dir=None, extra_profiles=[], secrets=SecretSource(None, None),
                    backend=Backend.USERSPACE, state_dir=tmp_path / "state", **kw)
    gate = FakeGate()
    helper.driver = FakeDriver(gate)  # type: ignore[assignment]
    helper.gate = gate  # type: ignore[assignment]  # the helper owns it, not the driver
    return helper, gate


@pytest.mark.parametrize(("policy", "lockdown"), [("always-vpn", False), ("auto", True)])
async def test_a_users_disconnect_under_always_vpn_or_lockdown_leaves_the_gate_shut(
        tmp_path, policy, lockdown):
    helper, gate = a_helper(tmp_path, lockdown=lockdown)
    helper.set_policy(policy)
    await helper.disconnect()
    assert not gate.removed and gate.decisions == [None, None]  # shut before and after
    assert helper.held_gate is gate
    assert state.load(tmp_path / "state") == HelperState(Policy(policy), None)
    helper.set_policy("always-vpn")  # still always-vpn: stays
    await helper.release_held_gate()
    assert not gate.removed
    helper.set_policy("auto")  # a user's SetPolicy lifts always-vpn's, never lockdown's
    await helper.release_held_gate()
    assert gate.removed is not lockdown
    if lockdown:
        await helper.release_gate()  # ReleaseGate: the administrator's
        assert gate.removed
    assert helper.held_gate is None


async def test_release_gate_needs_a_held_gate_and_no_connected_profile(tmp_path):
    from app.service.helper import HelperError
    helper, gate = a_helper(tmp_path, lockdown=True)
    with pytest.raises(HelperError, match="a profile is connected"):
        await helper.release_gate()
    await helper.disconnect()
    await helper.release_gate()
    assert gate.removed
    with pytest.raises(HelperError, match="no gate is held"):
        await helper.release_gate()


async def test_a_disconnect_under_auto_removes_the_gate(tmp_path):
    helper, gate = a_helper(tmp_path)
    await helper.disconnect()
    assert gate.removed and helper.held_gate is None


async def test_the_clean_stop_under_lockdown_leaves_the_gate_shut(tmp_path):
    helper, gate = a_helper(tmp_path, lockdown=True)
    await helper.stop()
    assert not gate.removed and gate.decisions == [None, None]


def test_the_policy_and_profile_come_back_from_the_state(tmp_path):
    helper, _ = a_helper(tmp_path, initial=HelperState(Policy.ALWAYS_VPN, "corp"))
    assert helper.policy is Policy.ALWAYS_VPN and helper.last_profile == "corp"


async def test_an_agents_name_is_forgotten_only_on_the_bus_daemons_name_owner_changed():
    """daemon.watch_names_lost: a NameOwnerChanged forged by a client (any uid can
    send one, unicast to the helper) must not drop another user's agent."""
    from app.service.daemon import watch_names_lost
    bus = LogindBus(None)
    lost: list[str] = []
    await watch_names_lost(bus, lost.append)  # type: ignore[arg-type]
    [rule] = [m.body[0] for m in bus.calls if m.member == "AddMatch"]
    assert "sender='org.freedesktop.DBus'" in rule
    forged = signal(":1.66", "NameOwnerChanged", [":1.7", ":1.7", ""],
                    "/org/freedesktop/DBus", "org.freedesktop.DBus", "sss")
    bus.deliver(forged)
    assert lost == []
    real = signal("org.freedesktop.DBus", "NameOwnerChanged", [":1.7", ":1.7", ""],
                  "/org/freedesktop/DBus", "org.freedesktop.DBus", "sss")
    bus.deliver(real)
    assert lost == [":1.7"]


@pytest.mark.parametrize(("policy", "lockdown"), [("always-vpn", True), ("auto", True)])
async def test_a_gateless_profile_cannot_lift_an_administrators_block_for_a_user(
        tmp_path, policy, lockdown):
    """A user's Connect (org.trustroam.connect) of a profile with `gate = false` would
    remove the gate a Disconnect held under always-vpn or lockdown: refused, naming
    the profile; an administrator (configure) may."""
    from types import SimpleNamespace

    from app.service.helper import HelperError
    helper, gate = a_helper(tmp_path, lockdown=lockdown)
    helper.set_policy(policy)
    await helper.disconnect()
    assert helper.held_gate is gate
    helper.profile = lambda name: SimpleNamespace(name=name, gate_enabled=False)  # type: ignore
    assert helper.lifts_block("guest")
    with pytest.raises(HelperError, match=r"'guest' has no gate.*administrator"):
        await helper.connect("guest")
    assert not gate.removed and helper.held_gate is gate
    helper.profile = lambda name: SimpleNamespace(name=name, gate_enabled=True)  # type: ignore
    assert not helper.lifts_block("corp")  # a gated profile replaces the gate: a user may


def test_list_profiles_parses_a_file_again_only_when_it_changed(tmp_path, monkeypatch, caplog):
    """ListProfiles is open to every uid: a flood of it costs a stat per file, not a
    parse and a log line per file per call (the security review's event-loop stall)."""
    import os

    from app.lab.configs import PROFILE_TOML
    from app.net.mn_routes import Backend
    from app.service import profiles as profiles_mod
    from app.service.helper import Helper
    from app.service.secrets import SecretSource
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "corp.toml").write_text(PROFILE_TOML)
    (d / "bad.toml").write_text("home_address = 'nope'\n")
    parsed: list[str] = []
    real = profiles_mod.load_profile
    monkeypatch.setattr(profiles_mod, "load_profile",
                        lambda p: (parsed.append(p.name), real(p))[1])
    h = Helper(profiles_dir=d, extra_profiles=[], secrets=SecretSource(None, None),
               backend=Backend.USERSPACE)
    for _ in range(50):
        assert sorted(h.load_profiles()) == ["corp"]
    assert sorted(parsed) == ["bad.toml", "corp.toml"]
    assert sum("profile skipped" in r.message for r in caplog.records) == 1
    st = os.stat(d / "corp.toml")
    os.utime(d / "corp.toml", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert sorted(h.load_profiles()) == ["corp"]
    assert sorted(parsed) == ["bad.toml", "bad.toml", "corp.toml", "corp.toml"]


def test_a_state_file_reached_through_a_symlinked_directory_is_refused(tmp_path):
    """Read as every root-owned file is (app.config.read_regular_file): no symlink
    anywhere on the way, not only the last component."""
    state.save(tmp_path / "real", HelperState(Policy.NEVER_VPN, None))
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    with pytest.raises(StateError, match="through a symbolic link") as err:
        state.load(tmp_path / "linked")
    assert str(tmp_path / "linked" / state.FILE) in str(err.value)


def test_a_state_file_nested_too_deep_is_refused_with_a_message(tmp_path):
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    f = d / "state.json"
    f.write_text("[" * 4000)
    f.chmod(0o600)
    with pytest.raises(state.StateError, match="nested too deep"):
        state.load(d)


@pytest.mark.parametrize("lift", ["disconnect", "set-policy", "release-gate"])
async def test_a_start_up_gate_whose_connect_failed_is_held_and_can_be_lifted_without_lockdown(
        tmp_path, monkeypatch, lift):
    """Review finding 3: the start's connect failed (no agent with the key, a helper
    error) and no lockdown: the profile's start-up gate must not stay shut with
    nothing owning it."""
    from app.service import daemon
    from app.service import helper as helper_mod
    removed = []

    async def remove_table():
        removed.append(True)

    monkeypatch.setattr(helper_mod, "remove_table", remove_table)
    h, _ = a_helper(tmp_path)
    h.driver = h.gate = None
    daemon.hold_startup_gate(h, installed=True)
    assert h.held_gate is not None
    if lift == "disconnect":
        await h.disconnect()  # a user's Disconnect under auto: the host goes back
    elif lift == "set-policy":
        h.set_policy("auto")
        await h.release_held_gate()
    else:
        await h.release_gate()
    assert removed and h.held_gate is None


async def test_always_vpn_is_a_users_choice_a_gateless_profile_needs_configure_only_under_lockdown(
        tmp_path):
    """Review finding 11, one model: always-vpn is the user's (SetPolicy is
    org.trustroam.connect), so its held gate is the user's to replace, with a
    gateless profile too; only lockdown is the administrator's block."""
    from types import SimpleNamespace
    helper, gate = a_helper(tmp_path)
    helper.set_policy("always-vpn")
    await helper.disconnect()
    assert helper.held_gate is gate
    helper.profile = lambda name: SimpleNamespace(name=name, gate_enabled=False)  # type: ignore
    assert not helper.locked_down() and not helper.lifts_block("guest")
