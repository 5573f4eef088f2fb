"""Issue 19, "a normal user, as installed" and "boot and restart", without a bus:
which polkit action each method asks for, the tray's interactive flag, the
``autoconnect`` profile key, the helper's ``lockdown`` configuration, and the
start's connect that waits for a user's secret agent."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from app.api import ACTION_CONFIGURE, ACTION_CONNECT
from app.config import ConfigError
from app.mn import profile as schema
from app.net.mn_routes import Backend
from app.service.bus import DBusError, Message, MessageFlag, MessageType
from app.service.dbus_api import CALLER, HelperInterface
from app.service.helper import Helper
from app.service.lockdown import HelperConfig, load_config
from app.service.secrets import Peer, SecretSource

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ('name = "corp"\nhome_address = "10.20.1.10"\nhome_network = "10.20.1.0/24"\n'
           'home_agent = "10.20.1.1"\nspi = 256\n')


class Recorder:
    """polkit as the helper sees it: records (action, interactive), says no."""

    bus = None

    def __init__(self) -> None:
        self.asked: list[tuple[str, bool]] = []

    async def uid_of(self, sender: str) -> int:
        return 1000

    async def check(self, sender: str, action: str, *, interactive: bool = False,
                    uid: int | None = None) -> tuple[bool, str]:
        self.asked.append((action, interactive))
        return False, f"not authorised for {action}"


def a_face() -> tuple[HelperInterface, Recorder]:
    helper = Helper(profiles_dir=None, extra_profiles=[], secrets=SecretSource(None, None),
                    backend=Backend.USERSPACE)
    auth = Recorder()
    return HelperInterface(helper, auth), auth  # type: ignore[arg-type]


async def asked_for(member: str, *args: Any) -> str:
    face, auth = a_face()
    msg = Message(destination="org.trustroam.Helper1", path="/org/trustroam/Helper1",
                  interface="org.trustroam.Helper1", member=member, serial=3)
    msg.sender = ":1.42"
    token = CALLER.set(msg)
    try:
        with pytest.raises(DBusError):
            await getattr(HelperInterface, member).__wrapped__(face, *args)
    finally:
        CALLER.reset(token)
    assert len(auth.asked) == 1, auth.asked
    return auth.asked[0][0]


@pytest.mark.parametrize(("member", "args", "action"), [
    ("SetPolicy", ["always-vpn"], ACTION_CONNECT),
    ("Connect", ["corp"], ACTION_CONNECT),
    ("SaveProfile", [PROFILE], ACTION_CONFIGURE),
    ("ReleaseGate", [], ACTION_CONFIGURE),
])
async def test_set_policy_is_a_users_action_save_profile_and_release_the_administrators(
        member, args, action):
    assert await asked_for(member, *args) == action


def test_the_installed_actions_let_the_active_user_connect_and_choose_the_policy():
    """connect: the active local session, no password (NetworkManager's
    network-control); configure: the administrator's password."""
    tree = ET.parse(ROOT / "packaging" / "polkit" / "org.trustroam.policy")
    defaults = {a.get("id"): {d.tag: d.text for d in a.find("defaults")}  # type: ignore[union-attr]
                for a in tree.getroot().iter("action")}
    assert defaults[ACTION_CONNECT] == {"allow_any": "no", "allow_inactive": "no",
                                        "allow_active": "yes"}
    assert all(v.startswith("auth_admin") for v in defaults[ACTION_CONFIGURE].values())


class CallRecorder:
    """The tray's bus: records what is sent, answers every call with an empty return."""

    def __init__(self) -> None:
        self.sent: list[Message] = []

    async def call(self, msg: Message) -> Message:
        self.sent.append(msg)
        body: list[Any] = [[]] if msg.member == "ListProfiles" else (
            ["corp"] if msg.member == "SaveProfile" else [])
        sig = {"ListProfiles": "as", "SaveProfile": "s"}.get(msg.member or "", "")
        return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1,
                       signature=sig, body=body)


