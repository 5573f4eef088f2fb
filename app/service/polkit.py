"""Authorisation of D-Bus callers through polkit, on the caller's real bus name.

The subject is always the unique bus name the message came from (polkit then
asks the bus for its uid and pid), never a uid or name passed as an argument.
If polkit cannot be asked, only root is allowed: fail closed.
"""

from __future__ import annotations

import logging

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType
from dbus_next.message import Message
from dbus_next.signature import Variant

log = logging.getLogger("trustroam.service.polkit")
AUTHORITY = "org.freedesktop.PolicyKit1"
AUTHORITY_PATH = "/org/freedesktop/PolicyKit1/Authority"
AUTHORITY_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
ALLOW_USER_INTERACTION = 1


class Authorizer:
    def __init__(self, bus: MessageBus, *, interactive: bool = True) -> None:
        self.bus = bus
        self.interactive = interactive

    async def check(self, sender: str, action: str) -> tuple[bool, str]:
        """(allowed, why not) for ``sender`` doing ``action``."""
        reply = await self.bus.call(Message(
            destination=AUTHORITY, path=AUTHORITY_PATH, interface=AUTHORITY_INTERFACE,
            member="CheckAuthorization", signature="(sa{sv})sa{ss}us",
            body=[["system-bus-name", {"name": Variant("s", sender)}], action, {},
                  ALLOW_USER_INTERACTION if self.interactive else 0, ""]))
        if reply is not None and reply.message_type is MessageType.METHOD_RETURN:
            authorized, challenge, _details = reply.body[0]
            if authorized:
                return True, ""
            return False, ("authentication is required for " + action if challenge
                           else "not authorised for " + action)
        err = reply.error_name if reply is not None else "no reply"
        uid = await self.uid_of(sender)
        log.warning("polkit unavailable (%s); allowing %s only if root", err, action)
        if uid == 0:
            return True, ""
        return False, f"polkit is not available to authorise {action} ({err})"

    async def uid_of(self, sender: str) -> int | None:
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="GetConnectionUnixUser", signature="s",
            body=[sender]))
        if reply is not None and reply.message_type is MessageType.METHOD_RETURN:
            return int(reply.body[0])
        return None
