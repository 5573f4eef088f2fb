"""TUN devices: layer-3 packets between the kernel and this process."""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO_ECN = 0x01, 0x02, 0x08
VNET_HDR_LEN = 10
"""struct virtio_net_hdr: before every packet read or written with IFF_VNET_HDR."""


def open_tun(name: str, *, offload: bool = False) -> int:
    """Create (or attach to) TUN device ``name``; returns a non-blocking fd.

    With ``offload`` every packet carries a virtio-net header and the kernel
    may hand over unchecksummed packets and TCP aggregates of up to 64 KiB
    (TSO) instead of segmenting them itself; the reader must finish both.
    The device exists while the fd is open; configure it with ``ip``.
    """
    if len(name.encode()) > 15:
        raise ValueError(f"interface name {name!r} is longer than 15 bytes")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if offload else 0)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        if offload:
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN)
    except OSError:
        os.close(fd)
        raise
    return fd
