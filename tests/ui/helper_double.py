# ruff: noqa: F821, F722
# No `from __future__ import annotations`: dbus-fast reads D-Bus signatures from
# the string annotations below.
"""A test double of org.trustroam.Helper1 (resources/dbus/org.trustroam.Helper1.xml).

Run as its own process on a private system bus (``python3 -m tests.ui.helper_double``);
prints ``ready`` once it owns the name.  Tests steer it through
``org.trustroam.Test1`` at ``/org/trustroam/Test``: set any property (it emits
PropertiesChanged exactly as the helper does, only for values that changed),
emit Event signals, read the calls it received, make it ask the registered secret
agent, and make a method fail.
"""

import asyncio
import json
import sys
import time
import tomllib

from dbus_fast.constants import BusType, MessageType, PropertyAccess
from dbus_fast.errors import DBusError
from dbus_fast.message import Message
from dbus_fast.service import ServiceInterface, dbus_property, method, signal

from app import __version__
from app.api import (
    BUS_NAME,
    ERROR_FAILED,
    ERROR_INVALID,
    INTERFACE,
    OBJECT_PATH,
    SECRET_AGENT_INTERFACE,
    SECRET_MN_HA_KEY,
    Mode,
    Policy,
    Probe,
    Snapshot,
    State,
)
from app.dbus import MessageBus  # EAGAIN waits (app/dbus.py): a burst must not drop the bus

TEST_INTERFACE = "org.trustroam.Test1"
NAME_GONE = ("org.freedesktop.DBus.Error.ServiceUnknown",
             "org.freedesktop.DBus.Error.NameHasNoOwner")
TEST_PATH = "/org/trustroam/Test"


VPN_SECRET_FOR_AUTH = {"psk": "vpn_psk", "eap-mschapv2": "vpn_password",
                       "pubkey": "vpn_key_passphrase"}


def vpn_secret_keys(profile_toml):
    """What the helper asks with the MN-HA key for a profile with a [vpn] table (its
    auth's secret; app/vpn/profile.py)."""
    try:
        vpn = tomllib.loads(profile_toml).get("vpn")
    except tomllib.TOMLDecodeError:
        return []
    if not isinstance(vpn, dict):
        return []
    return [VPN_SECRET_FOR_AUTH.get(vpn.get("auth", "psk"), "vpn_psk")]


