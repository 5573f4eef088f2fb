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
import re
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageFlag, PropertyAccess
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
from app.net.gate import GateError
from app.service import bus as busio
from app.service.helper import Helper, HelperError
from app.service.polkit import Authorizer
from app.service.secrets import Agent, AgentFailed, AgentRefused, Peer, SecretError
from app.vpn.charon import VpnError

log = logging.getLogger("trustroam.service.dbus")
CALLER: contextvars.ContextVar[Message | None] = contextvars.ContextVar("caller", default=None)
MAX_HISTORY = 1000
MAX_PROFILE_TEXT = 64 * 1024
"""Bytes of SaveProfile's TOML (a real profile is about 400)."""
MAX_MESSAGE = 300
"""Characters of an error message sent to a caller."""
_PATH = re.compile(r"(?<![\w.])/[^\s,;:'\"()]*")


def caller_text(text: str) -> str:
    """What a caller may see of a message: one line, short, no file paths."""
    one = " ".join(_PATH.sub("<path>", text).split())
    return one if len(one) <= MAX_MESSAGE else one[:MAX_MESSAGE - 3] + "..."


class SenderAwareBus(MessageBus):
    """The helper's bus connection.

    dbus-next does not hand a method its message: the message (sender, flags) is
    kept in a context variable.  And dbus-next answers an exception that is not a
    DBusError with its traceback (file paths included), then re-raises every
    exception, DBusError or not, in its reply context, where asyncio logs it with
    ~15 lines: a caller could flood the journal.  Here every failure becomes one
    documented error with a one-line message, and nothing is re-raised.
    """

    def _make_method_handler(self, interface: Any, meth: Any) -> Any:
        inner = super()._make_method_handler(interface, meth)

        def handler(msg: Message, send_reply: Any) -> None:
            token = CALLER.set(msg)
            try:
                inner(msg, send_reply)
            finally:
                CALLER.reset(token)

        return handler

    def _send_reply(self, msg: Message) -> Any:
        bus = self

        class SendReply:
            def __enter__(self) -> "SendReply":
                return self

            def __call__(self, reply: Message) -> None:
                if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
                    return
                bus.send(reply)

            def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
                if exc is None:
                    return False
                if isinstance(exc, DBusError):
                    self(Message.new_error(msg, exc.type, caller_text(exc.text or "")))
                elif isinstance(exc, Exception):
                    log.error("internal error in %s from %s: %s: %s", msg.member, msg.sender,
                              type(exc).__name__, " ".join(str(exc).split())[:200])
                    self(Message.new_error(msg, ERROR_FAILED, "internal error in trustroamd "
                                           "(its log says more)"))
                else:
                    return False  # KeyboardInterrupt, SystemExit: not ours to swallow
                return True

            def send_error(self, exc: BaseException) -> None:
                self.__exit__(type(exc), exc, exc.__traceback__)

        return SendReply()


