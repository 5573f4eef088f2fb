"""A userspace IP-in-IP (RFC 2003), GRE (RFC 2784) and RFC 3519 UDP tunnel endpoint.

Packets the kernel routes into the TUN device are encapsulated towards the
outer address the route table gives for them (the care-of address on a home
agent, the home agent on a mobile node) through a raw ``IPPROTO_IPIP`` socket,
behind a GRE header through a raw ``IPPROTO_GRE`` socket (a binding that asked
for GRE: RFC 5944 3.3's G bit), or inside the RFC 3519 tunnel header over UDP
434.  Encapsulated packets that arrive are checked against the accept table
(RFC 3024: the outer source must be the registered tunnel end for the inner
address, and the encapsulation the one registered, 4.3.2) and written into the
TUN device, so the kernel delivers or forwards them.

The tables are the interface: the control plane (home agent, foreign agent,
mobile node) sets entries, an engine moves the packets.  The compiled engine
(``_fastpath``, built with the package) batches its syscalls; the Python engine
here does the same work one packet at a time and is the fallback where the
extension was not built.  The kernel backend (pyroute2 ipip devices) does it
all in the kernel; this module is used where the kernel has no ipip module,
and always for UDP.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from app.net.tun import open_tun

try:
    from app.net import _fastpath
except ImportError:  # built with the package; absent where no C compiler was there
    _fastpath = None  # type: ignore[assignment]

log = logging.getLogger("trustroam.net.ipip")
IPPROTO_IPIP = 4
IPPROTO_GRE = 47
TUNNEL_DATA_HEADER = b"\x04\x04\x00\x00"  # RFC 3519: type 4, next header 4 (IP)
GRE_HEADER = b"\x00\x00\x08\x00"  # RFC 2784: no checksum, version 0, protocol IPv4
GRE_C = 0x80  # checksum present: Checksum and Reserved1 follow the first 4 bytes
GRE_RFC1701 = 0x7C  # bits 1-5: RFC 1701's fields, which a receiver without it discards
GRE_VERSION = 0x07
ETH_P_IPV4 = 0x0800
BATCH = 64
MTU = 1480  # 1500 minus the outer IPv4 header
GRE_MTU = MTU - len(GRE_HEADER)  # what a GRE binding's route carries


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to send a tunnelled packet: IP-in-IP to ``address``, or UDP to (address, port)."""

    address: str
    udp_port: int | None = None
    gre: bool = False
    """GRE (RFC 2784) instead of IP-in-IP; never with a UDP port."""

    def __post_init__(self) -> None:
        if self.gre and self.udp_port:
            raise ValueError("GRE inside RFC 3519 UDP tunnelling is not offered")


class Key(enum.IntEnum):
    """Which inner address a table is keyed by: its offset in the IPv4 header."""

    SOURCE = 12
    DESTINATION = 16


class EngineKind(enum.Enum):
    AUTO = "auto"
    COMPILED = "compiled"
    PYTHON = "python"


class EngineUnavailable(Exception):
    """The compiled engine was asked for but is not built."""


def compiled_engine_available() -> bool:
    return _fastpath is not None