class Double(ServiceInterface):
    def __init__(self, bus):
        super().__init__(INTERFACE)
        self.bus = bus
        self.snap = Snapshot()
        self._last = self.snap.to_dbus()
        self.calls = []
        self.pages_asked = 0
        """GetHistoryPage calls (not in ``calls``: tests compare those whole)."""
        self.history = []
        self.profiles = {"corp": 'name = "corp"\n', "lab": 'name = "lab"\n'}
        self.agents = []
        self.fail = {}
        self.last_secrets_keys = []
        self.secrets_asked = []
        self.allow_lan = False

    def apply(self, **changes):
        fields = {}
        kinds = {"home_agent_probe": lambda v: Probe(*v), "vpn_probe": lambda v: Probe(*v),
                 "state": State, "mode": Mode, "policy": Policy}
        for k, v in changes.items():
            fields[k] = kinds[k](v) if k in kinds else v
        from dataclasses import replace

        self.snap = replace(self.snap, **fields)
        new = self.snap.to_dbus()
        changed = {k: v for k, v in new.items() if self._last.get(k) != v}
        self._last = new
        if changed:
            self.emit_properties_changed(changed)

    def event(self, kind, details):
        now = time.time()
        self.history.append((now, kind, dict(details)))
        self.Event(kind, {"time": f"{now:.3f}", **details})

    def _check(self, member):
        self.calls.append(member)
        msg = self.fail.get(member.split(" ")[0])
        if msg:
            raise DBusError(ERROR_FAILED, msg)

    async def ask_agent(self, profile, keys):
        """As the helper does: the agents in the order they registered, each for
        the keys the earlier ones did not give."""
        got = {}
        for sender, path in list(self.agents):
            missing = [k for k in keys if not got.get(k)]
            if not missing:
                break
            reply = await self.bus.call(Message(destination=sender, path=path,
                                                interface=SECRET_AGENT_INTERFACE,
                                                member="GetSecrets", signature="sas",
                                                body=[profile, missing]))
            if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
                if reply is not None and reply.error_name in NAME_GONE:  # as the helper
                    self.agents = [a for a in self.agents if a[0] != sender]
                continue
            got.update({k: v for k, v in reply.body[0].items() if k in missing and v})
        return got

    @method()
    async def Connect(self, profile: "s"):
        self._check(f"Connect {profile}")
        if profile not in self.profiles:
            raise DBusError(ERROR_FAILED, f"no profile {profile!r}")
        self.apply(profile=profile, state="probing", mode="none")
        keys = [SECRET_MN_HA_KEY, *vpn_secret_keys(self.profiles[profile])]
        self.secrets_asked = keys
        got = await self.ask_agent(profile, keys)
        self.last_secrets_keys = sorted(got)
        if not got.get(SECRET_MN_HA_KEY):
            self.apply(state="error", error=f"no key for profile {profile!r}")
            raise DBusError(ERROR_FAILED, f"no key for profile {profile!r}")
        self.apply(state="trusted", mode="h", home_address="10.20.1.10", error="")
        self.event("connect", {"profile": profile})

    @method()
    def Disconnect(self):
        self._check("Disconnect")
        self.apply(state="offline", mode="none", profile="", care_of_address="",
                   binding_expires=0.0)

    @method()
    def Reprobe(self):
        self._check("Reprobe")
        self.event("reprobe", {})

    def _lan(self):
        return [self.allow_lan, "192.168.1.0/24 on eth0" if self.allow_lan else
                "not allowed on this network"]

    @method()
    def GetAllowLan(self) -> "(bs)":
        return self._lan()

    @method()
    def SetAllowLan(self, allow: "b") -> "(bs)":
        self._check(f"SetAllowLan {allow}")
        self.allow_lan = bool(allow)
        return self._lan()

    @method()
    def SetPolicy(self, policy: "s"):
        self._check(f"SetPolicy {policy}")
        try:
            self.apply(policy=policy)
        except ValueError:
            raise DBusError(ERROR_INVALID, f"unknown policy {policy!r}") from None
        self.event("policy", {"policy": policy})

    @method()
    def ReleaseGate(self):
        self._check("ReleaseGate")
        self.event("gate-released", {"by": "administrator"})

    @method()
    def GetHistory(self, n: "u") -> "a(dsa{ss})":
        return [[t, k, d] for t, k, d in self.history[-n:]] if n else []

    @method()
    def GetHistoryPage(self, offset: "u", n: "u") -> "ta(dsa{ss})":
        # The helper's rules (app/service/dbus_api.py history_page); the double
        # keeps every entry, so the count recorded is its history's length.
        if n == 0:
            raise DBusError(ERROR_INVALID, "n: a page holds at least 1 entry")
        if offset > 1000:
            raise DBusError(ERROR_INVALID, f"offset: {offset} is past the 1000 entries "
                            "the helper keeps")
        self.pages_asked += 1
        end = len(self.history) - offset
        rows = self.history[max(0, end - min(n, 1000)):end] if end > 0 else []
        return [len(self.history), [[t, k, d] for t, k, d in rows]]

    @method()
    def ListProfiles(self) -> "as":
        return sorted(self.profiles)

    @method()
    def SaveProfile(self, toml: "s") -> "s":
        self._check("SaveProfile")
        self.calls.append("SaveProfile-text " + toml)
        try:
            doc = tomllib.loads(toml)
        except tomllib.TOMLDecodeError as exc:
            raise DBusError(ERROR_INVALID, f"SaveProfile: not valid TOML: {exc}") from None
        name = doc.get("name")
        if not isinstance(name, str) or not name:
            raise DBusError(ERROR_INVALID, "SaveProfile: name: is required")
        self.profiles[name] = toml
        self.event("profile-saved", {"profile": name})
        return name

    @method()
    def GetProfile(self, name: "s") -> "s":
        self._check(f"GetProfile {name}")
        if name not in self.profiles:
            raise DBusError(ERROR_INVALID, f"no profile {name!r}")
        return self.profiles[name]

    @method()
    def DeleteProfile(self, name: "s"):
        self._check(f"DeleteProfile {name}")
        if name not in self.profiles:
            raise DBusError(ERROR_INVALID, f"no profile {name!r}")
        if name == self.snap.profile:
            raise DBusError(ERROR_INVALID, f"profile {name!r} is connected: disconnect it "
                            "first")
        del self.profiles[name]
        self.event("profile-deleted", {"profile": name})

    @method()
    def OpenSignIn(self) -> "sd":
        self._check("OpenSignIn")
        return [self.snap.captive_portal, 300.0]

    @method()
    def CloseSignIn(self):
        self._check("CloseSignIn")

    @method()
    def RegisterSecretAgent(self, path: "o"):
        self.calls.append(f"RegisterSecretAgent {path}")
        # One per connection (registering again replaces it), as the helper keeps them.
        self.agents = [(s, p) for s, p in self.agents if s != self._sender]
        self.agents.append((self._sender, path))

    @signal()
    def Event(self, kind, details) -> "sa{ss}":
        return [kind, details]

    def _p(self, name):
        return self._last[name]

    @dbus_property(access=PropertyAccess.READ)
    def Version(self) -> "s":
        return __version__  # app/__init__.py: the packages' and --version's too

    @dbus_property(access=PropertyAccess.READ)
    def State(self) -> "s":
        return self._p("State")

    @dbus_property(access=PropertyAccess.READ)
    def Mode(self) -> "s":
        return self._p("Mode")

    @dbus_property(access=PropertyAccess.READ)
    def Profile(self) -> "s":
        return self._p("Profile")

    @dbus_property(access=PropertyAccess.READ)
    def Interface(self) -> "s":
        return self._p("Interface")

    @dbus_property(access=PropertyAccess.READ)
    def HomeAddress(self) -> "s":
        return self._p("HomeAddress")

    @dbus_property(access=PropertyAccess.READ)
    def CareOfAddress(self) -> "s":
        return self._p("CareOfAddress")

    @dbus_property(access=PropertyAccess.READ)
    def TunnelInnerAddress(self) -> "s":
        return self._p("TunnelInnerAddress")

    @dbus_property(access=PropertyAccess.READ)
    def HomeAgentProbe(self) -> "(bdd)":
        return self._p("HomeAgentProbe")

    @dbus_property(access=PropertyAccess.READ)
    def VpnProbe(self) -> "(bdd)":
        return self._p("VpnProbe")

    @dbus_property(access=PropertyAccess.READ)
    def VpnGateway(self) -> "s":
        return self._p("VpnGateway")

    @dbus_property(access=PropertyAccess.READ)
    def NatDetected(self) -> "b":
        return self._p("NatDetected")

    @dbus_property(access=PropertyAccess.READ)
    def NatLayers(self) -> "as":
        return self._p("NatLayers")

    @dbus_property(access=PropertyAccess.READ)
    def BindingExpires(self) -> "d":
        return self._p("BindingExpires")

    @dbus_property(access=PropertyAccess.READ)
    def LastHandoverMs(self) -> "d":
        return self._p("LastHandoverMs")

    @dbus_property(access=PropertyAccess.READ)
    def Error(self) -> "s":
        return self._p("Error")

    @dbus_property(access=PropertyAccess.READ)
    def Policy(self) -> "s":
        return self._p("Policy")

    @dbus_property(access=PropertyAccess.READ)
    def CaptivePortal(self) -> "s":
        return self._p("CaptivePortal")


