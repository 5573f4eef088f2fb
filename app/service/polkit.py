"""Authorisation of D-Bus callers through polkit, on the caller's real bus name.

The subject is always the unique bus name the message came from (polkit then
asks the bus for its uid and pid), never a uid or name passed as an argument.
Interaction (a password dialog) is allowed only when the caller's message
carries ALLOW_INTERACTIVE_AUTHORIZATION, as D-Bus specifies.  Every check is
bounded in time; if polkit cannot be asked or does not answer, only root is
allowed: fail closed.

Checks in flight are bounded per caller (unique name and uid): a caller whose
polkit authentication agent never answers (any uid may register one for its
own process) holds at most a few of them, never the helper's whole quota of
pending replies at the bus daemon, and the rest of its checks are refused at
once.  polkit's own LimitsExceeded is a refusal like any other, and such
refusals are not logged one line each.
"""

from __future__ import annotations

import itertools
import logging
import os

from app.service.bus import (
    BUS_DAEMON,
    BUS_TIMEOUT,
    Message,
    MessageBus,
    MessageFlag,
    PeerError,
    Variant,
    call,
)
from app.service.limits import CHECKS_PER_NAME, CHECKS_PER_UID, CallerLimits, QuietLog

log = logging.getLogger("trustroam.service.polkit")
QUIET = QuietLog(log)
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
        self.checks = CallerLimits(CHECKS_PER_NAME, CHECKS_PER_UID)

    async def check(self, sender: str, action: str, *, interactive: bool = False,
                    uid: int | None = None) -> tuple[bool, str]:
        """(allowed, why not) for ``sender`` (of ``uid``, if known) doing ``action``."""
        if uid is None:
            try:
                uid = await self.uid_of(sender)
            except PeerError as exc:
                return False, f"cannot authorise {action}: {exc}"
        if not self.checks.enter(sender, uid):
            return False, (f"cannot authorise {action}: too many authorisation checks "
                           "in flight from this caller")
        try:
            return await self._check(sender, action, interactive, uid)
        finally:
            self.checks.leave(sender, uid)

    async def _check(self, sender: str, action: str, interactive: bool, uid: int
                     ) -> tuple[bool, str]:
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
            return self._without_polkit(uid, action, exc)
        authorized, challenge, _details = reply.body[0]
        if authorized:
            return True, ""
        if challenge:
            # Interactive and still a challenge: polkit found no agent to ask.
            return False, (f"authentication is required for {action}"
                           + (" (no polkit authentication agent answered for this session)"
                              if interactive else
                              " (the call did not allow interactive authorisation)"))
        return False, f"not authorised for {action}"

    def _without_polkit(self, uid: int, action: str, exc: PeerError) -> tuple[bool, str]:
        if uid == 0:
            QUIET(logging.WARNING, "cannot ask polkit (%s); allowing %s to root", exc, action)
            return True, ""
        if exc.error_name == "org.freedesktop.DBus.Error.LimitsExceeded":
            why = "polkit is busy (too many checks in flight)"
        else:
            why = str(exc)
        QUIET(logging.WARNING, "cannot ask polkit (%s); refusing %s to uid %d", why, action, uid)
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
