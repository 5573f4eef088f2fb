# mypy: disable-error-code="name-defined,no-any-return,misc,valid-type,no-untyped-def"
# dbus-fast reads D-Bus signatures from string annotations ("s", "a{ss}"), which
# mypy and ruff take for undefined names; hence no __future__ annotations here.
"""The helper's D-Bus face: ``org.trustroam.Helper1`` (docs/ARCHITECTURE.md section 5).

Properties are read by anyone; Connect, Disconnect, Reprobe and SetPolicy need
polkit's ``org.trustroam.connect`` (every policy keeps traffic protected: choosing
one is a user's action, as NetworkManager's network-control), SaveProfile,
DeleteProfile and ReleaseGate ``org.trustroam.configure`` (the administrator),
checked on the message's real sender; polkit may prompt only when the message carries
ALLOW_INTERACTIVE_AUTHORIZATION.  The introspection this produces is
held to ``resources/dbus/org.trustroam.Helper1.xml`` by a test.
"""

import asyncio
import contextlib
import contextvars
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from app import __version__
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
from app.errors import UserFacingError
from app.service import bus as busio
from app.service.bus import (
    DBusError,
    Message,
    MessageBus,
    MessageFlag,
    PropertyAccess,
    ServiceInterface,
    dbus_property,
    method,
    signal,
)
from app.service.helper import HISTORY, Helper
from app.service.limits import CALLS_PER_NAME, CALLS_PER_UID, CallerLimits, QuietLog
from app.service.polkit import Authorizer
from app.service.secrets import Agent, AgentFailed, AgentRefused, Peer

log = logging.getLogger("trustroam.service.dbus")
CALLER: contextvars.ContextVar[Message | None] = contextvars.ContextVar("caller", default=None)
MAX_HISTORY = 1000
MAX_PROFILE_TEXT = 64 * 1024
"""Bytes of SaveProfile's TOML (a real profile is about 400)."""
MAX_MESSAGE = 300
"""Characters of an error message sent to a caller."""
_PATH = re.compile(r"(?<![\w.])/[^\s,;:'\"()]*")
ERROR_LIMITS = "org.freedesktop.DBus.Error.LimitsExceeded"
"""The answer to a caller with too many calls in flight (the D-Bus standard error)."""
QUIET = QuietLog(log)
"""Lines a caller can cause (refusals, failures): rate-limited."""
UID_CACHE = 4096


def caller_text(text: str) -> str:
    """What a caller may see of a message: one line, short, no file paths."""
    one = " ".join(_PATH.sub("<path>", text).split())
    return one if len(one) <= MAX_MESSAGE else one[:MAX_MESSAGE - 3] + "..."


class SenderAwareBus(MessageBus):
    """The helper's bus connection.

    The library does not hand a method its message: the message (sender, flags)
    is kept in a context variable, set by the handler made here (dbus-fast's
    compiled bus still looks ``_make_method_handler`` up on the instance, so
    this override is honoured).  And every failure becomes one documented error
    with a one-line message: dbus-fast would answer an exception that is not a
    DBusError with a generic error and log its traceback (~15 lines), which a
    caller could repeat to flood the journal.
    """

    def _make_method_handler(self, interface: Any, meth: Any) -> Any:
        inner = super()._make_method_handler(interface, meth)
        bus = self

        def handler(msg: Message, send_reply: Any) -> None:
            token = CALLER.set(msg)  # the coroutine's task copies the context
            reply = _OneLineReply(bus, msg)
            try:
                with reply:
                    inner(msg, reply)
            finally:
                CALLER.reset(token)

        return handler

    def _future_exception_no_reply(self, fut: Any) -> None:
        # A call sent with NO_REPLY_EXPECTED that failed: dbus-fast would log its
        # traceback, one per call, for any caller to repeat.
        self._pending_futures.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None and not isinstance(exc, DBusError):
            QUIET(logging.ERROR, "internal error in a call without reply: %s: %s",
                  type(exc).__name__, " ".join(str(exc).split())[:200])


