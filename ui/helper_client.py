"""The tray's side of org.trustroam.Helper1 (resources/dbus/org.trustroam.Helper1.xml).

Signal-driven: one GetAll when the helper's name gets an owner, then
PropertiesChanged and Event; NameOwnerChanged says when the helper goes away
or comes back (a restart gets a new unique name, and everything is re-read and
the secret agent registered again).  No timers, no polling.

Any local user can send signals that look like these, to the tray directly: only
the bus's own NameOwnerChanged moves the owner, and only the owner's signals count
(app/client_bus.py).  Event texts are escaped and cut on the way in, so the
history and its window never hold a control character.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from app.api import BUS_NAME, INTERFACE, OBJECT_PATH, HistoryEntry, Snapshot
from app.client_bus import (
    NAME_GONE,
    Message,
    MessageBus,
    MessageFlag,
    MessageType,
    add_match,
    finite,
    get_name_owner,
    owner_change,
    owner_rule,
    shown,
    unwrap,
)

log = logging.getLogger("trustroam.tray.helper")
PROPS = "org.freedesktop.DBus.Properties"
AGENT_PATH = "/org/trustroam/SecretAgent"
ASKS_POLKIT = frozenset({"Connect", "Disconnect", "Reprobe", "SetPolicy", "SaveProfile",
                         "DeleteProfile", "ReleaseGate", "SetAllowLan", "OpenSignIn",
                         "CloseSignIn"})
"""The helper's methods polkit decides: sent with ALLOW_INTERACTIVE_AUTHORIZATION, so
that the desktop's polkit agent may prompt (the administrator's password for
SaveProfile); without the flag polkit may only answer "authentication is required"."""


class HelperCallError(Exception):
    """A refused or failed call, with the helper's message (for a person, no secret)."""


DETAIL_CHARS = 300
"""An event's text as kept and shown (a line in the history, a tooltip's worth)."""


def entry(t: object, kind: object, details: dict[Any, Any]) -> HistoryEntry:
    """A history entry from the bus, its texts escaped and bounded, its time a time."""
    when = finite(t)
    return HistoryEntry(when if when is not None and 0 <= when < 1e11 else 0.0,
                        shown(kind, 40),
                        {shown(k, 40): shown(v, DETAIL_CHARS) for k, v in details.items()})