async def test_the_tray_allows_interactive_authorisation_on_every_call_polkit_decides():
    """Without the flag polkit may only answer "authentication is required": the
    desktop's agent never prompts for SaveProfile (issue 19)."""
    from ui.helper_client import HelperClient

    bus = CallRecorder()
    client = HelperClient(bus, on_snapshot=lambda s: None,  # type: ignore[arg-type]
                          on_event=lambda e: None)
    await client.connect("corp")
    await client.disconnect()
    await client.reprobe()
    await client.set_policy("auto")
    await client.save_profile(PROFILE)
    await client.list_profiles()
    flag = MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
    interactive = {m.member: bool(m.flags & flag) for m in bus.sent}
    assert interactive == {"Connect": True, "Disconnect": True, "Reprobe": True,
                           "SetPolicy": True, "SaveProfile": True, "ListProfiles": False}


def test_autoconnect_is_a_validated_profile_key_that_round_trips():
    p = schema.loads(PROFILE + "autoconnect = true\n")
    assert p.autoconnect and schema.loads(schema.dumps(p)) == p
    assert not schema.loads(PROFILE).autoconnect
    with pytest.raises(ConfigError, match=r"^x: autoconnect: must be true or false, got "):
        schema.loads(PROFILE + 'autoconnect = "yes"\n', "x")


def test_the_helpers_lockdown_setting_is_validated_naming_the_key(tmp_path):
    conf = tmp_path / "trustroamd.toml"
    assert load_config(conf) == HelperConfig(lockdown=False)  # no file: the defaults
    conf.write_text("lockdown = true\n")
    conf.chmod(0o644)
    assert load_config(conf) == HelperConfig(lockdown=True)
    conf.write_text("lockdown = 1\n")
    with pytest.raises(ConfigError, match=r"trustroamd.toml: lockdown: must be true or false"):
        load_config(conf)
    conf.write_text("lockdwon = true\n")
    with pytest.raises(ConfigError, match=r"lockdwon: is not a known setting"):
        load_config(conf)
    conf.write_text("lockdown = true\n")
    conf.chmod(0o666)
    with pytest.raises(ConfigError, match=r"trustroamd\.toml: is writable by group or others"):
        load_config(conf)  # others may write it: not believed


async def test_the_starts_connect_waits_for_the_first_agent_of_a_user_allowed_to_connect():
    """The secrets file had no key: the first registered agent's user, if polkit
    allows it org.trustroam.connect (without a prompt), gives it; refused, nothing
    is connected and the start's profile waits for the next one."""
    face, auth = a_face()
    connected: list[tuple[str, Peer]] = []

    async def connect(name: str, requester: Peer | None = None) -> None:
        assert requester is not None
        connected.append((name, requester))

    face.helper.connect = connect  # type: ignore[method-assign]
    face.helper.pending_start = "corp"
    peer = Peer(":1.50", 1000, 4242)
    await face._connect_pending(peer)
    assert connected == [] and face.helper.pending_start == "corp"
    assert auth.asked == [(ACTION_CONNECT, False)]

    async def yes(sender: str, action: str, **kw: Any) -> tuple[bool, str]:
        return True, ""
    auth.check = yes  # type: ignore[method-assign]
    await face._connect_pending(peer)
    assert connected == [("corp", peer)] and face.helper.pending_start is None
    await face._connect_pending(peer)  # once only
    assert len(connected) == 1
    await asyncio.sleep(0)


def test_the_profile_editor_writes_and_imports_autoconnect():
    """The tray's editor knows the key: a profile that says it imports (not "not a
    known setting"), and what the editor writes is what the helper parses."""
    from ui import profile_model as pm

    values = pm.from_toml(PROFILE + "autoconnect = true\n", "corp.toml")
    assert values["autoconnect"] == "true"
    values["name"] = "corp"
    assert pm.validate(values) == {}
    assert schema.loads(pm.to_toml(values)).autoconnect
    assert not schema.loads(pm.to_toml({**values, "autoconnect": "false"})).autoconnect


def test_the_start_connects_the_first_autoconnect_profile_by_name(tmp_path, caplog):
    from app.service.daemon import _autoconnect, parse_args

    for name, auto in (("b", True), ("a", False), ("c", True)):
        (tmp_path / f"{name}.toml").write_text(
            PROFILE.replace('name = "corp"\n', "") + ("autoconnect = true\n" if auto else ""))
    args = parse_args(["--profiles-dir", str(tmp_path)])
    assert _autoconnect(args) == "b"
    assert "several profiles say autoconnect = true (b, c): connecting b" in caplog.text
    (tmp_path / "b.toml").unlink()
    (tmp_path / "c.toml").unlink()
    assert _autoconnect(args) is None