class _OneLineReply:
    """What the library's method handlers call to answer ``msg`` (its SendReply's
    interface), answering every exception with a one-line error."""

    def __init__(self, bus: MessageBus, msg: Message) -> None:
        self.bus, self.msg = bus, msg

    def __enter__(self) -> "_OneLineReply":
        return self

    def __call__(self, reply: Message) -> None:
        if self.msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return
        self.bus.send(reply)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc is None:
            return False
        msg = self.msg
        if isinstance(exc, DBusError):
            self(Message.new_error(msg, exc.type, caller_text(exc.text or "")))
        elif isinstance(exc, Exception):
            QUIET(logging.ERROR, "internal error in %s from %s: %s: %s", msg.member,
                  msg.sender, type(exc).__name__, " ".join(str(exc).split())[:200])
            self(Message.new_error(msg, ERROR_FAILED, "internal error in trustroamd "
                                   "(its log says more)"))
        else:
            return False  # KeyboardInterrupt, SystemExit: not ours to swallow
        return True

    def send_error(self, exc: BaseException) -> None:
        self.__exit__(type(exc), exc, exc.__traceback__)


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


def history_page(history: list[HistoryEntry], offset: int, n: int) -> list[HistoryEntry]:
    """GetHistoryPage's rows: up to n entries (at most MAX_HISTORY) before the
    newest ``offset`` ones, oldest first; none past the oldest kept."""
    if n == 0:
        raise DBusError(ERROR_INVALID, "n: a page holds at least 1 entry")
    if offset > HISTORY:
        raise DBusError(ERROR_INVALID, f"offset: {offset} is past the "
                        f"{HISTORY} entries the helper keeps")
    end = len(history) - offset
    return history[max(0, end - min(n, MAX_HISTORY)):end] if end > 0 else []


