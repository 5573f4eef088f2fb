"""Link snapshots from NetworkManager over D-Bus.

The managed device's ``State`` (activated or not), its ``Ip4Config``'s
``AddressData`` and ``Gateway`` make a :class:`LinkSnapshot`; its ``Dhcp4Config``'s
``ip_address`` is the one address known to be leased (what charon puts on the
interface, its virtual IP, never is).  Any signal from
NetworkManager (device state, IP4Config properties, active connections)
triggers one coalesced re-read, so what is reported is always NM's current
view rather than a reconstruction from deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from app.dbus import Message, MessageBus, MessageType
from app.net.carrier import CarrierWatch
from app.net.links import LinkSnapshot

log = logging.getLogger("trustroam.net.nm")
NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
DEVICE = "org.freedesktop.NetworkManager.Device"
IP4CONFIG = "org.freedesktop.NetworkManager.IP4Config"
DHCP4CONFIG = "org.freedesktop.NetworkManager.DHCP4Config"
ACTIVE = "org.freedesktop.NetworkManager.Connection.Active"
PROPS = "org.freedesktop.DBus.Properties"
STATE_ACTIVATED = 100
MATCH = f"type='signal',sender='{NM}'"
BUS = "org.freedesktop.DBus"
OWNER_MATCH = (f"type='signal',sender='{BUS}',interface='{BUS}',member='NameOwnerChanged',"
               f"path='/org/freedesktop/DBus',arg0='{NM}'")
CALL_TIMEOUT = 5.0
"""Seconds NetworkManager (or the bus) has to answer one call."""


class NmError(Exception):
    pass


async def nm_running(bus: MessageBus) -> bool:
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            reply = await bus.call(Message(destination="org.freedesktop.DBus",
                                           path="/org/freedesktop/DBus",
                                           interface="org.freedesktop.DBus",
                                           member="NameHasOwner", signature="s", body=[NM]))
    except TimeoutError:
        return False
    return bool(reply is not None and reply.message_type is MessageType.METHOD_RETURN
                and reply.body[0])


class NmLinks:
    def __init__(self, bus: MessageBus, iface: str | None,
                 on_snapshot: Callable[[LinkSnapshot], None]) -> None:
        self.bus = bus
        self.iface = iface
        self.on_snapshot = on_snapshot
        self._pending = False
        self._closed = False
        self._last: LinkSnapshot | None = None
        """NetworkManager's view, before the kernel's carrier is folded in."""
        self._carrier = CarrierWatch(iface, self._carrier_changed)
        self.owner: str | None = None
        """NetworkManager's unique name, as the bus daemon last said: any uid may send
        a signal with NM's path, only NM's own connection has this sender."""

    async def start(self) -> None:
        await self._carrier.start()
        # The handler first: an owner change between the calls is not missed.
        self.bus.add_message_handler(self._on_message)
        for rule in (OWNER_MATCH, MATCH):
            await self._call(BUS, "/org/freedesktop/DBus", BUS, "AddMatch", "s", [rule])
        try:
            self.owner = str(await self._call(BUS, "/org/freedesktop/DBus", BUS,
                                              "GetNameOwner", "s", [NM]))
        except NmError:
            self.owner = None  # not running (yet): its signals count once it owns NM
        await self.refresh()

    def _carrier_changed(self, iface: str, up: bool) -> None:
        if self._last is not None and self._last.iface == iface and not self._closed:
            self._report(self._last)

    def _report(self, nm_view: LinkSnapshot) -> None:
        """NetworkManager's view, with carrier only while the kernel also has it: a
        pulled cable is a lost link now, not when NetworkManager gives up."""
        self._last = nm_view
        kernel = self._carrier.carrier.get(nm_view.iface)
        self.on_snapshot(replace(nm_view, carrier=nm_view.carrier and kernel is not False))

    async def close(self) -> None:
        await self._carrier.close()
        self._closed = True
        self.bus.remove_message_handler(self._on_message)
        with contextlib.suppress(NmError):
            for rule in (MATCH, OWNER_MATCH):
                await self._call(BUS, "/org/freedesktop/DBus", BUS, "RemoveMatch", "s", [rule])

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL or self._closed:
            return
        if (msg.member == "NameOwnerChanged" and msg.sender == BUS and msg.interface == BUS
                and msg.signature == "sss" and msg.body[0] == NM):
            self.owner = str(msg.body[2]) or None  # NM restarted (or gone): re-read
        elif self.owner is None or msg.sender != self.owner:
            return  # a signal NetworkManager did not send
        if self._pending:
            return
        self._pending = True
        asyncio.get_running_loop().create_task(self._refresh_soon())

    async def _refresh_soon(self) -> None:
        self._pending = False
        try:
            await self.refresh()
        except NmError as exc:
            log.info("NetworkManager read failed: %s", exc)

    async def refresh(self) -> None:
        device = await self._device()
        if device is None:
            return
        name, path = device
        state = await self._get(path, DEVICE, "State")
        ip4 = await self._get(path, DEVICE, "Ip4Config")
        addrs: tuple[IPv4Interface, ...] = ()
        gateway: IPv4Address | None = None
        if isinstance(ip4, str) and ip4 != "/":
            data = await self._get(ip4, IP4CONFIG, "AddressData") or []
            addrs = tuple(IPv4Interface(f"{d['address'].value}/{d['prefix'].value}")
                          for d in data if "address" in d and "prefix" in d)
            gw = await self._get(ip4, IP4CONFIG, "Gateway")
            gateway = IPv4Address(gw) if gw else None
        self._report(LinkSnapshot(name, state == STATE_ACTIVATED, addrs, gateway,
                                  leased=await self._leased(path)))

    async def _leased(self, device: str) -> frozenset[IPv4Address]:
        """The address of the device's DHCP lease, if it has one."""
        dhcp = await self._get(device, DEVICE, "Dhcp4Config")
        if not isinstance(dhcp, str) or dhcp == "/":
            return frozenset()
        options = await self._get(dhcp, DHCP4CONFIG, "Options") or {}
        ip = options.get("ip_address")
        value = getattr(ip, "value", ip)
        try:
            return frozenset({IPv4Address(str(value))}) if value else frozenset()
        except ValueError:
            return frozenset()

    async def _device(self) -> tuple[str, str] | None:
        if self.iface is not None:
            try:
                path = await self._call(NM, NM_PATH, NM, "GetDeviceByIpIface", "s", [self.iface])
            except NmError:
                return None
            return self.iface, str(path)
        primary = await self._get(NM_PATH, NM, "PrimaryConnection")
        if not primary or primary == "/":
            return None
        devices = await self._get(str(primary), ACTIVE, "Devices") or []
        if not devices:
            return None
        name = await self._get(devices[0], DEVICE, "Interface")
        return str(name), str(devices[0])

    async def _get(self, path: str, interface: str, prop: str) -> Any:
        try:
            v = await self._call(NM, path, PROPS, "Get", "ss", [interface, prop])
        except NmError:
            return None
        return v.value if v is not None else None

    async def _call(self, dest: str, path: str, interface: str, member: str,  # noqa: PLR0917
                    sig: str, body: list[Any]) -> Any:
        msg = Message(destination=dest, path=path, interface=interface, member=member,
                      signature=sig, body=body)
        try:
            # Bounded: the helper's Connect waits on this under its lock.
            async with asyncio.timeout(CALL_TIMEOUT):
                reply = await self.bus.call(msg)
        except TimeoutError:
            raise NmError(f"{dest} did not answer {member} within {CALL_TIMEOUT:g} s"
                          ) from None
        finally:
            getattr(self.bus, "_method_return_handlers", {}).pop(msg.serial, None)
        if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
            err = reply.error_name if reply is not None else "no reply"
            detail = reply.body[0] if reply is not None and reply.body else ""
            raise NmError(f"{member} on {path}: {err} {detail}".strip())
        return reply.body[0] if reply.body else None