async def test_an_agent_registered_while_the_starts_connect_ran_is_tried_after_it():
    """A tray registers its agent as soon as the helper's name appears, while the
    start's connect is still asking the secrets file: that agent is not missed."""
    face, auth = a_face()
    connected: list[str] = []

    async def connect(name: str, requester: Peer | None = None) -> None:
        connected.append(f"{name} {requester.uid if requester else None}")

    async def yes_for_1000(sender: str, action: str, **kw: Any) -> tuple[bool, str]:
        return kw.get("uid") == 1000, "not this one"

    face.helper.connect = connect  # type: ignore[method-assign]
    auth.check = yes_for_1000  # type: ignore[method-assign]
    face.helper.secrets.register_agent(Peer(":1.7", 1001, 7), "/a")
    face.helper.secrets.register_agent(Peer(":1.8", 1000, 8), "/a")
    face.helper.pending_start = "corp"
    await face.connect_pending_with_registered()
    assert connected == ["corp 1000"] and face.helper.pending_start is None


def test_every_method_polkit_decides_is_sent_interactive_by_the_tray_and_trustroamctl():
    """A method added to the helper with a polkit check and forgotten in the callers'
    lists would answer a desktop user "authentication is required" with no prompt."""
    import inspect
    import re

    from app import ctl
    from app.service.dbus_api import HelperInterface
    from ui.helper_client import ASKS_POLKIT

    # The D-Bus methods (decorated, so read from the source): each one's own body.
    bodies = re.split(r"\n    @method\(\)\n", inspect.getsource(HelperInterface))[1:]
    decided = {re.search(r"def (\w+)\(", b).group(1) for b in bodies  # type: ignore[union-attr]
               if "_authorize(" in b.split("\n    def ", 1)[0].split("\n    async def ", 1)[0]}
    assert {"Connect", "SaveProfile", "SetAllowLan"} <= decided  # the scan sees them
    assert decided <= ASKS_POLKIT, decided - ASKS_POLKIT
    # trustroamctl has no "allow LAN" nor sign-in (the window sets the flag itself).
    assert decided - {"SetAllowLan", "OpenSignIn", "CloseSignIn"} <= ctl.AUTHORIZED, (
        decided - ctl.AUTHORIZED)


def test_the_profile_editor_writes_and_imports_dns_and_allow_lan():
    """A profile with ``[dns]`` and ``allow_lan`` imports into the tray's editor (not
    "not a known setting") and what the editor writes is what the helper parses."""
    from ipaddress import IPv4Address

    from ui import profile_model as pm

    text = PROFILE + "[features]\nallow_lan = true\n"
    text += '[dns]\nservers = ["10.0.0.1", "10.0.0.2"]\ndomains = ["corp.example"]\n'
    assert schema.loads(text).allow_lan  # the text itself is a valid profile
    values = pm.from_toml(text, "corp.toml")
    values["name"] = "corp"
    assert pm.validate(values) == {}
    p = schema.loads(pm.to_toml(values))
    assert p.allow_lan
    assert p.dns.servers == (IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2"))
    assert p.dns.domains == ("corp.example",)
    emptied = {**values, "dns.servers": "", "dns.domains": ""}
    assert schema.loads(pm.to_toml(emptied)).dns is None  # no [dns] table at all


def test_a_corrupt_state_file_is_ignored_naming_it_and_lockdown_falls_back_to_always_vpn(
        tmp_path, caplog):
    """Review finding 10: a state.json that cannot be believed no longer keeps the
    helper down (exit, restart, exit...): ignored with a warning naming it; under
    lockdown the fallback is always-vpn (closed but usable)."""
    import logging

    from app.api import Policy
    from app.service import daemon
    from app.service.state import FILE, HelperState
    caplog.set_level(logging.WARNING)
    (tmp_path / FILE).write_text("{not json")
    (tmp_path / FILE).chmod(0o600)
    assert daemon.kept_state(tmp_path, lockdown=False) == HelperState()
    assert daemon.kept_state(tmp_path, lockdown=True) == HelperState(Policy.ALWAYS_VPN, None)
    assert f"{tmp_path / FILE}" in caplog.text and "ignored" in caplog.text
    assert daemon.kept_state(None, lockdown=True) == HelperState()