class HelperInterface(ServiceInterface):
    def __init__(self, helper: Helper, authorizer: Authorizer) -> None:
        super().__init__(INTERFACE)
        self.helper = helper
        self.authorizer = authorizer
        self.calls = CallerLimits(CALLS_PER_NAME, CALLS_PER_UID)
        self._uids: dict[str, int] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        """uid of each unique name seen (unique names are never reused)."""
        self._last = helper.snapshot.to_dbus()
        self._recorded = len(helper.history)
        """History entries recorded so far: GetHistoryPage's count (its newest + 1)."""
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
        self._recorded += 1  # the helper appended it to its history just before
        self.Event(entry.kind, {"time": f"{entry.time:.3f}", **entry.details})

    # -- callers -----------------------------------------------------------------------

    @staticmethod
    def _message() -> Message:
        msg = CALLER.get()
        if msg is None or not msg.sender:
            raise DBusError(ERROR_FAILED, "the call has no sender")
        return msg

    def forget_name(self, name: str) -> None:
        """A connection went away (the bus daemon's NameOwnerChanged)."""
        self._uids.pop(name, None)

    async def _uid(self, name: str) -> int:
        uid = self._uids.get(name)
        if uid is None:
            try:
                uid = await self.authorizer.uid_of(name)
            except busio.PeerError as exc:
                raise DBusError(ERROR_FAILED, f"cannot identify the caller: {exc}") from None
            if len(self._uids) >= UID_CACHE:
                self._uids.clear()  # many callers at once; asking again is cheap
            self._uids[name] = uid
        return uid

    @contextlib.asynccontextmanager
    async def _admitted(self) -> AsyncIterator[int]:
        """A slot for the caller's call (yielded: its uid): a handful in flight per
        unique name and per uid; beyond that the call is refused at once."""
        msg = self._message()
        name = str(msg.sender)
        if not self.calls.names.enter(name):
            raise self._busy(msg, "this connection")
        try:
            uid = await self._uid(name)
            if not self.calls.uids.enter(uid):
                raise self._busy(msg, f"uid {uid}")
            try:
                yield uid
            finally:
                self.calls.uids.leave(uid)
        finally:
            self.calls.names.leave(name)

    @staticmethod
    def _busy(msg: Message, who: str) -> DBusError:
        QUIET(logging.INFO, "refused %s to %s: too many calls in flight from %s",
              msg.member, msg.sender, who)
        return DBusError(ERROR_LIMITS, f"too many calls in flight from {who}; "
                         "try again when they are answered")

    async def _authorize(self, action: str, uid: int) -> str:
        """Ask polkit about the caller (returned: its unique name); refusals are
        logged (rate-limited)."""
        msg = self._message()
        interactive = bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION)
        allowed, why = await self.authorizer.check(msg.sender, action, interactive=interactive,
                                                   uid=uid)
        if not allowed:
            QUIET(logging.INFO, "refused %s to %s: %s", msg.member, msg.sender, why)
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
        QUIET(logging.INFO, "%s failed: %s", member, " ".join(str(exc).split())[:MAX_MESSAGE])
        return DBusError(error, str(exc))

    # -- methods -----------------------------------------------------------------------

    @method()
    async def Connect(self, profile: "s") -> None:
        async with self._admitted() as uid:
            peer = await self._peer(await self._authorize(ACTION_CONNECT, uid))
            try:
                # A gateless profile would lift an administrator's block: its bar.
                admin = self.helper.lifts_block(profile)
                if admin:
                    await self._authorize(ACTION_CONFIGURE, uid)
                await self.helper.connect(profile, requester=peer, administrator=admin)
            except UserFacingError as exc:
                raise self._failed("Connect", exc) from None
            except OSError as exc:  # the gate, routes or sockets: the host said no
                raise self._failed("Connect", OSError(f"cannot set up {profile!r}: "
                                                       f"{exc.strerror or exc}")) from None

    @method()
    async def Disconnect(self) -> None:
        async with self._admitted() as uid:
            await self._authorize(ACTION_CONNECT, uid)
            try:
                await self.helper.disconnect()
            except UserFacingError as exc:
                raise self._failed("Disconnect", exc) from None

    @method()
    async def Reprobe(self) -> None:
        async with self._admitted() as uid:
            await self._authorize(ACTION_CONNECT, uid)
            try:
                await self.helper.reprobe()
            except UserFacingError as exc:
                raise self._failed("Reprobe", exc) from None

    @method()
    async def SetPolicy(self, policy: "s") -> None:
        async with self._admitted() as uid:
            await self._authorize(ACTION_CONNECT, uid)
            await self._set_policy(policy)

    async def _set_policy(self, policy: str) -> None:
        try:
            self.helper.set_policy(policy)
        except UserFacingError as exc:
            raise self._failed("SetPolicy", exc, ERROR_INVALID) from None
        try:
            await self.helper.release_held_gate()
        except (UserFacingError, OSError) as exc:
            raise self._failed("SetPolicy", exc) from None

    @method()
    async def ReleaseGate(self) -> None:
        """The administrator lifts the shut gate lockdown (or a Disconnect) left."""
        async with self._admitted() as uid:
            await self._authorize(ACTION_CONFIGURE, uid)
            try:
                await self.helper.release_gate()
            except UserFacingError as exc:
                raise self._failed("ReleaseGate", exc) from None
            except OSError as exc:
                raise self._failed("ReleaseGate", OSError(
                    f"cannot remove the gate: {exc.strerror or exc}")) from None

    @method()
    def GetAllowLan(self) -> "(bs)":
        return list(self.helper.allow_lan())

    @method()
    async def SetAllowLan(self, allow: "b") -> "(bs)":
        # Like Connect: the active local user's (a per-network choice, issue 19).
        async with self._admitted() as uid:
            await self._authorize(ACTION_CONNECT, uid)
            try:
                return list(await self.helper.set_allow_lan(bool(allow)))
            except UserFacingError as exc:
                raise self._failed("SetAllowLan", exc) from None
            except OSError as exc:
                raise self._failed("SetAllowLan", OSError(
                    f"cannot change the gate: {exc.strerror or exc}")) from None

    @method()
    async def SaveProfile(self, toml: "s") -> "s":
        async with self._admitted() as uid:
            await self._authorize(ACTION_CONFIGURE, uid)
            return self._save_profile(toml)

    def _save_profile(self, toml: str) -> str:
        if len(toml.encode()) > MAX_PROFILE_TEXT:
            raise self._failed("SaveProfile", ValueError(
                f"toml: longer than {MAX_PROFILE_TEXT} bytes"), ERROR_INVALID)
        try:
            return self.helper.save_profile(toml)
        except UserFacingError as exc:
            raise self._failed("SaveProfile", exc, ERROR_INVALID) from None

    @method()
    async def GetProfile(self, name: "s") -> "s":
        # Open to every uid, as ListProfiles and the files themselves (0644): a
        # profile never holds a secret.
        async with self._admitted():
            try:
                return self.helper.profile_text(name)
            except UserFacingError as exc:
                raise self._failed("GetProfile", exc, ERROR_INVALID) from None

    @method()
    async def DeleteProfile(self, name: "s") -> None:
        async with self._admitted() as uid:
            await self._authorize(ACTION_CONFIGURE, uid)
            try:
                self.helper.delete_profile(name)
            except UserFacingError as exc:
                raise self._failed("DeleteProfile", exc, ERROR_INVALID) from None

    @method()
    async def RegisterSecretAgent(self, path: "o") -> None:
        # Anyone may offer secrets, but only for themselves: the agent is asked
        # only for a Connect from its own uid (see app.service.secrets).
        msg = self._message()
        if len(path) > 4 * 255:  # refuse a huge path before asking the bus anything
            raise DBusError(ERROR_INVALID, "path: too long")
        async with self._admitted():
            peer = await self._peer(msg.sender)
            if peer.uid != 0:
                why = await busio.session_owner_check(self.authorizer.bus, peer)
                if why is not None:
                    raise self._failed("RegisterSecretAgent", AgentRefused(
                        f"a secret agent must run in a login session of its own uid: {why}"),
                        ERROR_INVALID)
        try:
            self.helper.secrets.register_agent(peer, path)
        except UserFacingError as exc:
            raise self._failed("RegisterSecretAgent", exc, ERROR_INVALID) from None
        log.debug("secret agent %s at %s", peer, path)
        if self.helper.pending_start is not None and self.helper.driver is None:
            self._spawn(self._connect_pending(peer))

    async def connect_pending_with_registered(self) -> None:
        """At start, right after the connect that lacked a secret: agents that
        registered while it ran (a tray re-registers as soon as the helper's name
        appears) are tried in turn, until one's user is allowed."""
        for agent in [a for mine in list(self.helper.secrets.agents.values()) for a in mine]:
            if self.helper.pending_start is None or self.helper.driver is not None:
                return
            await self._connect_pending(agent.peer)

    async def _connect_pending(self, peer: Peer) -> None:
        """The start's connect that lacked a secret, with this agent's: only if its
        user may connect (polkit, without a prompt: nobody asked for it)."""
        allowed, why = await self.authorizer.check(peer.name, ACTION_CONNECT, uid=peer.uid)
        if not allowed:
            log.info("not connecting %s with the agent of uid %d: %s",
                     self.helper.pending_start, peer.uid, why)
            return
        try:
            await self.helper.connect_pending(peer)
        except (UserFacingError, OSError) as exc:
            QUIET(logging.ERROR, "cannot connect at start with the agent of uid %d: %s",
                  peer.uid, " ".join(str(exc).split())[:MAX_MESSAGE])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @method()
    async def OpenSignIn(self) -> "sd":
        # The caller itself (its pid as the bus daemon knows it) goes into the sign-in
        # cgroup: a process can open the hole only for itself.
        async with self._admitted() as uid:
            peer = await self._peer(await self._authorize(ACTION_CONNECT, uid))
            if peer.pid is None:
                raise self._failed("OpenSignIn", ValueError(
                    "the bus daemon does not know the caller's process"))
            try:
                address, seconds = await self.helper.portal.open_signin(peer.pid, peer.uid)
            except UserFacingError as exc:
                raise self._failed("OpenSignIn", exc) from None
            except OSError as exc:
                raise self._failed("OpenSignIn", OSError(
                    f"cannot open the sign-in: {exc.strerror or exc}")) from None
            return [address, seconds]

    @method()
    async def CloseSignIn(self) -> None:
        async with self._admitted() as uid:
            await self._authorize(ACTION_CONNECT, uid)
            try:
                if await self.helper.portal.close_signin("the sign-in window closed"):
                    await self.helper.reprobe(quiet=True)  # try the VPN again at once
            except (UserFacingError, OSError) as exc:
                raise self._failed("CloseSignIn", exc) from None

    @method()
    def GetHistory(self, n: "u") -> "a(dsa{ss})":
        entries = list(self.helper.history)[-min(n, MAX_HISTORY):] if n else []
        return [[e.time, e.kind, dict(e.details)] for e in entries]

    @method()
    def GetHistoryPage(self, offset: "u", n: "u") -> "ta(dsa{ss})":
        # A client reads its history a page at a time (its decoding's peak is a
        # page's, not 1000 rows'); `recorded` lets it drop the rows that moved
        # into this page from the last one as new events arrived.
        rows = history_page(list(self.helper.history), offset, n)
        return [self._recorded, [[e.time, e.kind, dict(e.details)] for e in rows]]

    @method()
    def ListProfiles(self) -> "as":
        try:
            return sorted(self.helper.load_profiles())
        except UserFacingError as exc:
            raise self._failed("ListProfiles", exc) from None

    # -- signals -----------------------------------------------------------------------

    @signal()
    def Event(self, kind, details) -> "sa{ss}":
        return [kind, details]

    # -- properties --------------------------------------------------------------------

    def _p(self, name: str) -> Any:
        return self._last[name]  # the snapshot's D-Bus form, kept by _snapshot_changed

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
