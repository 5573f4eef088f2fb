"""The access link's address with its prefix, as the kernel has it (``getifaddrs``).

The gate's decision names only the link address; ``allow_lan`` needs the on-link
subnet around it (:func:`app.net.gate_rules.lan_subnet` judges it).  libc's
``getifaddrs`` lists every IPv4 address of every interface with its netmask in
one netlink dump (well under a millisecond): no pyroute2 socket, no event loop.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import socket
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path


class _SockaddrIn(ctypes.Structure):
    _fields_ = [("family", ctypes.c_ushort), ("port", ctypes.c_uint16),
                ("addr", ctypes.c_uint8 * 4), ("zero", ctypes.c_uint8 * 8)]


class _IfAddrs(ctypes.Structure):
    pass


_IfAddrs._fields_ = [("next", ctypes.POINTER(_IfAddrs)), ("name", ctypes.c_char_p),
                     ("flags", ctypes.c_uint), ("addr", ctypes.POINTER(_SockaddrIn)),
                     ("netmask", ctypes.POINTER(_SockaddrIn)), ("ifu", ctypes.c_void_p),
                     ("data", ctypes.c_void_p)]


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.getifaddrs.argtypes = [ctypes.POINTER(ctypes.POINTER(_IfAddrs))]
    libc.freeifaddrs.argtypes = [ctypes.POINTER(_IfAddrs)]
    return libc


def ipv4_interfaces() -> list[tuple[str, IPv4Interface]]:
    """Every IPv4 address of the machine with its prefix: (interface, address/prefix)."""
    libc = _libc()
    head = ctypes.POINTER(_IfAddrs)()
    if libc.getifaddrs(ctypes.byref(head)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "getifaddrs failed")
    found = []
    try:
        node = head
        while node:
            ifa = node.contents
            if ifa.addr and ifa.netmask and ifa.addr.contents.family == socket.AF_INET:
                addr = IPv4Address(bytes(ifa.addr.contents.addr))
                mask = IPv4Address(bytes(ifa.netmask.contents.addr))
                found.append((ifa.name.decode(errors="replace"),
                              IPv4Interface(f"{addr}/{mask}")))
            node = ifa.next
    finally:
        libc.freeifaddrs(head)
    return found


def link_interface(iface: str, address: IPv4Address) -> IPv4Interface | None:
    """``address`` on ``iface`` with its prefix; None when the link no longer has it."""
    for name, ifc in ipv4_interfaces():
        if name == iface and ifc.ip == address:
            return ifc
    return None


def _router(iface: str, routes: str) -> IPv4Address | None:
    """The default route's gateway on ``iface`` in ``/proc/net/route`` text (the main
    table: where DHCP clients and NetworkManager put it)."""
    for line in routes.splitlines()[1:]:
        f = line.split()
        if len(f) >= 4 and f[0] == iface and f[1] == "00000000" and f[2] != "00000000":
            return IPv4Address(int(f[2], 16).to_bytes(4, "little"))
    return None


def _mac(address: IPv4Address, iface: str, arp: str) -> str | None:
    """``address``'s link-layer address on ``iface`` in ``/proc/net/arp`` text."""
    for line in arp.splitlines()[1:]:
        f = line.split()
        if len(f) >= 6 and f[0] == str(address) and f[5] == iface and f[2] != "0x0":
            return f[3].lower()
    return None


def network_identity(iface: str, link: IPv4Interface, *, routes: str | None = None,
                     arp: str | None = None) -> str | None:
    """How the user's per-network choice recognises a network: its on-link subnet and
    its router's link-layer address (``192.168.1.0/24 router 02:00:5e:..``); None
    when the router is not known yet.  Not a proof: a hostile network can copy both
    (README: the trade-off of allow_lan)."""
    try:
        routes = routes if routes is not None else Path("/proc/net/route").read_text()
        arp = arp if arp is not None else Path("/proc/net/arp").read_text()
    except OSError:
        return None
    router = _router(iface, routes)
    if router is None or router not in link.network:
        return None
    mac = _mac(router, iface, arp)
    return f"{link.network} router {mac}" if mac else None
