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
