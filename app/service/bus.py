"""The helper's own questions to the bus daemon and logind: who a caller is, and
whether its login session may be asked for secrets.  The D-Bus library itself and
the bounded ``call`` are in :mod:`app.dbus`; its names are re-exported here for the
helper's modules."""

from __future__ import annotations

from app.dbus import (
    BUS_DAEMON,
    BUS_TIMEOUT,
    LOGIND,
    NAME_GONE,
    BusType,
    DBusError,
    Message,
    MessageBus,
    MessageFlag,
    MessageType,
    PeerError,
    PropertyAccess,
    RequestNameReply,
    ServiceInterface,
    Variant,
    _PatientWriter,
    call,
    dbus_property,
    method,
    signal,
)
from app.service.secrets import Peer

__all__ = [
    "BUS_DAEMON", "BUS_TIMEOUT", "LOGIND", "NAME_GONE", "BusType", "DBusError", "Message",
    "MessageBus", "MessageFlag", "MessageType", "PeerError", "PropertyAccess",
    "RequestNameReply", "ServiceInterface", "Variant", "_PatientWriter", "call",
    "credentials", "dbus_property", "method", "session_check", "session_owner_check",
    "signal",
]


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


class _NoLogind(Exception):
    """No logind on this bus: a headless or container system (the uid rule alone)."""


async def _session_property(bus: MessageBus, peer: Peer, prop: str) -> object:
    """``prop`` of the logind session ``peer``'s process is in; a str is why not."""
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
            raise _NoLogind from None
        if exc.error_name == "org.freedesktop.login1.NoSessionForPID":
            return "it is in no login session"
        return str(exc)
    try:
        got = await call(bus, Message(
            destination=LOGIND, path=str(reply.body[0]),
            interface="org.freedesktop.DBus.Properties", member="Get", signature="ss",
            body=["org.freedesktop.login1.Session", prop]), BUS_TIMEOUT, "logind")
    except PeerError as exc:
        return str(exc)
    value = got.body[0]
    return value.value if isinstance(value, Variant) else None


async def session_check(bus: MessageBus, peer: Peer) -> str | None:
    """None if ``peer`` may be asked for secrets: its logind session is active, or no
    logind runs (then the uid rule alone applies); else why not (as NetworkManager
    asks only agents of active sessions)."""
    try:
        active = await _session_property(bus, peer, "Active")
    except _NoLogind:
        return None
    if isinstance(active, str):
        return active
    return None if active is True else "its login session is not the active one"


async def session_owner_check(bus: MessageBus, peer: Peer) -> str | None:
    """None if ``peer`` may register a secret agent: no logind runs (the uid rule
    alone applies), or its process is in a login session of its own uid, active or
    not; else why not.  The table of agents is shared by all uids: without this a
    user with a range of subordinate uids (or any uid with no session) could fill
    it (security review 2026-12-07, finding 10)."""
    try:
        user = await _session_property(bus, peer, "User")
    except _NoLogind:
        return None
    if isinstance(user, str):
        return user
    owner = user[0] if isinstance(user, list | tuple) and user else None
    if owner != peer.uid:
        return f"its login session belongs to uid {owner}"
    return None
