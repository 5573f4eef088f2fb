"""The mobile node's addresses, routes and tunnel for each access mode (pyroute2).

Policy routing keeps every kind of traffic on its path whatever the mode:

    pref 89   to <VPN gateway> lookup 101                    IKE and ESP: by the link, always
    pref 90   from all lookup main suppress_prefixlength 0   on-link and local routes
    pref 91   from <link address> lookup 101                  the link's own traffic
    pref 100  from all lookup 100                             the mode's default path

Table 101 holds the access link's default route (source: the link address), so
the registration socket (bound to the link address), DHCP and charon's IKE and
ESP always leave on the physical link from the link's address, never through a
tunnel nor from the home address a mode left behind (charon picks its source by
route lookup: a new IKE SA made while mode f's routes were still in place would
leave from the home address and get no answer).  Table 100 holds, per mode:

- ``c``: the home address on the tunnel device, default into the tunnel (reverse
  tunnelling), the home agent via the physical next hop (the tunnel's outer path);
- ``f``: the home address on the link, default via the foreign agent;
- ``h``: the home address on the link in the home prefix, default via the router,
  and a gratuitous ARP so neighbours stop using the home agent's proxy entry;
- ``mc``: as ``c``, but the tunnel's outer source is the VPN's tunnel inner
  address (TIA) and its path to the home agent goes into the VPN (charon's
  ``ipsec0`` with kernel-libipsec; with kernel ESP, the link's next hop, where
  charon's XFRM policy encrypts it).

While the VPN is up, ``pref 92 from <TIA> lookup 220`` sends what leaves from the
TIA (the registration through the VPN) by charon's table, whatever table 100
holds from the mode before.

The tunnel device is a userspace TUN + raw IP-in-IP socket here, or a kernel
``ipip`` device where the kernel has one: same routes either way.  A binding the
home agent UDP-tunnels (RFC 3519, behind a NAT, in mode c or inside the VPN) always
takes the userspace device (:meth:`MobileNodeRoutes.plane`).  Everything
is removed by :meth:`MobileNodeRoutes.clear` when the mode changes or the
helper stops.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from app.api import Mode
from app.mip.messages import MIP_PORT
from app.net.arp import ArpAnnouncer
from app.net.ipip import MTU, Endpoint, Key, UserspaceTunnel
from app.net.netlink import AsyncIPRoute, NetlinkError
from app.net.resolver import Resolvers

log = logging.getLogger("trustroam.net.routes")
TUNNEL = "trmn0"
TABLE_MODE = 100
TABLE_LINK = 101
PREF_GATEWAY = 89
PREF_MAIN = 90
PREF_LINK = 91
PREF_VPN = 92
PREF_MODE = 100
TABLE_CHARON = 220
"""strongSwan's routing table (charon.routing_table)."""
VPN_DEVICE = "ipsec0"
KERNEL_ESP_MTU = 1420
"""With kernel ESP (no ``ipsec0``): what a 1500-byte link leaves after ESP in UDP
(outer IP 20, UDP 8, ESP 8, IV up to 16, padding, ICV up to 16: about 80 bytes)."""
"""kernel-libipsec's TUN device; absent with kernel ESP."""
MAIN_TABLE = 254
UDP_TUNNEL_OVERHEAD = 12
"""RFC 3519 3.3: UDP (8) and the tunnel data header (4) after the outer IPv4 header."""


class Backend(Enum):
    USERSPACE = "userspace"
    KERNEL = "kernel"


@dataclass(frozen=True, slots=True)
class LinkInfo:
    iface: str
    address: IPv4Interface
    gateway: IPv4Address


