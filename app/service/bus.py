"""Outgoing D-Bus calls of the helper, each bounded in time and naming its peer.

The helper waits on other programs (polkitd, logind, the users' secret agents);
none of them may hold a request forever, and when one does not answer the
message says which.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType
from dbus_next.message import Message
from dbus_next.signature import Variant

from app.service.secrets import Peer

BUS_DAEMON = "org.freedesktop.DBus"
BUS_TIMEOUT = 5.0
"""Seconds for the bus daemon itself (it answers at once unless overloaded)."""
LOGIND = "org.freedesktop.login1"
NAME_GONE = frozenset({
    "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply", "org.freedesktop.DBus.Error.Disconnected",
    "org.freedesktop.DBus.Error.UnknownObject", "org.freedesktop.DBus.Error.UnknownMethod",
})


class PeerError(Exception):
    """A peer did not answer in time, or answered with an error; names the peer."""

    def __init__(self, message: str, error_name: str = "") -> None:
        super().__init__(message)
        self.error_name = error_name


async def call(bus: MessageBus, msg: Message, timeout: float | None, peer: str) -> Message:
    """``bus.call(msg)`` bounded by ``timeout`` (None: the caller bounds it, e.g. with
    ``asyncio.timeout``); an error reply raises PeerError."""
    try:
        async with asyncio.timeout(timeout):
            reply = await bus.call(msg)
    except TimeoutError:
        raise PeerError(f"{peer} did not answer within {timeout:g} s") from None
    finally:
        # dbus-next keeps a reply handler per serial until a reply comes; one that
        # never comes must not stay in its table (a slow leak per unanswered call).
        handlers: dict[int, Any] = getattr(bus, "_method_return_handlers", {})
        handlers.pop(msg.serial, None)
    if reply is None:
        raise PeerError(f"{peer} sent no reply")
    if reply.message_type is MessageType.ERROR:
        raise PeerError(f"{peer} answered {reply.error_name}", reply.error_name or "")
    return reply


async def credentials(bus: MessageBus, name: str) -> Peer:
    """The uid and pid of a connection, as the bus daemon knows them."""
    reply = await call(bus, Message(
        destination=BUS_DAEMON, path="/org/freedesktop/DBus", interface=BUS_DAEMON,
        member="GetConnectionCredentials", signature="s", body=[name]),
        BUS_TIMEOUT, "the bus daemon")
    creds = reply.body[0]
    uid = creds.get("UnixUserID")
    pid = creds.get("ProcessID")
    if not isinstance(uid, Variant):
        raise PeerError(f"the bus daemon does not know the uid of {name}")
    return Peer(name, int(uid.value), int(pid.value) if isinstance(pid, Variant) else None)


async def session_check(bus: MessageBus, peer: Peer) -> str | None:
    """None if ``peer`` may be asked for secrets: its logind session is active, or no
    logind runs (then the uid rule alone applies); else why not (as NetworkManager
    asks only agents of active sessions)."""
    if peer.pid is None:
        return "its process is unknown"
    try:
        reply = await call(bus, Message(
            destination=LOGIND, path="/org/freedesktop/login1",
            interface="org.freedesktop.login1.Manager", member="GetSessionByPID",
            signature="u", body=[peer.pid]), BUS_TIMEOUT, "logind")
    except PeerError as exc:
        if exc.error_name in ("org.freedesktop.DBus.Error.ServiceUnknown",
                              "org.freedesktop.DBus.Error.NameHasNoOwner"):
            return None  # no logind on this bus: a headless or container system
        if exc.error_name == "org.freedesktop.login1.NoSessionForPID":
            return "it is in no login session"
        return str(exc)
    session = str(reply.body[0])
    try:
        active = await call(bus, Message(
            destination=LOGIND, path=session, interface="org.freedesktop.DBus.Properties",
            member="Get", signature="ss", body=["org.freedesktop.login1.Session", "Active"]),
            BUS_TIMEOUT, "logind")
    except PeerError as exc:
        return str(exc)
    value = active.body[0]
    if isinstance(value, Variant) and value.value is True:
        return None
    return "its login session is not the active one"