class PythonEngine:
    """The reference engine: the same tables and counters, one syscall per packet."""

    def __init__(self, tun_fd: int, raw_fd: int, udp_fd: int, route_offset: int,
                 accept_offset: int, *, gre_fd: int = -1) -> None:
        self.tun_fd = tun_fd
        self.raw = socket.socket(fileno=os.dup(raw_fd))
        self.gre = socket.socket(fileno=os.dup(gre_fd)) if gre_fd >= 0 else None
        self.udp: socket.socket | None = None
        self.set_udp_fd(udp_fd)
        self.route_offset, self.accept_offset = route_offset, accept_offset
        self.routes: dict[bytes | None, tuple[str, int, bool]] = {}
        self.accepts: dict[bytes | None, tuple[bytes, bool]] = {}
        self._c = dict.fromkeys(("out", "in", "dropped_no_route", "dropped_spoofed",
                                 "malformed", "not_ipv4", "send_errors", "write_errors",
                                 "gre_rejected", "gre_bad_checksum", "wrong_encap"), 0)
        self._buf = bytearray(65536)
        self._view = memoryview(self._buf)

    def close(self) -> None:
        self.raw.close()
        if self.gre is not None:
            self.gre.close()
        self.set_udp_fd(-1)

    def set_udp_fd(self, fd: int, /) -> None:
        if self.udp is not None:
            self.udp.close()
        self.udp = socket.socket(fileno=os.dup(fd)) if fd >= 0 else None

    def set_route(self, key: bytes | None, address: bytes, udp_port: int = 0,
                  gre: bool = False, /) -> None:
        if gre and udp_port:
            raise ValueError(f"GRE over UDP (port {udp_port}) is not offered")
        self.routes[key] = (socket.inet_ntoa(address), udp_port, gre)

    def del_route(self, key: bytes | None, /) -> None:
        self.routes.pop(key, None)

    def set_accept(self, key: bytes | None, outer_source: bytes, gre: bool = False, /) -> None:
        self.accepts[key] = (bytes(outer_source), gre)

    def del_accept(self, key: bytes | None, /) -> None:
        self.accepts.pop(key, None)

    def route_of(self, key: bytes | None, /) -> tuple[bytes, int, bool] | None:
        to = self.routes.get(key, self.routes.get(None))
        return None if to is None else (socket.inet_aton(to[0]), to[1], to[2])

    def accept_of(self, key: bytes | None, /) -> tuple[bytes, bool] | None:
        return self.accepts.get(key, self.accepts.get(None))

    def counters(self) -> dict[str, int]:
        return dict(self._c)

    def write(self, packet: bytes, /) -> None:
        try:
            os.write(self.tun_fd, packet)
            self._c["in"] += 1
        except OSError:
            self._c["write_errors"] += 1

    def pump_tun(self) -> int:
        c, routes, off = self._c, self.routes, self.route_offset
        n = 0
        while n < BATCH:
            try:
                pkt = os.read(self.tun_fd, 65536)
            except BlockingIOError:
                break
            n += 1
            if pkt and pkt[0] >> 4 != 4:
                c["not_ipv4"] += 1  # IPv6 the kernel routes here: not ours
                continue
            if len(pkt) < 20:
                c["malformed"] += 1
                continue
            to = routes.get(pkt[off:off + 4]) or routes.get(None)
            if to is None or (to[1] and self.udp is None) or (to[2] and self.gre is None):
                c["dropped_no_route"] += 1
                continue
            try:
                if to[2]:
                    assert self.gre is not None
                    self.gre.sendto(GRE_HEADER + pkt, (to[0], 0))
                elif to[1] == 0:
                    self.raw.sendto(pkt, (to[0], 0))
                else:
                    assert self.udp is not None
                    self.udp.sendto(TUNNEL_DATA_HEADER + pkt, to)
                c["out"] += 1
            except OSError:  # e.g. no route to the care-of address
                c["send_errors"] += 1
        return n

    def pump_raw(self) -> int:
        return self._pump_in(self.raw, False)

    def pump_gre(self) -> int:
        return 0 if self.gre is None else self._pump_in(self.gre, True)

    def _gre_inner(self, length: int, ihl: int) -> int:
        """Where a GRE packet's payload starts (RFC 2784), or 0 if it is refused."""
        c, buf = self._c, self._buf
        if length < ihl + 4:
            c["malformed"] += 1
            return 0
        b0, b1 = buf[ihl], buf[ihl + 1]
        # 2.3: RFC 1701's bits or a version other than 0: discard; 2.4, RFC 3024 A.2:
        # only IPv4 payloads.
        if b0 & GRE_RFC1701 or b1 & GRE_VERSION or (
                buf[ihl + 2] << 8 | buf[ihl + 3]) != ETH_P_IPV4:
            c["gre_rejected"] += 1
            return 0
        glen = 8 if b0 & GRE_C else 4
        if length < ihl + glen:
            c["malformed"] += 1
            return 0
        if glen == 8 and _checksum(self._view[ihl:length]) != 0:
            c["gre_bad_checksum"] += 1  # 2.2: over the GRE header and the payload
            return 0
        return ihl + glen

    def _pump_in(self, sock: socket.socket, gre: bool) -> int:
        c, buf, view, off = self._c, self._buf, self._view, self.accept_offset
        n = 0
        while n < BATCH * 4:
            try:
                length = sock.recv_into(buf)
            except BlockingIOError:
                break
            n += 1
            ihl = (buf[0] & 0x0F) * 4
            if length < 20 or ihl < 20:
                c["malformed"] += 1
                continue
            inner = self._gre_inner(length, ihl) if gre else ihl
            if not inner:
                continue
            if length < inner + 20 or buf[inner] >> 4 != 4:
                c["malformed"] += 1
                continue
            key = bytes(view[inner + off:inner + off + 4])
            allowed = self.accepts.get(key, self.accepts.get(None))
            if allowed is None or view[12:16] != allowed[0]:
                c["dropped_spoofed"] += 1
                continue
            if allowed[1] != gre:  # RFC 3024 4.3.2: not the encapsulation registered
                c["wrong_encap"] += 1
                continue
            try:
                os.write(self.tun_fd, view[inner:length])
                c["in"] += 1
            except OSError:
                c["write_errors"] += 1
        return n


