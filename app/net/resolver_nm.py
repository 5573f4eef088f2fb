"""The intranet's resolvers through NetworkManager, where systemd-resolved does not run.

NetworkManager has no per-link resolver API for a device it does not manage (our
tunnel ``trmn0``); what it has is its *global DNS configuration*, the D-Bus
property ``org.freedesktop.NetworkManager.GlobalDnsConfiguration``: while it is
set, NetworkManager uses it instead of every connection's DHCP resolvers (its
own ``/etc/resolv.conf`` with ``dns=default``, or its dnsmasq).  The servers are
then asked from an unbound socket, which the mode's routes send where the home
address goes (the tunnel in c and mc, the foreign agent in f).

So: set while a mode is open, cleared (the empty dictionary) on every way out.
NetworkManager keeps that property across its restarts (NetworkManager-intern.conf):
at start, a configuration equal to ours is one a crashed helper left, and is
cleared; another (an administrator's) is left alone, and then ours is not set
over it either.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any

from app.api import Mode
from app.dbus import Message, MessageBus, Variant, call

log = logging.getLogger("trustroam.net.resolver")

NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
DEVICE = "org.freedesktop.NetworkManager.Device"
IP4CONFIG = "org.freedesktop.NetworkManager.IP4Config"
PROPERTIES = "org.freedesktop.DBus.Properties"
GLOBAL_DNS = "GlobalDnsConfiguration"
TIMEOUT = 5.0
"""Seconds for one call to NetworkManager (it writes resolv.conf before answering)."""


def _unwrap(value: Any) -> Any:
    while isinstance(value, Variant):
        value = value.value
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


class NmGlobalDns:
    """The profile's resolvers as NetworkManager's global DNS (see the module's text)."""

    def __init__(self, servers: Sequence[IPv4Address], domains: Sequence[str], *,
                 bus: MessageBus) -> None:
        self.servers = tuple(servers)
        self.domains = tuple(domains)
        self.bus = bus
        self._on = False
        self._foreign = False
        """An administrator's global DNS is there: it stays, ours is not set."""

    def config(self) -> dict[str, Variant]:
        return {"searches": Variant("as", list(self.domains)),
                "domains": Variant("a{sv}", {"*": Variant("a{sv}", {
                    "servers": Variant("as", [str(s) for s in self.servers])})})}

    def _ours(self, current: dict[str, Any]) -> bool:
        """The servers alone decide (the profile's domains may have been edited since
        a crash left it): a catch-all ``*`` with exactly our servers and nothing else."""
        domains = current.get("domains")
        if not isinstance(domains, dict) or set(domains) != {"*"}:
            return False
        star = domains["*"]
        return isinstance(star, dict) and star.get("servers") == [str(s) for s in self.servers]

    async def start(self) -> None:
        current = _unwrap(await self._get(NM_PATH, NM, GLOBAL_DNS))
        if current and self._ours(current):
            await self._set({})  # a crashed helper's
            log.info("NetworkManager's global DNS left by a previous helper: cleared")
        elif current:
            self._foreign = True
            log.warning("NetworkManager has a global DNS configuration of its own: the "
                        "profile's [dns] servers are not installed over it")

    async def apply(self, mode: Mode, ifindex: int | None) -> None:
        want = mode is not Mode.NONE and ifindex is not None and not self._foreign
        if want and not self._on and mode is Mode.HOME and ifindex is not None \
                and await self._link_has_resolvers(ifindex):
            return  # the home link's DHCP gave them
        if want and not self._on:
            await self._set(self.config())
            self._on = True
            log.info("resolvers %s for every name (NetworkManager's global DNS, mode %s)",
                     ", ".join(map(str, self.servers)), mode.value)
        elif not want and self._on:
            self._on = False
            await self._set({})

    async def close(self) -> None:
        if self._on:
            self._on = False
            await self._set({})

    async def _link_has_resolvers(self, ifindex: int) -> bool:
        reply = await self._call(Message(destination=NM, path=NM_PATH, interface=NM,
                                         member="GetDevices"))
        for path in reply.body[0]:
            if _unwrap(await self._get(path, DEVICE, "Ifindex")) != ifindex:
                continue
            config = _unwrap(await self._get(path, DEVICE, "Ip4Config"))
            if config in ("", "/"):
                return False
            return bool(_unwrap(await self._get(config, IP4CONFIG, "Nameservers")))
        return False

    async def _get(self, path: str, interface: str, name: str) -> Any:
        reply = await self._call(Message(destination=NM, path=path, interface=PROPERTIES,
                                         member="Get", signature="ss", body=[interface, name]))
        return reply.body[0]

    async def _set(self, value: dict[str, Variant]) -> None:
        await self._call(Message(destination=NM, path=NM_PATH, interface=PROPERTIES,
                                 member="Set", signature="ssv",
                                 body=[NM, GLOBAL_DNS, Variant("a{sv}", value)]))

    async def _call(self, msg: Message) -> Message:
        return await call(self.bus, msg, TIMEOUT, "NetworkManager")
