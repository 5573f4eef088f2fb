"""Authorisation of D-Bus callers through polkit, on the caller's real bus name.

The subject is always the unique bus name the message came from (polkit then
asks the bus for its uid and pid), never a uid or name passed as an argument.
Interaction (a password dialog) is allowed only when the caller's message
carries ALLOW_INTERACTIVE_AUTHORIZATION, as D-Bus specifies.  Every check is
bounded in time; if polkit cannot be asked or does not answer, only root is
allowed: fail closed.
"""

from __future__ import annotations

import itertools
import logging
import os

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageFlag
from dbus_next.message import Message
from dbus_next.signature import Variant

from app.service.bus import BUS_DAEMON, BUS_TIMEOUT, PeerError, call

log = logging.getLogger("trustroam.service.polkit")
AUTHORITY = "org.freedesktop.PolicyKit1"
AUTHORITY_PATH = "/org/freedesktop/PolicyKit1/Authority"
AUTHORITY_INTERFACE = "org.freedesktop.PolicyKit1.Authority"
ALLOW_USER_INTERACTION = 1
CHECK_TIMEOUT = 10.0
"""Seconds polkit has to decide without asking anybody."""
INTERACTIVE_TIMEOUT = 120.0
"""Seconds when it may ask the user for a password (a person types it)."""


class Authorizer:
    def __init__(self, bus: MessageBus, *, check_timeout: float = CHECK_TIMEOUT,
                 interactive_timeout: float = INTERACTIVE_TIMEOUT) -> None:
        self.bus = bus
        self.check_timeout = check_timeout
        self.interactive_timeout = interactive_timeout
        self._ids = itertools.count(1)

    async def check(self, sender: str, action: str, *, interactive: bool = False
                    ) -> tuple[bool, str]:
        """(allowed, why not) for ``sender`` doing ``action``."""
        cancel_id = f"trustroamd-{os.getpid()}-{next(self._ids)}"
        timeout = self.interactive_timeout if interactive else self.check_timeout
        try:
            reply = await call(self.bus, Message(
                destination=AUTHORITY, path=AUTHORITY_PATH, interface=AUTHORITY_INTERFACE,
                member="CheckAuthorization", signature="(sa{sv})sa{ss}us",
                body=[["system-bus-name", {"name": Variant("s", sender)}], action, {},
                      ALLOW_USER_INTERACTION if interactive else 0, cancel_id]),
                timeout, "polkit")
        except PeerError as exc:
            if not exc.error_name:  # no answer in time: withdraw the question
                await self._cancel(cancel_id)
            return await self._without_polkit(sender, action, str(exc))
        authorized, challenge, _details = reply.body[0]
        if authorized:
            return True, ""
        if challenge:
            return False, (f"authentication is required for {action}"
                           + ("" if interactive else
                              " (the call did not allow interactive authorisation)"))
        return False, f"not authorised for {action}"

    async def _without_polkit(self, sender: str, action: str, why: str) -> tuple[bool, str]:
        try:
            uid = await self.uid_of(sender)
        except PeerError:
            uid = None
        log.warning("cannot ask polkit (%s); allowing %s only if root", why, action)
        if uid == 0:
            return True, ""
        return False, f"cannot authorise {action}: {why}"

    async def _cancel(self, cancel_id: str) -> None:
        msg = Message(destination=AUTHORITY, path=AUTHORITY_PATH,
                      interface=AUTHORITY_INTERFACE, member="CancelCheckAuthorization",
                      signature="s", body=[cancel_id], flags=MessageFlag.NO_REPLY_EXPECTED)
        try:
            await self.bus.send(msg)
        except Exception as exc:  # the bus is going away; nothing to withdraw then
            log.debug("CancelCheckAuthorization not sent: %s", exc)

    async def uid_of(self, sender: str) -> int:
        reply = await call(self.bus, Message(
            destination=BUS_DAEMON, path="/org/freedesktop/DBus", interface=BUS_DAEMON,
            member="GetConnectionUnixUser", signature="s", body=[sender]),
            BUS_TIMEOUT, "the bus daemon")
        return int(reply.body[0])
