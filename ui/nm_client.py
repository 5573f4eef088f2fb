"""The network's name from NetworkManager (system bus), signal-driven.

The primary connection's id, or for Wi-Fi its SSID.  NetworkManager absent (or
gone) just means no name; its return is noticed through the bus's own
NameOwnerChanged (a forged one, from anyone else, is ignored), and only
NetworkManager's current owner's PropertiesChanged start a new look.  The name is
escaped and cut on the way in: an SSID is chosen by whoever runs the access point.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from app.client_bus import (
    Message,
    MessageBus,
    MessageType,
    add_match,
    get_name_owner,
    owner_change,
    owner_rule,
    shown,
    unwrap,
)

log = logging.getLogger("trustroam.tray.nm")
NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
PROPS = "org.freedesktop.DBus.Properties"
WIFI_TYPE = "802-11-wireless"
NAME_CHARS = 64
# Changes that can alter the name; anything else NetworkManager says (signal
# strength, counters) is ignored without a D-Bus round trip.
RELEVANT = frozenset({"PrimaryConnection", "ActiveConnections", "Id", "ActiveAccessPoint",
                      "Ssid", "ActiveConnection", "State"})


class NetworkName:
    def __init__(self, bus: MessageBus, on_change: Callable[[str], None]) -> None:
        self.bus = bus
        self.on_change = on_change
        self.owner: str | None = None
        self.name = ""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.bus.add_message_handler(self._on_message)
        for rule in (owner_rule(NM), f"type='signal',sender='{NM}',member='PropertiesChanged'"):
            await add_match(self.bus, rule)
        self.owner = await get_name_owner(self.bus, NM)
        await self._resolve()

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type is not MessageType.SIGNAL:
            return False
        new = owner_change(msg, NM)
        if new is not None:
            self.owner = new or None
            self._schedule()
        elif (msg.member == "PropertiesChanged" and self.owner and msg.sender == self.owner
              and msg.body):
            changed = msg.body[1 if msg.interface == PROPS and len(msg.body) > 1 else 0]
            if isinstance(changed, dict) and RELEVANT.intersection(changed):
                self._schedule()
        return False

    def _schedule(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._resolve())

    async def _call(self, dest: str, path: str, iface: str, member: str, sig: str = "",  # noqa: PLR0917
                    body: list[Any] | None = None) -> list[Any]:
        reply = await self.bus.call(Message(destination=dest, path=path, interface=iface,
                                            member=member, signature=sig, body=body or []))
        if reply is None or reply.message_type is MessageType.ERROR:
            raise LookupError(reply.error_name if reply else "no reply")
        return list(reply.body)

    async def _get(self, path: str, iface: str, prop: str) -> Any:
        return unwrap((await self._call(NM, path, PROPS, "Get", "ss", [iface, prop]))[0])

    async def _current(self) -> str:
        if self.owner is None:
            return ""
        try:
            primary = await self._get(NM_PATH, NM, "PrimaryConnection")
        except LookupError:
            primary = "/"
        if not primary or primary == "/":
            # Some NetworkManagers (and test doubles) leave PrimaryConnection unset:
            # take the default active connection.
            primary = "/"
            for path in await self._get(NM_PATH, NM, "ActiveConnections"):
                if await self._get(path, NM + ".Connection.Active", "Default"):
                    primary = path
                    break
        if primary == "/":
            return ""
        active = NM + ".Connection.Active"
        conn_id = str(await self._get(primary, active, "Id"))
        if await self._get(primary, active, "Type") == WIFI_TYPE:
            for dev in await self._get(primary, active, "Devices"):
                ap = await self._get(dev, NM + ".Device.Wireless", "ActiveAccessPoint")
                if ap and ap != "/":
                    ssid = bytes(await self._get(ap, NM + ".AccessPoint", "Ssid"))
                    return f"{shown(ssid.decode('utf-8', 'replace'), NAME_CHARS)} (Wi-Fi)"
        return shown(conn_id, NAME_CHARS)

    async def _resolve(self) -> None:
        try:
            name = await self._current()
        except (LookupError, ValueError, TypeError) as exc:
            log.info("network name unavailable: %s", exc)
            name = ""
        if name != self.name:
            self.name = name
            self.on_change(name)