async def call_secret_agent(bus: MessageBus, agent: Agent, profile: str,
                            keys: list[str]) -> dict[str, str]:
    """GetSecrets on ``agent``; SecretSource bounds the time.  An error reply or an
    answer of another type raises AgentFailed, and the next source is tried."""
    msg = Message(destination=agent.peer.name, path=agent.path,
                  interface=SECRET_AGENT_INTERFACE, member="GetSecrets",
                  signature="sas", body=[profile, keys])
    try:
        reply = await busio.call(bus, msg, None, str(agent))
    except busio.PeerError as exc:
        raise AgentFailed(exc.error_name or str(exc),
                          gone=exc.error_name in busio.NAME_GONE) from None
    if reply.signature != "a{ss}":
        raise AgentFailed(f"answered with signature {reply.signature!r}, not a{{ss}}")
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

    # -- callers -----------------------------------------------------------------------

    @staticmethod
    def _message() -> Message:
        msg = CALLER.get()
        if msg is None or not msg.sender:
            raise DBusError(ERROR_FAILED, "the call has no sender")
        return msg

    async def _authorize(self, action: str) -> str:
        """Ask polkit about the caller (returned: its unique name); refusals are
        logged as one line at info level."""
        msg = self._message()
        interactive = bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
        allowed, why = await self.authorizer.check(msg.sender, action, interactive=interactive)
        if not allowed:
            log.info("refused %s to %s: %s", msg.member, msg.sender, why)
            raise DBusError(ERROR_NOT_AUTHORIZED, why)
        return str(msg.sender)

    @staticmethod
    async def _peer_of(bus: MessageBus, sender: str) -> Peer:
        try:
            return await busio.credentials(bus, sender)
        except busio.PeerError as exc:
            raise DBusError(ERROR_FAILED, f"cannot identify the caller: {exc}") from None

    async def _peer(self, sender: str) -> Peer:
        return await self._peer_of(self.authorizer.bus, sender)

    @staticmethod
    def _failed(member: str, exc: Exception, error: str = ERROR_FAILED) -> DBusError:
        log.info("%s failed: %s", member, " ".join(str(exc).split())[:MAX_MESSAGE])
        return DBusError(error, str(exc))

    # -- methods -----------------------------------------------------------------------

    @method()
    async def Connect(self, profile: "s") -> None:
        peer = await self._peer(await self._authorize(ACTION_CONNECT))
        try:
            await self.helper.connect(profile, requester=peer)
        except (HelperError, SecretError, GateError, VpnError) as exc:
            raise self._failed("Connect", exc) from None
        except OSError as exc:  # the gate, routes or sockets: the host said no
            raise self._failed("Connect", OSError(f"cannot set up {profile!r}: "
                                                   f"{exc.strerror or exc}")) from None

    @method()
    async def Disconnect(self) -> None:
        await self._authorize(ACTION_CONNECT)
        try:
            await self.helper.disconnect()
        except HelperError as exc:
            raise self._failed("Disconnect", exc) from None

    @method()
    async def Reprobe(self) -> None:
        await self._authorize(ACTION_CONNECT)
        try:
            await self.helper.reprobe()
        except HelperError as exc:
            raise self._failed("Reprobe", exc) from None

    @method()
    async def SetPolicy(self, policy: "s") -> None:
        await self._authorize(ACTION_CONFIGURE)
        try:
            self.helper.set_policy(policy)
        except HelperError as exc:
            raise self._failed("SetPolicy", exc, ERROR_INVALID) from None

    @method()
    async def SaveProfile(self, toml: "s") -> "s":
        await self._authorize(ACTION_CONFIGURE)
        if len(toml.encode()) > MAX_PROFILE_TEXT:
            raise self._failed("SaveProfile", ValueError(
                f"toml: longer than {MAX_PROFILE_TEXT} bytes"), ERROR_INVALID)
        try:
            return self.helper.save_profile(toml)
        except (HelperError, ConfigError) as exc:
            raise self._failed("SaveProfile", exc, ERROR_INVALID) from None

    @method()
    async def RegisterSecretAgent(self, path: "o") -> None:
        # Anyone may offer secrets, but only for themselves: the agent is asked
        # only for a Connect from its own uid (see app.service.secrets).
        msg = self._message()
        if len(path) > 4 * 255:  # refuse a huge path before asking the bus anything
            raise DBusError(ERROR_INVALID, "path: too long")
        peer = await self._peer(msg.sender)
        try:
            self.helper.secrets.register_agent(peer, path)
        except AgentRefused as exc:
            raise self._failed("RegisterSecretAgent", exc, ERROR_INVALID) from None
        log.debug("secret agent %s at %s", peer, path)

    @method()
    def GetHistory(self, n: "u") -> "a(dsa{ss})":
        entries = list(self.helper.history)[-min(n, MAX_HISTORY):] if n else []
        return [[e.time, e.kind, dict(e.details)] for e in entries]

    @method()
    def ListProfiles(self) -> "as":
        try:
            return sorted(self.helper.load_profiles())
        except HelperError as exc:
            raise self._failed("ListProfiles", exc) from None

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
    def VpnGateway(self) -> "s":
        return self._p("VpnGateway")

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
