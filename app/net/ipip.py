"""A userspace IP-in-IP (RFC 2003) and RFC 3519 UDP tunnel endpoint.

Packets the kernel routes into the TUN device are encapsulated towards the
outer address chosen by ``route`` (the care-of address on a home agent, the
home agent on a mobile node) through a raw ``IPPROTO_IPIP`` socket, or inside
the RFC 3519 tunnel header over UDP 434.  Encapsulated packets that arrive are
checked by ``accept`` (RFC 3024: the outer source must be the registered
care-of address of the inner source) and written into the TUN device, so the
kernel delivers or forwards them.

The kernel backend (pyroute2 ipip devices) does the same in the kernel; this
one is used where the kernel has no ipip module, and always for UDP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from app.net.tun import open_tun

log = logging.getLogger("trustroam.net.ipip")
IPPROTO_IPIP = 4
TUNNEL_DATA_HEADER = b"\x04\x04\x00\x00"  # RFC 3519: type 4, next header 4 (IP)
BATCH = 256
MTU = 1480  # 1500 minus the outer IPv4 header


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to send a tunnelled packet: IP-in-IP to ``address``, or UDP to (address, port)."""

    address: str
    udp_port: int | None = None


Route = Callable[[bytes], Endpoint | None]
"""inner packet -> outer endpoint, or None to drop."""
Accept = Callable[[bytes, bytes, bytes], bool]
"""(outer source, inner source, inner destination), 4 bytes each -> may it come in?"""


class UserspaceTunnel:
    def __init__(self, tun_name: str, route: Route, accept: Accept,
                 udp_socket: socket.socket | None = None, local_address: str | None = None
                 ) -> None:
        self.tun_name = tun_name
        self.route = route
        self.accept = accept
        self.udp = udp_socket
        self.tun_fd = open_tun(tun_name)
        self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_IPIP)
        if local_address is not None:
            # Outer source fixed to this address (an FA's care-of address: RFC 3024
            # requires it), and only tunnels addressed to it are received.
            self.raw.bind((local_address, 0))
        self.raw.setblocking(False)
        self.stats = {"out": 0, "in": 0, "dropped_no_route": 0, "dropped_spoofed": 0}
        self._buf = bytearray(65535)
        self._view = memoryview(self._buf)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.tun_fd, self._from_tun)
        self._loop.add_reader(self.raw.fileno(), self._from_ipip)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.tun_fd)
            self._loop.remove_reader(self.raw.fileno())
        os.close(self.tun_fd)
        self.raw.close()

    # kernel -> tunnel (the hot loop: locals bound once, counters summed per batch)
    def _from_tun(self) -> None:
        read, fd, route = os.read, self.tun_fd, self.route
        raw_sendto, udp = self.raw.sendto, self.udp
        sent = unrouted = 0
        for _ in range(BATCH):
            try:
                pkt = read(fd, 65535)
            except BlockingIOError:
                break
            if len(pkt) < 20 or pkt[0] >> 4 != 4:
                continue
            ep = route(pkt)
            if ep is None:
                unrouted += 1
                continue
            try:
                if ep.udp_port is None:
                    raw_sendto(pkt, (ep.address, 0))
                elif udp is not None:
                    udp.sendto(TUNNEL_DATA_HEADER + pkt, (ep.address, ep.udp_port))
                sent += 1
            except OSError as exc:  # e.g. no route to the care-of address
                log.debug("cannot tunnel to %s: %s", ep.address, exc.strerror)
        self.stats["out"] += sent
        self.stats["dropped_no_route"] += unrouted

    # tunnel -> kernel: one receive buffer, no copy of the inner packet
    def _from_ipip(self) -> None:
        buf, view = self._buf, self._view
        recv_into, write, fd, accept = self.raw.recv_into, os.write, self.tun_fd, self.accept
        delivered = spoofed = 0
        for _ in range(BATCH):
            try:
                n = recv_into(buf)
            except BlockingIOError:
                break
            ihl = (buf[0] & 0x0F) * 4
            if n < ihl + 20 or buf[ihl] >> 4 != 4:
                continue
            if not accept(bytes(view[12:16]), bytes(view[ihl + 12:ihl + 16]),
                          bytes(view[ihl + 16:ihl + 20])):
                spoofed += 1
                continue
            try:
                write(fd, view[ihl:n])
                delivered += 1
            except OSError as exc:
                log.debug("TUN write failed: %s", exc.strerror)
        self.stats["in"] += delivered
        self.stats["dropped_spoofed"] += spoofed

    def deliver(self, outer_src: bytes, inner: bytes) -> None:
        """Hand a decapsulated packet to the kernel if ``accept`` allows it."""
        if len(inner) < 20 or inner[0] >> 4 != 4:
            return
        if not self.accept(outer_src, inner[12:16], inner[16:20]):
            self.stats["dropped_spoofed"] += 1
            return
        self.write(inner)

    def write(self, inner: bytes) -> None:
        """Hand an already-checked packet to the kernel."""
        try:
            os.write(self.tun_fd, inner)
            self.stats["in"] += 1
        except OSError as exc:
            log.debug("TUN write failed: %s", exc.strerror)