class Control(ServiceInterface):
    def __init__(self, double):
        super().__init__(TEST_INTERFACE)
        self.d = double

    @method()
    def Set(self, changes_json: "s"):
        self.d.apply(**json.loads(changes_json))

    @method()
    def Emit(self, kind: "s", details: "a{ss}"):
        self.d.event(kind, details)

    @method()
    def ProbeBurst(self, n: "u", start: "d", step: "d"):
        """n answered probes (both HA and VPN), one PropertiesChanged each: history
        for the benchmark's plot."""
        for i in range(n):
            t = start + i * step
            self.d.apply(home_agent_probe=[True, 2.0 + (i % 17) * 0.1, t],
                         vpn_probe=[True, 12.0 + (i % 13) * 0.2, t])

    @method()
    def EventBurst(self, n: "u"):
        for i in range(n):
            self.d.event("probe-answered", {"rtt_ms": f"{2 + (i % 17) * 0.1:.2f}"})

    @method()
    def SecretsAsked(self) -> "as":
        return list(self.d.secrets_asked)

    @method()
    def SecretsGot(self) -> "as":
        """The key names (never the values) the last Connect got from the agent."""
        return list(self.d.last_secrets_keys)

    @method()
    def HistoryPagesAsked(self) -> "u":
        return self.d.pages_asked

    @method()
    def Calls(self) -> "as":
        return list(self.d.calls)

    @method()
    def Fail(self, member: "s", message: "s"):
        self.d.fail[member] = message

    @method()
    async def AskSecrets(self, profile: "s", keys: "as") -> "a{ss}":
        return await self.d.ask_agent(profile, keys)

    @method()
    def Agents(self) -> "as":
        return [f"{s} {p}" for s, p in self.d.agents]


def record_senders(bus, target):
    """Sets ``target._sender`` to each method call's sender just before the method runs
    (a message handler sees the message first; an exported method is not told)."""

    def on(msg):
        if msg.message_type is MessageType.METHOD_CALL:
            target._sender = msg.sender
        return False

    bus.add_message_handler(on)


async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    double = Double(bus)
    record_senders(bus, double)
    bus.export(OBJECT_PATH, double)
    bus.export(TEST_PATH, Control(double))
    await bus.request_name(BUS_NAME)
    print("ready", flush=True)
    await bus.wait_for_disconnect()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
