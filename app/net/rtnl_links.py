"""Link snapshots from rtnetlink (pyroute2), for hosts without NetworkManager.

Subscribes to link, IPv4 address and IPv4 route notifications; after each
batch it reads the managed interface's carrier, addresses and main-table
default gateway and reports a :class:`LinkSnapshot`.  Without a configured
interface it manages the one that holds the main table's default route.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from app.net.links import LinkSnapshot
from app.net.pyroute import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_LINK,
    AsyncIPRoute,
)

log = logging.getLogger("trustroam.net.links")
IFF_LOWER_UP = 0x10000
MAIN_TABLE = 254
OWN_PREFIXES = ("trmn", "ipsec", "lo")
"""Interfaces the helper or charon create, never an access link."""


class RtnlLinks:
    def __init__(self, iface: str | None, on_snapshot: Callable[[LinkSnapshot], None]) -> None:
        self.iface = iface
        self.on_snapshot = on_snapshot
        self._mon: Any = None
        self._query: Any = None
        self._task: asyncio.Task[None] | None = None
        self._index: int | None = None

    async def start(self) -> None:
        self._mon = AsyncIPRoute()
        await self._mon.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE)
        self._query = AsyncIPRoute()
        await self.refresh()
        self._task = asyncio.create_task(self._watch(), name="rtnl-links")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for ipr in (self._mon, self._query):
            if ipr is not None:
                ipr.close()

    def _relevant(self, msg: Any) -> bool:
        """Only what can change the snapshot: the helper's own tables and tunnel are not."""
        event = msg["event"]
        if event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
            return bool(msg.get("table") == MAIN_TABLE and msg["dst_len"] == 0)
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            name = msg.get("ifname") or ""
            return not name.startswith(OWN_PREFIXES) and (
                self.iface is None or name == self.iface)
        if event in ("RTM_NEWADDR", "RTM_DELADDR"):
            return self._index is None or msg["index"] == self._index
        return False

    async def _watch(self) -> None:
        while True:
            relevant = False
            async for msg in self._mon.get():
                relevant = relevant or self._relevant(msg)
            if relevant:
                try:
                    await self.refresh()
                except Exception as exc:  # a vanished interface mid-dump: next batch re-reads
                    log.debug("link refresh failed: %s", exc)

    async def refresh(self) -> None:
        links = {m["index"]: m for m in [x async for x in await self._query.link("dump")]}
        routes = [r async for r in await self._query.route("dump", table=MAIN_TABLE)]
        defaults = [r for r in routes if r["dst_len"] == 0 and r.get("table") == MAIN_TABLE
                    and r.get("gateway")]
        iface = self.iface
        if iface is None:
            for r in defaults:
                name = links.get(r.get("oif"), {}).get("ifname", "") if r.get("oif") else ""
                if name and not name.startswith(OWN_PREFIXES):
                    iface = name
                    break
            if iface is None:
                return
        index = next((i for i, m in links.items() if m.get("ifname") == iface), None)
        self._index = index
        if index is None:
            self.on_snapshot(LinkSnapshot(iface, False, (), None))
            return
        addrs = tuple([IPv4Interface(f"{a.get('address')}/{a['prefixlen']}")
                       async for a in await self._query.addr("dump", index=index)
                       if a.get("address") and a["family"] == 2])
        gateway = next((IPv4Address(r.get("gateway")) for r in defaults
                        if r.get("oif") == index), None)
        carrier = bool(links[index]["flags"] & IFF_LOWER_UP)
        self.on_snapshot(LinkSnapshot(iface, carrier, addrs, gateway))
