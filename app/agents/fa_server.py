"""The foreign agent's asyncio driver: registration relay, advertisements, data plane."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
import time
from collections.abc import Callable
from ipaddress import IPv4Address

from app.agents.fa_core import (
    ForeignAgent,
    Result,
    ToHomeAgent,
    ToMobileNode,
    VisitorDown,
    VisitorUp,
)
from app.agents.fa_userspace import UserspaceForeignAgentPlane
from app.mip.errors import DecodeError
from app.mip.icmp import (
    ALL_ROUTERS,
    ALL_SYSTEMS,
    ICMP_ROUTER_SOLICITATION,
    MOBILE_AGENTS,
    AgentSolicitation,
)
from app.mip.messages import TYPE_REPLY, TYPE_REQUEST

log = logging.getLogger("trustroam.fa")
IP_RECVTTL = 12  # linux/in.h; the socket module exports neither
IP_PKTINFO = 8
_TTL_SPACE = socket.CMSG_SPACE(4)


class ForeignAgentServer:
    def __init__(self, core: ForeignAgent, plane: UserspaceForeignAgentPlane | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.core = core
        self.plane = plane
        self.clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: socket.socket | None = None
        self._icmp: socket.socket | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        self._to_visitors: list[tuple[int, int, bytes]] = []

    def start(self) -> None:
        cfg = self.core.config
        self._loop = asyncio.get_running_loop()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("0.0.0.0", cfg.port))
        # RFC 3024 4.2.1: the request's TTL decides 76, so have the kernel report it.
        udp.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
        udp.setblocking(False)
        self._udp = udp
        icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        icmp.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, cfg.interface.encode())
        icmp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        icmp.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                        cfg.care_of_address.packed)
        icmp.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 1)
        # RFC 5944 2.2/2.3 and RFC 1256: solicitations come to all-routers, to the
        # mobile-agents group or to the limited broadcast (which needs no join).
        ifindex = socket.if_nametoindex(cfg.interface)
        for group in (ALL_ROUTERS, MOBILE_AGENTS):
            mreqn = group.packed + cfg.care_of_address.packed + struct.pack("=i", ifindex)
            try:
                icmp.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
            except OSError as exc:
                log.warning("cannot join %s on %s: %s", group, cfg.interface, exc.strerror)
        icmp.setblocking(False)
        self._icmp = icmp
        # Replies to mobile nodes go out on the visitor link whatever the routing
        # table says about their home addresses (RFC 5944 3.7.2.3: the destination
        # is the home address; a denied node has no visitor route yet).
        self._to_visitors = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack(
            "=i4s4s", socket.if_nametoindex(cfg.interface), cfg.care_of_address.packed,
            b"\0" * 4))]
        self._loop.add_reader(udp.fileno(), self._udp_readable)
        self._loop.add_reader(icmp.fileno(), self._icmp_readable)
        if self.plane is not None:
            self.plane.start()
        self._tasks = [asyncio.ensure_future(self._advertise()),
                       asyncio.ensure_future(self._timers())]
        log.info("foreign agent on %s, care-of address %s, port %d", cfg.interface,
                 cfg.care_of_address, cfg.port)

    async def wait_closed(self) -> None:
        await self._stopped.wait()

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._loop is not None:
            for s in (self._udp, self._icmp):
                if s is not None:
                    self._loop.remove_reader(s.fileno())
                    s.close()
        if self.plane is not None:
            self.plane.close()
        self._stopped.set()

    def _send_advert(self) -> None:
        assert self._icmp is not None
        try:
            self._icmp.sendto(self.core.advertisement(), (str(ALL_SYSTEMS), 0))
        except OSError as exc:
            log.warning("cannot send agent advertisement on %s: %s",
                        self.core.config.interface, exc.strerror)

    async def _advertise(self) -> None:
        rng = random.Random()  # noqa: S311 - timing jitter, not a secret
        while True:
            if self.core.may_advertise(self.clock()):
                self._send_advert()
            await asyncio.sleep(self.core.advert_delay(rng))

    async def _timers(self) -> None:
        while True:
            self._execute(self.core.tick(self.clock()))
            nxt = self.core.next_deadline()
            delay = 1.0 if nxt is None else min(1.0, max(0.0, nxt - self.clock()))
            await asyncio.sleep(delay)  # re-evaluated at least every second

    def _icmp_readable(self) -> None:
        assert self._icmp is not None
        while True:
            try:
                pkt = self._icmp.recv(2048)
            except BlockingIOError:
                return
            ihl = (pkt[0] & 0x0F) * 4
            if len(pkt) > ihl and pkt[ihl] == ICMP_ROUTER_SOLICITATION:
                try:
                    AgentSolicitation.decode(pkt[ihl:])
                except DecodeError as exc:
                    log.debug("bad solicitation: %s", exc)
                    continue
                if self.core.may_advertise(self.clock()):  # answered at once, rate limited
                    self._send_advert()

    def _udp_readable(self) -> None:
        assert self._udp is not None
        now = self.clock()
        while True:
            try:
                data, anc, _flags, addr = self._udp.recvmsg(4096, _TTL_SPACE)
            except BlockingIOError:
                return
            except OSError as exc:
                log.debug("receive error: %s", exc)
                continue
            src = (IPv4Address(addr[0]), addr[1])
            if data[:1] == bytes([TYPE_REQUEST]):
                self._execute(self.core.from_mobile_node(data, src, now, _ttl(anc)))
            elif data[:1] == bytes([TYPE_REPLY]):
                self._execute(self.core.from_home_agent(data, src, now))

    def _execute(self, res: Result) -> None:
        for line in res.log:
            log.info("%s", line)
        assert self._udp is not None
        for a in res.actions:
            try:
                if isinstance(a, ToHomeAgent):
                    self._udp.sendto(a.data, (str(a.home_agent), 434))
                elif isinstance(a, ToMobileNode):
                    self._udp.sendmsg([a.data], self._to_visitors, 0, (str(a.address), a.port))
                elif isinstance(a, VisitorUp) and self.plane is not None:
                    self.plane.visitor_up(a.visitor)
                elif isinstance(a, VisitorDown) and self.plane is not None:
                    self.plane.visitor_down(a.visitor)
            except OSError as exc:
                log.warning("%s failed: %s", type(a).__name__, exc)


def _ttl(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The IP TTL reported by IP_RECVTTL, if the kernel gave one."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IP and kind == socket.IP_TTL and len(data) >= 4:
            ttl: int = struct.unpack("=i", data[:4])[0]
            return ttl
    return None
