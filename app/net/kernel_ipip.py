"""The kernel data plane: one ``ipip`` device per care-of address (pyroute2), and
one ``gre`` device per care-of address with GRE bindings (RFC 2784, the G bit).

What desktops and servers with the ``ipip`` module get (and ``ip_gre`` for GRE).
Tunnels, routes and proxy-ARP entries are netlink requests; the kernel forwards
every packet.
RFC 3519 UDP tunnelling has no kernel implementation and stays in userspace.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from app.net.netlink import Netlink, NetlinkError

log = logging.getLogger("trustroam.net.kernel")
NTF_PROXY = 0x08
PROBE_NAME = "mipprobe0"
GRE_PROBE_NAME = "mipgprobe0"


def tunnel_name(care_of: IPv4Address, gre: bool = False) -> str:
    """A stable, IFNAMSIZ-safe device name per care-of address and encapsulation,
    e.g. ``mip0a1e0105`` (ipip) or ``mipg0a1e0105`` (gre)."""
    return f"mip{'g' if gre else ''}{int(care_of):08x}"


def _probe(nl: Netlink, kind: str, name: str) -> bool:
    try:
        nl.call("link", "add", ifname=name, kind=kind)
    except NetlinkError as exc:  # EEXIST still means supported;
        return bool(exc.code == errno.EEXIST)  # EOPNOTSUPP, EPERM...: not usable
    nl.call("link", "del", ifname=name)
    return True


def ipip_supported(nl: Netlink) -> bool:
    """Ask the kernel for an ipip device once; EOPNOTSUPP means no ipip module."""
    return _probe(nl, "ipip", PROBE_NAME)


def gre_supported(nl: Netlink) -> bool:
    """Ask the kernel for a gre device once; EOPNOTSUPP means no ip_gre module."""
    return _probe(nl, "gre", GRE_PROBE_NAME)


@dataclass
class _Tunnel:
    name: str
    index: int | None
    users: int


class KernelIpipTunnels:
    """Home-agent side: attract a home address and send it into the CoA's ipip (or,
    for a GRE binding, gre) device."""

    def __init__(self, nl: Netlink, local: IPv4Address, home_ifindex: int,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.nl = nl
        self.local = local
        self.home_ifindex = home_ifindex
        self.tunnels: dict[tuple[IPv4Address, bool], _Tunnel] = {}
        self.routes: dict[IPv4Address, tuple[IPv4Address, bool]] = {}
        """Home address -> (care-of address, GRE)."""
        self._on_error = on_error or (lambda msg: log.error("%s", msg))

    def _check(self, what: str) -> Callable[[Future[Any]], None]:
        def done(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                self._on_error(f"{what}: {exc}")
        return done

    def _request(self, what: str, method: str, *args: Any, **kwargs: Any) -> Future[Any]:
        fut = self.nl.submit(method, *args, **kwargs)
        fut.add_done_callback(self._check(what))
        return fut

    def up(self, home_address: IPv4Address, care_of: IPv4Address, gre: bool = False) -> None:
        old = self.routes.get(home_address)
        to = (care_of, gre)
        if old == to:
            return
        if old is not None:
            self._release(old)
        tun = self.tunnels.get(to)
        if tun is None:
            name = tunnel_name(care_of, gre)
            kind = "gre" if gre else "ipip"
            self._request(f"create {name}", "link", "add", ifname=name, kind=kind,
                          **{f"{kind}_local": str(self.local), f"{kind}_remote": str(care_of),
                             f"{kind}_ttl": 64})
            self._request(f"bring up {name}", "link", "set", ifname=name, state="up")
            tun = self.tunnels[to] = _Tunnel(name, None, 0)
        tun.users += 1
        self.routes[home_address] = to
        self._request(f"route {home_address}", "route", "replace", dst=f"{home_address}/32",
                      oif=self._index_of(tun))
        self._request(f"proxy ARP {home_address}", "neigh", "replace", dst=str(home_address),
                      ifindex=self.home_ifindex, flags=NTF_PROXY)

    def down(self, home_address: IPv4Address) -> None:
        care_of = self.routes.pop(home_address, None)
        if care_of is None:
            return
        self._request(f"unroute {home_address}", "route", "del", dst=f"{home_address}/32")
        self._request(f"withdraw proxy ARP {home_address}", "neigh", "del",
                      dst=str(home_address), ifindex=self.home_ifindex, flags=NTF_PROXY)
        self._release(care_of)

    def _release(self, to: tuple[IPv4Address, bool]) -> None:
        tun = self.tunnels[to]
        tun.users -= 1
        if tun.users == 0:
            del self.tunnels[to]
            self._request(f"delete {tun.name}", "link", "del", ifname=tun.name)

    def _index_of(self, tun: _Tunnel) -> int:
        if tun.index is None:
            found = self.nl.submit("link_lookup", ifname=tun.name).result()
            tun.index = found[0] if found else 0
        return tun.index

    def close(self) -> None:
        for hoa in list(self.routes):
            self.down(hoa)