class MobileNodeRoutes:
    def __init__(self, home: IPv4Address, home_network: IPv4Network, home_agent: IPv4Address,
                 backend: Backend = Backend.USERSPACE, ipr: Any = None, *,
                 arp_permit: Callable[[str], bool] = lambda ifname: True,
                 dns: Resolvers | None = None) -> None:
        self.home = home
        self.home_network = home_network
        self.home_agent = home_agent
        self.backend = backend
        self.ipr: Any = ipr
        self.link: LinkInfo | None = None
        self.mode = Mode.NONE
        self._home_on: tuple[int, int] | None = None
        """(ifindex, prefixlen) where the home address currently is."""
        self._tunnel: UserspaceTunnel | None = None
        self._tunnel_index: int | None = None
        self._indexes: dict[str, int] = {}
        self._vpn_tia: IPv4Address | None = None
        self._gateways: set[IPv4Address] = set()
        self._mtu = MTU
        self._routes: dict[str, dict[str, Any]] = {}
        self._stale_home: tuple[int, int] | None = None
        """Table 100 as this class last set it: destination -> attributes."""
        self.arp = ArpAnnouncer(arp_permit)
        """Interface indexes by name (an interface that is re-created is looked up again
        after a failure)."""
        self.dns = dns
        """The profile's resolvers, put where the home address is (finish())."""
        self._dns_at: tuple[Mode, int] | None = None

    async def start(self) -> None:
        if self.ipr is None:
            self.ipr = AsyncIPRoute()
        await self._clear_rules()
        await self.ipr.rule("add", priority=PREF_MAIN, table=MAIN_TABLE, suppress_prefixlen=0)
        await self.ipr.rule("add", priority=PREF_MODE, table=TABLE_MODE)
        if self.dns is not None:
            await self.dns.start()

    async def set_link(self, link: LinkInfo) -> None:
        """A new access link: its own traffic leaves through it from now on.

        On the handover's critical path (the registration request waits for it):
        one route replace, and the source rule only when the address changed.
        """
        if self.link is not None and self.link.iface != link.iface:
            self._indexes.clear()
        index = await self._index(link.iface)
        await self.ipr.route("replace", dst="0.0.0.0/0", gateway=str(link.gateway), oif=index,
                             prefsrc=str(link.address.ip), table=TABLE_LINK)
        old = self.link.address.ip if self.link is not None else None
        if old != link.address.ip:
            if old is not None:
                await self._quiet("rule", "del", priority=PREF_LINK, table=TABLE_LINK,
                                  src=str(old), src_len=32)
            await self.ipr.rule("add", priority=PREF_LINK, table=TABLE_LINK,
                                src=str(link.address.ip), src_len=32)
        self.link = link

    async def vpn_gateway(self, gateway: IPv4Address) -> None:
        """IKE and ESP to ``gateway`` take the access link (rule ``pref 89``)."""
        if gateway in self._gateways:
            return
        await self.ipr.rule("add", priority=PREF_GATEWAY, table=TABLE_LINK, dst=str(gateway),
                            dst_len=32)
        self._gateways.add(gateway)

    async def vpn_source(self, tia: IPv4Address | None) -> None:
        """The TIA's own traffic by charon's table (None: the VPN is gone)."""
        if tia == self._vpn_tia:
            return
        if self._vpn_tia is not None:
            await self._quiet("rule", "del", priority=PREF_VPN, table=TABLE_CHARON,
                              src=str(self._vpn_tia), src_len=32)
        self._vpn_tia = tia
        if tia is not None:
            await self.ipr.rule("add", priority=PREF_VPN, table=TABLE_CHARON, src=str(tia),
                                src_len=32)

    async def configure(self, mode: Mode, foreign_agent: IPv4Address | None = None,
                        udp: socket.socket | None = None,
                        tia: IPv4Address | None = None) -> None:
        """Put the home address and the default path where ``mode`` needs them.

        Only what differs from the current mode is changed (a c -> c move is two
        route replaces), so the gate opens a few milliseconds after the reply.
        ``tia``: mode mc's tunnel inner address.
        """
        if mode is Mode.VPN and tia is None:
            raise ValueError("mode mc needs the VPN's tunnel inner address")
        link = self.link
        if mode is Mode.NONE or link is None:
            await self._withdraw_mode()
            return
        index = await self._index(link.iface)
        routes: dict[str, dict[str, Any]] = {}
        if mode is Mode.COLOCATED:
            tun = await self._tunnel_device(link.address.ip, udp, link.iface)
            await self._tunnel_mtu(tun, MTU - (UDP_TUNNEL_OVERHEAD if udp else 0))
            home_at = (tun, 32)
            routes[f"{self.home_agent}/32"] = {"gateway": str(link.gateway), "oif": index,
                                               "prefsrc": str(link.address.ip)}
            routes["0.0.0.0/0"] = {"oif": tun, "prefsrc": str(self.home)}
        elif mode is Mode.VPN:
            assert tia is not None
            vpn = await self.ipr.link_lookup(ifname=VPN_DEVICE)
            # Tunnelled packets come out of charon's TUN (kernel-libipsec), or, with
            # kernel ESP, decrypted on the link.
            # RFC 5266 4: a TIA translated on its way to the home agent gets an RFC 3519
            # UDP tunnel inside the VPN (``udp``: the TIA's registration socket).
            tun = await self._tunnel_device(tia, udp, device=VPN_DEVICE if vpn else link.iface)
            home_at = (tun, 32)
            # Inside the VPN the tunnel's packets must fit charon's TUN whole: an
            # outer packet above its MTU would be fragmented before ESP.
            await self._tunnel_mtu(tun, min(MTU, _mtu(VPN_DEVICE, KERNEL_ESP_MTU) - 20
                                            - (UDP_TUNNEL_OVERHEAD if udp else 0)))
            # The Mobile IP tunnel inside the VPN: outer packets from the TIA into
            # charon's TUN (userspace ESP), or by the link where kernel ESP takes them.
            routes[f"{self.home_agent}/32"] = (
                {"oif": int(vpn[0]), "prefsrc": str(tia)} if vpn else
                {"gateway": str(link.gateway), "oif": index, "prefsrc": str(tia)})
            routes["0.0.0.0/0"] = {"oif": tun, "prefsrc": str(self.home)}
        elif mode is Mode.FOREIGN_AGENT:
            home_at = (index, 32)
            routes["0.0.0.0/0"] = {"gateway": str(foreign_agent or link.gateway), "oif": index,
                                   "prefsrc": str(self.home)}
        else:
            home_at = (index, self.home_network.prefixlen)
            routes["0.0.0.0/0"] = {"gateway": str(link.gateway), "oif": index,
                                   "prefsrc": str(self.home)}
        on_tunnel = mode in (Mode.COLOCATED, Mode.VPN)
        if self._home_on != home_at:
            # The old location goes in finish(), after the gate opened: it is clean-up,
            # not part of the new path.
            if self._home_on is not None and self._home_on[0] != home_at[0]:
                self._stale_home = self._home_on
            else:
                await self._remove_home_address()
            await self._home_address(*home_at)
        elif not on_tunnel:
            # Again (idempotent): a DHCP client may have flushed the link's addresses.
            await self._home_address(*home_at)
        for dst in set(self._routes) - set(routes):
            await self._quiet("route", "del", dst=dst, table=TABLE_MODE)
        for dst, attrs in routes.items():
            # A route into our own tunnel survives anything that happens to the link;
            # routes through the link are replaced (the kernel may have dropped them).
            if self._routes.get(dst) == attrs and attrs["oif"] == self._tunnel_index:
                continue
            await self.ipr.route("replace", dst=dst, table=TABLE_MODE, **attrs)
        self._routes = routes
        if mode is not Mode.HOME:
            self.arp.cancel(self.home)
        self.mode = mode
        self._dns_at = (mode, home_at[0])

    def announce_home(self, iface: str | None = None) -> None:
        """Gratuitous ARP for the home address on the home link (RFC 5944 4.6).

        Called with ``iface`` when the home agent's answer proved the link home,
        before the deregistration, and again once the gate is open in mode h: the
        announcer asks the gate's decision before every frame, so none leaves on
        any other link.
        """
        link = self.link
        if iface is None:
            if link is None or self.mode is not Mode.HOME:
                return
            iface = link.iface
        try:
            mac = bytes.fromhex(Path(f"/sys/class/net/{iface}/address").read_text()
                                .strip().replace(":", ""))
            self.arp.announce(iface, mac, self.home)
        except OSError as exc:
            log.warning("cannot announce the home address on %s: %s", iface, exc)

    async def home_for_probe(self, iface: str) -> None:
        """The home address on ``iface`` (/32) while the home link is probed."""
        index = await self._index(iface)
        if self._home_on is not None and self._home_on[0] == index:
            # Again (idempotent): a re-plug or a DHCP client may have flushed it.
            await self._home_address(*self._home_on)
            return
        await self._remove_home_address()
        await self._home_address(index, 32)

    def tunnel_write(self, inner: bytes) -> None:
        """A packet the home agent tunnelled over UDP (RFC 3519), into the tunnel device."""
        if self._tunnel is not None:
            self._tunnel.write(inner)

    async def finish(self) -> None:
        """Clean-up left out of the critical path by :meth:`configure`, and the
        resolvers of the mode (after the gate opened: they need the new path)."""
        stale, self._stale_home = self._stale_home, None
        if stale is not None and stale != self._home_on:
            await self._quiet("addr", "del", index=stale[0], address=str(self.home),
                              prefixlen=stale[1])
        if self.dns is not None:
            mode, index = self._dns_at or (Mode.NONE, None)
            await self.dns.apply(mode, index)

    async def clear(self) -> None:
        """Remove every address, route, rule and tunnel this class made."""
        if self.ipr is None:
            return  # never started: it made nothing
        await self._withdraw_mode()
        if self.dns is not None:
            await self.dns.close()
        await self._quiet("flush_routes", table=TABLE_LINK)
        await self._clear_rules()
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        elif self._tunnel_index is not None:  # the kernel's device
            await self._quiet("link", "del", index=self._tunnel_index)
        self._tunnel_index = None
        self._mtu = MTU
        self.link = None

    def close(self) -> None:
        if self.ipr is not None:
            self.ipr.close()

    # -- pieces ------------------------------------------------------------------

    async def _withdraw_mode(self) -> None:
        self._dns_at = None
        await self.finish()
        self.arp.cancel(self.home)
        await self._quiet("flush_routes", table=TABLE_MODE)
        self._routes = {}
        await self._remove_home_address()
        self.mode = Mode.NONE

    async def _remove_home_address(self) -> None:
        if self._home_on is not None:
            index, plen = self._home_on
            await self._quiet("addr", "del", index=index, address=str(self.home),
                              prefixlen=plen)
            self._home_on = None

    async def _home_address(self, index: int, prefixlen: int) -> None:
        await self.ipr.addr("replace", index=index, address=str(self.home),
                            prefixlen=prefixlen)
        self._home_on = (index, prefixlen)

    async def _tunnel_device(self, local: IPv4Address, udp: socket.socket | None = None,
                             device: str | None = None) -> int:
        """The tunnel from ``local`` (the care-of address) to the home agent; the
        userspace one receives only what reaches ``local`` by ``device``."""
        kernel = self.plane(udp is not None) is Backend.KERNEL
        if kernel != (self._tunnel is None) and self._tunnel_index is not None:
            await self._drop_device()  # the other plane's device: one trmn0 at a time
        if kernel:
            if self._tunnel_index is None:
                await self.ipr.link("add", ifname=TUNNEL, kind="ipip",
                                    ipip_local=str(local),
                                    ipip_remote=str(self.home_agent))
                self._tunnel_index = await self._index(TUNNEL)
                await self.ipr.link("set", index=self._tunnel_index, state="up", mtu=MTU)
            else:  # a new care-of address: same device, new outer source
                await self.ipr.link("set", index=self._tunnel_index, kind="ipip",
                                    ipip_local=str(local),
                                    ipip_remote=str(self.home_agent))
        elif self._tunnel is None:
            # Everything the mode table sends here goes to the home agent, and
            # only the home agent may tunnel packets to us.
            self._tunnel = UserspaceTunnel(TUNNEL, Key.SOURCE, Key.DESTINATION)
            self._tunnel.set_route(None, Endpoint(str(self.home_agent)))
            self._tunnel.set_accept(None, self.home_agent.packed)
            self._tunnel.start()
            self._tunnel_index = await self._index(TUNNEL)
            await self.ipr.link("set", index=self._tunnel_index, state="up", mtu=MTU)
        if self._tunnel is not None:
            if device is not None:
                try:
                    self._tunnel.bind(str(local), device)
                except OSError as exc:  # the gate's input chain still holds
                    log.warning("%s: cannot bind the tunnel socket to %s on %s: %s", TUNNEL,
                                local, device, exc.strerror)
            # RFC 3519: through a NAT the tunnel is UDP from the registration's own
            # socket (the NAT mapping the home agent bound); else plain IP-in-IP.
            if udp is not None:
                self._tunnel.attach_udp(udp)
            self._tunnel.set_route(None, Endpoint(str(self.home_agent),
                                                  MIP_PORT if udp is not None else None))
        assert self._tunnel_index is not None
        return self._tunnel_index

    def plane(self, udp_tunnel: bool) -> Backend:
        """The data plane of a binding: RFC 3519 has no kernel encapsulation (its
        4-byte header after UDP 434 has no kernel tunnel type), so a UDP-tunnelled
        binding takes the userspace plane whatever ``backend`` says."""
        return Backend.USERSPACE if udp_tunnel else self.backend

    async def _drop_device(self) -> None:
        """The tunnel device of the plane no longer in use goes, and with it the home
        address and the routes on it (the next configure puts them on the new one)."""
        old = self._tunnel_index
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        else:
            await self._quiet("link", "del", index=old)
        self._tunnel_index = None
        self._indexes.pop(TUNNEL, None)
        self._mtu = MTU
        if self._home_on is not None and self._home_on[0] == old:
            self._home_on = None
        if self._stale_home is not None and self._stale_home[0] == old:
            self._stale_home = None
        self._routes = {d: a for d, a in self._routes.items() if a.get("oif") != old}

    async def _tunnel_mtu(self, index: int, mtu: int) -> None:
        if self._mtu != mtu:
            await self.ipr.link("set", index=index, mtu=mtu)
            self._mtu = mtu

    async def _clear_rules(self) -> None:
        self._vpn_tia = None
        self._gateways.clear()
        for pref in (PREF_GATEWAY, PREF_MAIN, PREF_LINK, PREF_VPN, PREF_MODE):
            for _ in range(64):  # duplicates left by a crashed helper; bounded regardless
                if not await self._quiet("rule", "del", priority=pref):
                    break

    async def _index(self, iface: str) -> int:
        if iface in self._indexes:
            return self._indexes[iface]
        found = await self.ipr.link_lookup(ifname=iface)
        if not found:
            raise OSError(errno.ENOENT, f"no interface {iface}")
        self._indexes[iface] = int(found[0])
        return self._indexes[iface]

    async def _quiet(self, method: str, *args: Any, **kwargs: Any) -> bool:
        """A removal that may find nothing to remove; True if it did something."""
        try:
            await getattr(self.ipr, method)(*args, **kwargs)
        except NetlinkError as exc:
            if exc.code in (errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL):
                return False
            raise
        return True


PROBE_NAME = "trmnprobe0"


def _mtu(iface: str, default: int) -> int:
    try:
        return int(Path(f"/sys/class/net/{iface}/mtu").read_text())
    except (OSError, ValueError):
        return default


async def default_backend() -> Backend:
    """The kernel backend where the kernel can make an ipip device, else userspace."""
    ipr = AsyncIPRoute()
    try:
        await ipr.link("add", ifname=PROBE_NAME, kind="ipip")
    except NetlinkError as exc:  # EOPNOTSUPP (no ipip module), EPERM...: not usable
        supported = exc.code == errno.EEXIST  # a leftover probe: ipip is there
    else:
        supported = True
        await ipr.link("del", ifname=PROBE_NAME)
    finally:
        ipr.close()
    return Backend.KERNEL if supported else Backend.USERSPACE