class HelperClient:
    """Mirrors the helper's properties; callbacks run on the event loop."""

    def __init__(self, bus: MessageBus, *, on_snapshot: Callable[[Snapshot | None], None],
                 on_event: Callable[[HistoryEntry], None],
                 on_appeared: Callable[[], None] | None = None) -> None:
        self.bus = bus
        self.on_snapshot = on_snapshot
        self.on_event = on_event
        self.on_appeared = on_appeared
        self.owner: str | None = None
        self.props: dict[str, Any] = {}
        self.snapshot: Snapshot | None = None
        self.agent_path: str | None = None
        self._generation = 0
        self._pending: asyncio.Future[None] | None = None

    async def start(self) -> None:
        self.bus.add_message_handler(self._on_message)
        for rule in (owner_rule(BUS_NAME),
                     f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}',"
                     f"interface='{PROPS}',member='PropertiesChanged'",
                     f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}',"
                     f"interface='{INTERFACE}',member='Event'"):
            await add_match(self.bus, rule)
        # After the rules: a change from here on is seen.
        await self._owner_changed(await get_name_owner(self.bus, BUS_NAME))

    # -- incoming --------------------------------------------------------------------

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type is not MessageType.SIGNAL:
            return False
        new = owner_change(msg, BUS_NAME)  # only the bus's own: anyone can send one
        if new is not None:
            self._pending = asyncio.ensure_future(self._owner_changed(new or None))
            return False
        if msg.path != OBJECT_PATH or self.owner is None or msg.sender != self.owner:
            return False
        if (msg.interface == PROPS and msg.member == "PropertiesChanged"
                and msg.signature == "sa{sv}as"):
            iface, changed, _invalidated = msg.body
            if iface == INTERFACE and self.props:
                self.props.update(unwrap(changed))
                self._publish()
        elif msg.interface == INTERFACE and msg.member == "Event" and msg.signature == "sa{ss}":
            kind, details = msg.body
            self.on_event(entry(details.get("time", 0.0), kind, details))
        return False

    async def _owner_changed(self, owner: str | None) -> None:
        self._generation += 1
        gen = self._generation
        self.owner = owner
        self.props = {}
        if owner is None:
            log.info("helper not running")
            self.snapshot = None
            self.on_snapshot(None)
            return
        try:
            body = await self._call(owner, OBJECT_PATH, PROPS, "GetAll", "s", [INTERFACE])
        except HelperCallError as exc:
            log.warning("cannot read the helper's properties: %s", exc)  # shown already
            return
        if gen != self._generation:
            return  # the owner changed again while we asked
        self.props = unwrap(body[0])
        log.info("helper present as %s", owner)
        self._publish()
        if self.agent_path is not None:
            try:
                await self.register_secret_agent(self.agent_path)
            except HelperCallError as exc:
                log.warning("secret agent not registered: %s", exc)
        if self.on_appeared is not None:
            self.on_appeared()

    def _publish(self) -> None:
        try:
            self.snapshot = Snapshot.from_dbus(self.props)
        except (ValueError, TypeError) as exc:  # an enum value this tray does not know
            log.warning("helper sent a value this tray does not know: %s", shown(exc))
            return
        self.on_snapshot(self.snapshot)

    # -- outgoing --------------------------------------------------------------------

    async def _call(self, dest: str, path: str, iface: str, member: str, sig: str = "",  # noqa: PLR0917
                    body: list[Any] | None = None) -> list[Any]:
        flags = (MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION
                 if iface == INTERFACE and member in ASKS_POLKIT else MessageFlag.NONE)
        reply = await self.bus.call(Message(destination=dest, path=path, interface=iface,
                                            member=member, signature=sig, body=body or [],
                                            flags=flags))
        if reply is None:
            raise HelperCallError("no reply")
        if reply.message_type is MessageType.ERROR:
            text = reply.body[0] if reply.body else reply.error_name or "error"
            if reply.error_name in NAME_GONE:
                text = "TrustRoam service not running"
            raise HelperCallError(shown(text, 300))  # shown to the user as it is
        return list(reply.body)

    async def call(self, member: str, sig: str = "", body: list[Any] | None = None) -> list[Any]:
        return await self._call(BUS_NAME, OBJECT_PATH, INTERFACE, member, sig, body)

    async def connect(self, profile: str) -> None:
        await self.call("Connect", "s", [profile])

    async def disconnect(self) -> None:
        await self.call("Disconnect")

    async def reprobe(self) -> None:
        await self.call("Reprobe")

    async def set_policy(self, policy: str) -> None:
        await self.call("SetPolicy", "s", [policy])

    async def list_profiles(self) -> list[str]:
        return [str(n) for n in (await self.call("ListProfiles"))[0]]

    async def save_profile(self, toml: str) -> str:
        return str((await self.call("SaveProfile", "s", [toml]))[0])

    async def history(self, n: int) -> list[HistoryEntry]:
        rows = (await self.call("GetHistory", "u", [n]))[0]
        return [entry(t, k, d) for t, k, d in rows]

    async def history_page(self, offset: int, n: int) -> tuple[int, list[Any]]:
        """GetHistoryPage: (entries recorded so far, the page's rows as decoded)."""
        recorded, rows = await self.call("GetHistoryPage", "uu", [offset, n])
        return int(recorded), rows

    async def register_secret_agent(self, path: str = AGENT_PATH) -> None:
        self.agent_path = path
        if self.owner is not None:
            await self.call("RegisterSecretAgent", "o", [path])
