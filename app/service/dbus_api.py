# mypy: disable-error-code="name-defined,no-any-return,misc,valid-type,no-untyped-def"
# dbus-next reads D-Bus signatures from string annotations ("s", "a{ss}"), which
# mypy and ruff take for undefined names; hence no __future__ annotations here.
"""The helper's D-Bus face: ``org.trustroam.Helper1`` (DESIGN.md section 3).

Properties are read by anyone; Connect, Disconnect and Reprobe need polkit's
``org.trustroam.connect``, SetPolicy and SaveProfile ``org.trustroam.configure``,
checked on the message's real sender.  The introspection this produces is
held to ``resources/dbus/org.trustroam.Helper1.xml`` by a test.
"""

import contextvars
import logging
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType, PropertyAccess
from dbus_next.errors import DBusError
from dbus_next.message import Message
from dbus_next.service import ServiceInterface, dbus_property, method, signal

from app.api import (
    ACTION_CONFIGURE,
    ACTION_CONNECT,
    ERROR_FAILED,
    ERROR_INVALID,
    ERROR_NOT_AUTHORIZED,
    INTERFACE,
    SECRET_AGENT_INTERFACE,
    HistoryEntry,
    Snapshot,
)
from app.config import ConfigError
from app.service.helper import Helper, HelperError
from app.service.polkit import Authorizer
from app.service.secrets import SecretError

log = logging.getLogger("trustroam.service.dbus")
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="")
MAX_HISTORY = 1000


class SenderAwareBus(MessageBus):
    """dbus-next does not hand a method its message; keep the sender in a context var."""

    def _make_method_handler(self, interface: Any, meth: Any) -> Any:
        inner = super()._make_method_handler(interface, meth)

        def handler(msg: Message, send_reply: Any) -> None:
            token = CALLER.set(msg.sender or "")
            try:
                inner(msg, send_reply)
            finally:
                CALLER.reset(token)

        return handler


async def call_secret_agent(bus: MessageBus, sender: str, path: str, profile: str,
                            keys: list[str]) -> dict[str, str]:
    reply = await bus.call(Message(destination=sender, path=path,
                                   interface=SECRET_AGENT_INTERFACE, member="GetSecrets",
                                   signature="sas", body=[profile, keys]))
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        raise RuntimeError(reply.error_name if reply is not None else "no reply")
    return {str(k): str(v) for k, v in reply.body[0].items()}


class HelperInterface(ServiceInterface):
    def __init__(self, helper: Helper, authorizer: Authorizer) -> None:
        super().__init__(INTERFACE)
        self.helper = helper
        self.authorizer = authorizer
        self._last = helper.snapshot.to_dbus()
        helper.snapshot_listeners.append(self._snapshot_changed)
        helper.event_listeners.append(self._event)

    # -- publishing ----------------------------------------------------------------

    def _snapshot_changed(self, snap: Snapshot) -> None:
        new = snap.to_dbus()
        changed = {k: v for k, v in new.items() if self._last.get(k) != v}
        self._last = new
        if changed:
            self.emit_properties_changed(changed)

    def _event(self, entry: HistoryEntry) -> None:
        self.Event(entry.kind, {"time": f"{entry.time:.3f}", **entry.details})

    # -- authorisation ---------------------------------------------------------------

    async def _authorize(self, action: str) -> None:
        sender = CALLER.get()
        allowed, why = await self.authorizer.check(sender, action)
        if not allowed:
            log.warning("refused %s to %s: %s", action, sender, why)
            raise DBusError(ERROR_NOT_AUTHORIZED, why)

    # -- methods -----------------------------------------------------------------------

    @method()
    async def Connect(self, profile: "s") -> None:
        await self._authorize(ACTION_CONNECT)
        try:
            await self.helper.connect(profile)
        except (HelperError, SecretError) as exc:
            raise DBusError(ERROR_FAILED, str(exc)) from None

    @method()
    async def Disconnect(self) -> None:
        await self._authorize(ACTION_CONNECT)
        try:
            await self.helper.disconnect()
        except HelperError as exc:
            raise DBusError(ERROR_FAILED, str(exc)) from None

    @method()
    async def Reprobe(self) -> None:
        await self._authorize(ACTION_CONNECT)
        try:
            self.helper.reprobe()
        except HelperError as exc:
            raise DBusError(ERROR_FAILED, str(exc)) from None

    @method()
    async def SetPolicy(self, policy: "s") -> None:
        await self._authorize(ACTION_CONFIGURE)
        try:
            self.helper.set_policy(policy)
        except HelperError as exc:
            raise DBusError(ERROR_INVALID, str(exc)) from None

    @method()
    async def SaveProfile(self, toml: "s") -> "s":
        await self._authorize(ACTION_CONFIGURE)
        try:
            return self.helper.save_profile(toml)
        except (HelperError, ConfigError) as exc:
            raise DBusError(ERROR_INVALID, str(exc)) from None

    @method()
    async def RegisterSecretAgent(self, path: "o") -> None:
        # Anyone may offer secrets; the helper only ever sends them the profile's name.
        self.helper.secrets.register_agent(CALLER.get(), path)

    @method()
    def GetHistory(self, n: "u") -> "a(dsa{ss})":
        entries = list(self.helper.history)[-min(n, MAX_HISTORY):] if n else []
        return [[e.time, e.kind, dict(e.details)] for e in entries]

    @method()
    def ListProfiles(self) -> "as":
        return sorted(self.helper.load_profiles())

    # -- signals -----------------------------------------------------------------------

    @signal()
    def Event(self, kind, details) -> "sa{ss}":
        return [kind, details]

    # -- properties --------------------------------------------------------------------

    def _p(self, name: str) -> Any:
        return self._last[name]  # the snapshot's D-Bus form, kept by _snapshot_changed

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
    def NatDetected(self) -> "b":
        return self._p("NatDetected")

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
