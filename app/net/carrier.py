"""The kernel's own word on carrier (IFF_LOWER_UP), from rtnetlink, as it changes.

NetworkManager reports a device as activated for seconds after its cable is
pulled (it waits before it gives up a lease), so a link source built on it alone
would not see a re-plug into another network until NetworkManager acts.  The
gate must shut at the carrier loss itself: this watch reports every change of
the managed interface's carrier the moment the kernel announces it, message by
message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from app.net.netlink import RTMGRP_LINK, AsyncIPRoute

log = logging.getLogger("trustroam.net.carrier")
IFF_LOWER_UP = 0x10000


def carrier_of(msg: Any, iface: str | None) -> tuple[str, bool] | None:
    """(interface, carrier) if ``msg`` is an RTM_NEWLINK of ``iface`` (any if None)."""
    if msg.get("event") != "RTM_NEWLINK":
        return None
    name = msg.get("ifname") or ""
    if not name or (iface is not None and name != iface):
        return None
    return name, bool(msg["flags"] & IFF_LOWER_UP)


class CarrierWatch:
    def __init__(self, iface: str | None, on_change: Callable[[str, bool], None]) -> None:
        self.iface = iface
        self.on_change = on_change
        self.carrier: dict[str, bool] = {}
        self._mon: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._mon = AsyncIPRoute()
        await self._mon.bind(groups=RTMGRP_LINK)
        self._task = asyncio.create_task(self._watch(), name="carrier")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._mon is not None:
            self._mon.close()

    def observe(self, msg: Any) -> None:
        seen = carrier_of(msg, self.iface)
        if seen is None:
            return
        name, up = seen
        if self.carrier.get(name) != up:
            self.carrier[name] = up
            self.on_change(name, up)

    async def _watch(self) -> None:
        while True:
            async for msg in self._mon.get():
                try:
                    self.observe(msg)
                except Exception:  # the consumer's problem must not stop the watch
                    log.exception("carrier consumer failed")
