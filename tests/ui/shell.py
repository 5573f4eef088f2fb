"""Reads and clicks a StatusNotifierItem the way a desktop shell does (dbus-fast)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from dbus_fast.constants import MessageType
from dbus_fast.message import Message
from dbus_fast.signature import Variant

from app.dbus import MessageBus  # EAGAIN waits (app/dbus.py): a burst must not drop the bus

SNI = "org.kde.StatusNotifierItem"
MENU = "com.canonical.dbusmenu"
PROPS = "org.freedesktop.DBus.Properties"


class Shell:
    def __init__(self, address: str) -> None:
        self.address = address
        self.bus: MessageBus | None = None
        self.item = ""
        self.path = "/StatusNotifierItem"
        self._changed = asyncio.Event()

    async def connect(self) -> None:
        self.bus = await MessageBus(bus_address=self.address).connect()
        self.bus.add_message_handler(self._on_message)
        await self._call("org.freedesktop.DBus", "/org/freedesktop/DBus",
                         "org.freedesktop.DBus", "AddMatch", "s", ["type='signal'"])

    def close(self) -> None:
        if self.bus is not None:
            self.bus.disconnect()

    def _on_message(self, msg: Message) -> bool:
        if msg.message_type is MessageType.SIGNAL:
            self._changed.set()
        return False

    async def _call(self, dest: str, path: str, iface: str, member: str, sig: str = "",
                    body: list[Any] | None = None) -> list[Any]:
        assert self.bus is not None
        reply = await self.bus.call(Message(destination=dest, path=path, interface=iface,
                                            member=member, signature=sig, body=body or []))
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            raise RuntimeError(f"{reply.error_name}: {reply.body}")
        return list(reply.body)

    async def until(self, check: Callable[[], Awaitable[bool]], timeout: float = 10,
                    what: str = "condition") -> None:
        """Re-check after every signal on the session bus (the tray's NewToolTip,
        NewIcon, LayoutUpdated...), never on a timer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._changed.clear()
            if await check():
                return
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"{what} not reached in {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def items(self) -> list[str]:
        body = await self._call("org.kde.StatusNotifierWatcher", "/StatusNotifierWatcher", PROPS,
                                "Get", "ss", ["org.kde.StatusNotifierWatcher",
                                              "RegisteredStatusNotifierItems"])
        return list(body[0].value)

    async def find_item(self) -> str:
        async def registered() -> bool:
            items = await self.items()
            if items:
                entry = items[-1]
                self.item, _, path = entry.partition("/")
                if path:
                    self.path = "/" + path
            return bool(items)

        await self.until(registered, what="a StatusNotifierItem")
        return self.item

    async def prop(self, name: str) -> Any:
        body = await self._call(self.item, self.path, PROPS, "Get", "ss", [SNI, name])
        v = body[0]
        return v.value if isinstance(v, Variant) else v

    async def tooltip(self) -> str:
        _icon, _pix, title, text = await self.prop("ToolTip")
        return "\n".join(x for x in (title, text) if x)

    async def icon_pixmaps(self) -> list[tuple[int, int, bytes]]:
        return [(w, h, bytes(data)) for w, h, data in await self.prop("IconPixmap")]

    async def menu_path(self) -> str:
        return str(await self.prop("Menu"))

    async def layout(self) -> list[dict[str, Any]]:
        """Flattened menu: dicts with id, label, enabled, toggle-type, toggle-state."""
        path = await self.menu_path()
        body = await self._call(self.item, path, MENU, "GetLayout", "iias", [0, -1, []])
        out: list[dict[str, Any]] = []

        def walk(node: Any) -> None:
            ident, props, children = node
            entry = {k: (v.value if isinstance(v, Variant) else v) for k, v in props.items()}
            entry["id"] = ident
            out.append(entry)
            for c in children:
                walk(c.value if isinstance(c, Variant) else c)

        walk(body[1])
        return out

    async def entry(self, label: str) -> dict[str, Any]:
        for e in await self.layout():
            if str(e.get("label", "")).replace("_", "") == label:
                return e
        raise KeyError(f"no menu entry {label!r}")

    async def click(self, label: str) -> None:
        e = await self.entry(label)
        path = await self.menu_path()
        await self._call(self.item, path, MENU, "Event", "isvu",
                         [e["id"], "clicked", Variant("i", 0), 0])
