"""Link snapshots from rtnetlink (pyroute2), for hosts without NetworkManager.

Reads the managed interface's carrier, addresses and main-table default
gateway once, then follows link, IPv4 address and IPv4 route notifications
and reports a :class:`LinkSnapshot` after each batch that changed it.  Without a configured
interface it manages the one that holds the main table's default route: the
one managed so far while it keeps one, else the best (lowest metric), so an
unplugged Ethernet hands over to the Wi-Fi that has its own lease already.

Also in the snapshot: which addresses have a lease (a finite lifetime: DHCP's),
and which charon installed (the source of its routes in table 220): with kernel
ESP its virtual IP sits on the physical interface, and is never the link's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from app.net.links import LinkSnapshot
from app.net.netlink import (
    RTMGRP_IPV4_IFADDR,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_LINK,
    AsyncIPRoute,
)

log = logging.getLogger("trustroam.net.links")
IFF_LOWER_UP = 0x10000
AF_INET = 2
MAIN_TABLE = 254
CHARON_TABLE = 220
"""strongSwan's routing table (charon.routing_table): its routes' source is its virtual IP."""
IFA_F_PERMANENT = 0x80
"""An address without a lifetime: configured by hand or by charon, never leased."""
REREADS = 5
"""Full reads at most, while notifications keep arriving during them."""
OWN_PREFIXES = ("trmn", "ipsec", "lo")
"""Interfaces the helper or charon create, never an access link."""


class RtnlLinks:
    def __init__(self, iface: str | None, on_snapshot: Callable[[LinkSnapshot], None],
                 ignore_address: str | None = None) -> None:
        self.iface = iface
        self.ignore_address = ignore_address
        """The home address: the helper adds and removes it itself, mid-handover."""
        self.on_snapshot = on_snapshot
        self._mon: Any = None
        self._query: Any = None
        self._task: asyncio.Task[None] | None = None
        self._index: int | None = None
        self._snap: LinkSnapshot | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._other_defaults: set[int] = set()
        """Other interfaces (indexes) with a main-table default route, as last seen."""
        self._applied = 0
        """Notifications applied so far (a full read that raced one is read again)."""
        self._charon_routes: dict[tuple[str, int, int], IPv4Address] = {}
        """charon's routes (destination, length, priority) -> their source address."""

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
            return bool((msg.get("table") == MAIN_TABLE and msg["dst_len"] == 0)
                        or msg.get("table") == CHARON_TABLE)
        if event in ("RTM_NEWLINK", "RTM_DELLINK"):
            name = msg.get("ifname") or ""
            return not name.startswith(OWN_PREFIXES) and (
                self.iface is None or name == self.iface)
        if event in ("RTM_NEWADDR", "RTM_DELADDR"):
            if self.ignore_address is not None and msg.get("address") == self.ignore_address:
                return False
            return self._index is None or msg["index"] == self._index
        return False

    async def _watch(self) -> None:
        while True:
            relevant = False
            async for msg in self._mon.get():
                if not self._relevant(msg):
                    continue
                # Applied from the notification itself: a re-read of links, addresses
                # and routes would parse thousands of netlink attributes in Python in
                # the middle of the handover it reports.
                carrier = self._snap.carrier if self._snap is not None else None
                relevant = self._apply(msg) or relevant
                if self._snap is not None and self._snap.carrier != carrier:
                    # A carrier change is reported at once, not at the end of the
                    # batch: a quick unplug and re-plug must not cancel out.
                    relevant = False
                    self._emit()
            if relevant:
                self._emit()

    def _emit(self) -> None:
        if self._snap is None:
            return
        try:
            self.on_snapshot(self._snap)
        except Exception:  # the consumer's problem must not stop the watch
            log.exception("link snapshot consumer failed")

    def _apply(self, msg: Any) -> bool:
        """Update the snapshot from one notification; False when it needs a full read."""
        self._applied += 1
        snap = self._snap
        if snap is None or self._index is None:
            self._schedule_refresh()
            return False
        event = msg["event"]
        if event == "RTM_NEWLINK" and msg["index"] == self._index:
            carrier = bool(msg["flags"] & IFF_LOWER_UP)
            self._snap = replace(snap, carrier=carrier)
        elif event == "RTM_DELLINK" and msg["index"] == self._index:
            self._index = None
            self._snap = LinkSnapshot(snap.iface, False, (), None)
        elif event in ("RTM_NEWADDR", "RTM_DELADDR") and msg["family"] == AF_INET:
            if msg["index"] != self._index or not msg.get("address"):
                return False
            addr = IPv4Interface(f"{msg.get('address')}/{msg['prefixlen']}")
            rest = tuple(a for a in snap.addresses if a != addr)
            leased = snap.leased - {addr.ip}
            if event == "RTM_NEWADDR" and _leased(msg):
                leased |= {addr.ip}
            self._snap = replace(snap, addresses=(*rest, addr) if event == "RTM_NEWADDR"
                                 else rest, leased=leased)
        elif event in ("RTM_NEWROUTE", "RTM_DELROUTE") and msg.get("table") == CHARON_TABLE:
            key = _route_key(msg)
            src = msg.get("prefsrc")
            if event == "RTM_NEWROUTE" and src:
                self._charon_routes[key] = IPv4Address(src)
            else:
                self._charon_routes.pop(key, None)
            self._snap = replace(snap, installed=frozenset(self._charon_routes.values()))
        elif event in ("RTM_NEWROUTE", "RTM_DELROUTE"):
            gw = msg.get("gateway")
            if msg.get("oif") != self._index or not gw:
                if gw and msg.get("table") == MAIN_TABLE and msg["dst_len"] == 0:
                    others = self._other_defaults
                    if event == "RTM_NEWROUTE":
                        others.add(int(msg.get("oif") or 0))
                        if self.iface is None and not _usable(snap):
                            self._schedule_refresh()  # auto: another interface's route
                    else:
                        others.discard(int(msg.get("oif") or 0))
                return False
            if event == "RTM_NEWROUTE":
                self._snap = replace(snap, gateway=IPv4Address(gw))
            elif snap.gateway == IPv4Address(gw):
                self._snap = replace(snap, gateway=None)
        else:
            if self.iface is None:  # auto: the default route may have moved elsewhere
                self._schedule_refresh()
            return False
        new = self._snap
        if new is None:
            return False
        if new.gateway is not None and not any(new.gateway in a.network
                                               for a in new.addresses):
            # The kernel drops routes through a gateway no address reaches any more,
            # without a notification: forget it rather than report a stale one.
            self._snap = new = replace(new, gateway=None)
        if self.iface is None and not _usable(new) and self._other_defaults:
            # Auto: the managed link lost its carrier, address or default route and
            # another interface has a default route (the Wi-Fi next to an unplugged
            # Ethernet): re-read which one.  Only then: a full read is Python work on
            # the handover's path, and with one link it would find the same.
            self._schedule_refresh()
        return new != snap

    def _schedule_refresh(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._safe_refresh())

    async def _safe_refresh(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # a vanished interface mid-dump: the next event re-reads
            log.debug("link refresh failed: %s", exc)

    async def refresh(self) -> None:
        # A notification applied while the dumps ran may be missing from them (the
        # route dumped before the DHCP client added it): read again rather than
        # overwrite it with the older state.
        for _ in range(REREADS):
            seen = self._applied
            read = await self._read()
            if self._applied == seen:
                break
        if read is None:
            return
        self._index, self._snap, self._charon_routes, self._other_defaults = read
        self.on_snapshot(self._snap)

    async def _read(self) -> tuple[int | None, LinkSnapshot,
                                   dict[tuple[str, int, int], IPv4Address], set[int]] | None:
        """The managed link as the kernel has it now (None: no link to manage)."""
        links = {m["index"]: m for m in [x async for x in await self._query.link("dump")]}
        routes = [r async for r in await self._query.route("dump", table=MAIN_TABLE)]
        charon_routes = {
            _route_key(r): IPv4Address(r.get("prefsrc"))
            async for r in await self._query.route("dump", table=CHARON_TABLE)
            if r.get("table") == CHARON_TABLE and r.get("prefsrc")}
        installed = frozenset(charon_routes.values())
        defaults = [r for r in routes if r["dst_len"] == 0 and r.get("table") == MAIN_TABLE
                    and r.get("gateway")]
        iface = self.iface
        if iface is None:
            ranked = [m for m in (links.get(r.get("oif"), {}) for r in sorted(
                defaults, key=lambda r: int(r.get("priority") or 0)))
                if m.get("ifname") and not str(m.get("ifname")).startswith(OWN_PREFIXES)]
            names = [str(m.get("ifname")) for m in ranked]
            # A default route stays through an unplugged cable (linkdown) until its
            # address goes: an interface with its carrier first.
            alive = [str(m.get("ifname")) for m in ranked if m["flags"] & IFF_LOWER_UP]
            # The interface managed so far while it holds a default route (charon keeps
            # a working path too); else the best default route's.
            current = self._snap.iface if self._snap is not None else None
            for candidates in (alive, names):
                iface = current if current in candidates else (
                    candidates[0] if candidates else None)
                if iface is not None:
                    break
            if iface is None:
                return None
        index = next((i for i, m in links.items() if m.get("ifname") == iface), None)
        if index is None:
            return None, LinkSnapshot(iface, False, (), None, installed=installed), (
                charon_routes), {int(r.get("oif") or 0) for r in defaults}
        # The home address is the helper's own (as in the notifications, not the link's).
        found = [a async for a in await self._query.addr("dump", index=index)
                 if a.get("address") and a["family"] == AF_INET
                 and a.get("address") != self.ignore_address]
        addrs = tuple(IPv4Interface(f"{a.get('address')}/{a['prefixlen']}") for a in found)
        leased = frozenset(IPv4Address(a.get("address")) for a in found if _leased(a))
        gateway = next((IPv4Address(r.get("gateway")) for r in defaults
                        if r.get("oif") == index), None)
        if gateway is not None and not any(gateway in a.network for a in addrs):
            # The last network's route, reachable only through the home address the
            # helper put on the link there: not this link's (the DHCP client's is next).
            gateway = None
        carrier = bool(links[index]["flags"] & IFF_LOWER_UP)
        return index, LinkSnapshot(iface, carrier, addrs, gateway, leased, installed), (
            charon_routes), {int(r.get("oif") or 0) for r in defaults if r.get("oif") != index}


def _usable(snap: LinkSnapshot) -> bool:
    return snap.carrier and bool(snap.addresses) and snap.gateway is not None


def _leased(msg: Any) -> bool:
    """An address with a lifetime (the kernel marks the others permanent)."""
    flags = msg.get("flags")
    return not int(flags if flags is not None else msg["flags"]) & IFA_F_PERMANENT


def _route_key(msg: Any) -> tuple[str, int, int]:
    return (str(msg.get("dst") or "0.0.0.0"), int(msg["dst_len"]), int(msg.get("priority") or 0))