def _checksum(data: bytes | memoryview) -> int:
    """The one's complement of the one's complement sum (RFC 1071): 0 over data
    whose checksum field is right."""
    b = bytes(data)
    if len(b) % 2:
        b += b"\0"
    total = sum(memoryview(b).cast("H"))  # native order: the fold is byte-order neutral
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _raw_socket(proto: int, local_address: str | None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
    try:
        if local_address is not None:
            # Outer source fixed to this address (an FA's care-of address: RFC 3024
            # requires it), and only tunnels addressed to it are received.
            sock.bind((local_address, 0))
        sock.setblocking(False)
        _grow_buffers(sock)
    except OSError:
        sock.close()
        raise
    return sock


IP_FREEBIND = 15
SOCKET_BUFFER = 2 << 20
"""Bytes: a TSO aggregate from the peer arrives as a burst of up to 45 segments,
and the default 208 KiB receive buffer dropped 5 % of a TCP stream's segments."""
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33


def _grow_buffers(sock: socket.socket) -> None:
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:  # beyond net.core.[rw]mem_max needs CAP_NET_ADMIN, which raw sockets imply
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


if TYPE_CHECKING:
    # One interface, stated once in _fastpath.pyi; PythonEngine has the same methods.
    Engine: TypeAlias = "_fastpath.Engine | PythonEngine"


class UserspaceTunnel:
    """A TUN device and its tunnel sockets, driven from the asyncio loop.

    ``route_by``: which inner address picks the outer destination (a home agent
    routes by destination, a foreign agent reverse-tunnels by source).
    ``accept_by``: which inner address names the tunnel end allowed to send it.
    ``gre``: also open a raw GRE socket, for routes and accepts with ``gre`` set.
    """

    def __init__(self, tun_name: str, route_by: Key, accept_by: Key, *,
                 udp_socket: socket.socket | None = None, local_address: str | None = None,
                 engine: EngineKind = EngineKind.AUTO, gre: bool = False) -> None:
        self.tun_name = tun_name
        self.raw = _raw_socket(IPPROTO_IPIP, local_address)
        try:
            self.gre = _raw_socket(IPPROTO_GRE, local_address) if gre else None
        except OSError:
            self.raw.close()
            raise
        udp_fd = udp_socket.fileno() if udp_socket is not None else -1
        gre_fd = self.gre.fileno() if self.gre is not None else -1
        self.engine: Engine
        self._py: PythonEngine | None = None
        use_compiled = engine is not EngineKind.PYTHON and _fastpath is not None
        if engine is EngineKind.COMPILED and _fastpath is None:
            self._close_sockets()
            raise EngineUnavailable("the compiled tunnel engine (app.net._fastpath) is not "
                                    "built: reinstall the package with a C compiler")
        # The compiled engine takes TCP aggregates from the kernel and hands merged
        # segments back (virtio-net headers on the TUN); the Python one cannot.
        try:
            self.tun_fd = open_tun(tun_name, offload=use_compiled)
        except OSError:
            self._close_sockets()
            raise
        if use_compiled:
            self.engine = _fastpath.Engine(self.tun_fd, self.raw.fileno(), udp_fd,
                                           int(route_by), int(accept_by), vnet_hdr=True,
                                           gre_fd=gre_fd)
            self.engine_kind = EngineKind.COMPILED
        else:
            self._py = PythonEngine(self.tun_fd, self.raw.fileno(), udp_fd, int(route_by),
                                    int(accept_by), gre_fd=gre_fd)
            self.engine = self._py
            self.engine_kind = EngineKind.PYTHON
        self._spoofed = 0  # RFC 3519 packets refused by the caller
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.tun_fd, self.engine.pump_tun)
        self._loop.add_reader(self.raw.fileno(), self.engine.pump_raw)
        if self.gre is not None:
            self._loop.add_reader(self.gre.fileno(), self.engine.pump_gre)
        log.debug("%s: %s engine", self.tun_name, self.engine_kind.value)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.tun_fd)
            self._loop.remove_reader(self.raw.fileno())
            if self.gre is not None:
                self._loop.remove_reader(self.gre.fileno())
            self._loop = None
        if self._py is not None:
            self._py.close()
        if self.tun_fd >= 0:
            os.close(self.tun_fd)
            self.tun_fd = -1
        self._close_sockets()

    def _close_sockets(self) -> None:
        self.raw.close()
        if self.gre is not None:
            self.gre.close()

    def bind(self, address: str, device: str) -> None:
        """Receive only tunnels addressed to ``address`` that arrived on ``device``
        (a mobile node's care-of address and its link, or in mode mc the TIA and
        charon's TUN), and send from that address: a packet with a forged outer
        source reaching another address or interface is not decapsulated.  Again
        on every move (a raw socket may be bound any number of times)."""
        for sock in (self.raw, self.gre):
            if sock is None:
                continue
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)  # the TIA may come later
            sock.bind((address, 0))

    def attach_udp(self, udp_socket: socket.socket) -> None:
        """RFC 3519 tunnel data leaves from this socket (a home agent's port 434)."""
        self.engine.set_udp_fd(udp_socket.fileno())

    # The tables.  Keys are packed inner addresses; None is the default entry.
    def set_route(self, key: bytes | None, endpoint: Endpoint) -> None:
        if endpoint.gre and self.gre is None:
            raise ValueError(f"{self.tun_name}: GRE route without a GRE socket (gre=False)")
        self.engine.set_route(key, socket.inet_aton(endpoint.address), endpoint.udp_port or 0,
                              endpoint.gre)

    def route_of(self, key: bytes | None) -> tuple[bytes, int, bool] | None:
        """(packed outer address, UDP port or 0, GRE) this key's packets go to, if any."""
        return self.engine.route_of(key)

    def remove_route(self, key: bytes | None) -> None:
        self.engine.del_route(key)

    def set_accept(self, key: bytes | None, outer_source: bytes, gre: bool = False) -> None:
        """Who may tunnel packets with this key to us, and in which encapsulation."""
        self.engine.set_accept(key, outer_source, gre)

    def remove_accept(self, key: bytes | None) -> None:
        self.engine.del_accept(key)

    @property
    def stats(self) -> dict[str, int]:
        """The engine's counters, with RFC 3519 packets refused in Python."""
        s = self.engine.counters()
        s["dropped_spoofed"] += self._spoofed
        return s

    def count_spoofed(self) -> None:
        self._spoofed += 1

    def write(self, inner: bytes) -> None:
        """Hand an already-checked packet (from the RFC 3519 UDP path) to the kernel."""
        if len(inner) < 20 or inner[0] >> 4 != 4:
            return
        self.engine.write(inner)
