"""The home agent's asyncio driver: socket in, core, store, data plane, socket out.

Datagrams are read in batches straight from a non-blocking socket (asyncio's
datagram transport reads one per loop iteration); each batch is decided by the
core, written to the store in one transaction, handed to the data plane, and
only then are the replies sent.  (A writer thread pipelining commits was
measured and dropped: GIL hand-offs cost more latency than fsync here.)
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from app.agents.binding_store import BindingStore, StoreError
from app.agents.bindings import Binding, BindingChange, ChangeKind, HaReplayState
from app.agents.dataplane import HomeAgentDataPlane
from app.agents.ha_core import HomeAgent, Outcome

log = logging.getLogger("trustroam.ha")
TUNNEL_NEXT_HEADER = 4  # IP-in-IP inside the RFC 3519 tunnel data message
MAX_BATCH = 256
MAX_DATAGRAM = 4096
SIOCGIFADDR = 0x8915
IP_PKTINFO = 8  # linux/in.h (the socket module does not export it)


@dataclass
class _Batch:
    """Outcomes decided together, their changes, and where the replies go."""

    outcomes: list[tuple[Outcome, tuple[str, int]]] = field(default_factory=list)
    changes: list[BindingChange] = field(default_factory=list)
    replay: list[tuple[IPv4Address, HaReplayState]] = field(default_factory=list)

    def add(self, outcome: Outcome, addr: tuple[str, int]) -> None:
        self.outcomes.append((outcome, addr))
        self.changes.extend(outcome.changes)
        if outcome.replay is not None:
            self.replay.append(outcome.replay)


class HomeAgentServer:
    def __init__(self, core: HomeAgent, store: BindingStore, dataplane: HomeAgentDataPlane,
                 clock: Callable[[], float] = time.time) -> None:
        self.core = core
        self.store = store
        self.dataplane = dataplane
        self.clock = clock
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._stopped = asyncio.Event()
        self.tunnel_data_dropped = 0
        """RFC 3519 tunnel data messages whose Next Header was not IP-in-IP."""
        self._home_ifindex: int | None = None

    def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and start serving; returns the bound address (port 0 picks one)."""
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # No SO_REUSEADDR: on UDP it would let a second home agent share the port.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._sock = sock
        self.dataplane.start(sock)
        self._home_ifindex = _ifindex_of(self.core.config.address)
        for b in self.core.bindings.values():
            self.dataplane.binding_up(b)
        self._expire()  # bindings that lapsed while we were down
        self._loop.add_reader(sock.fileno(), self._readable)
        bound: tuple[str, int] = sock.getsockname()
        log.info("serving registrations on %s:%d for %d mobile nodes, %d bindings restored",
                 bound[0], bound[1], len(self.core.config.mobile_nodes),
                 len(self.core.bindings))
        return bound

    async def wait_closed(self) -> None:
        await self._stopped.wait()

    def close(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        if self._timer is not None:
            self._timer.cancel()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.dataplane.close()
        self.store.close()
        self._stopped.set()

    # -- receive path ----------------------------------------------------------

    def _readable(self) -> None:
        sock = self._sock
        assert sock is not None
        now = self.clock()
        batch = _Batch()
        for _ in range(MAX_BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP port unreachable reported on the socket
                log.debug("receive error: %s", exc)
                continue
            if data[:1] == b"\x04":  # RFC 3519 tunnel data shares port 434
                # 3.3: Next Header must be the binding's mode (IP-in-IP is the only
                # one here), else dropped; counted, not logged (no log flood).
                if len(data) > 4 and data[1] == TUNNEL_NEXT_HEADER:
                    self.dataplane.tunnel_data(addr, data[4:])
                else:
                    self.tunnel_data_dropped += 1
                continue
            outcome = self.core.handle_request(data, (IPv4Address(addr[0]), addr[1]), now)
            batch.add(outcome, addr)
        if batch.outcomes:
            self._submit(batch)
            self._arm_timer()

    # -- commit ----------------------------------------------------------------
    # Everything one readiness event brought in is one transaction: under load
    # the batches grow and the fsync is shared.  Replies leave only after it.

    def _submit(self, batch: _Batch) -> None:
        if batch.changes or batch.replay:
            try:
                self.store.apply(batch.changes, batch.replay)
            except StoreError as exc:
                # Never promise a binding we could not make durable: no replies;
                # the mobile nodes retransmit.
                log.error("%s; %d replies withheld", exc, len(batch.outcomes))
                return
        self._deliver([batch])

    def _deliver(self, batches: list[_Batch]) -> None:
        sock = self._sock
        for batch in batches:
            self._apply_dataplane(batch.changes)
            for o, addr in batch.outcomes:
                level = logging.DEBUG if o.accepted and _is_renewal(o) else logging.INFO
                if log.isEnabledFor(level):
                    log.log(level, "%s", o.log)
                if o.reply is None or sock is None:
                    continue
                try:
                    if o.home_link and self._home_ifindex is not None:
                        # RFC 5944 3.8.3.1: onto the home link as if the node had no
                        # binding, past the /32 route that would tunnel it to the CoA.
                        sock.sendmsg([o.reply], [(socket.IPPROTO_IP, IP_PKTINFO,
                                                  _pktinfo(self._home_ifindex))], 0, addr)
                    else:
                        sock.sendto(o.reply, addr)
                except OSError as exc:
                    log.warning("cannot send reply to %s:%d: %s", addr[0], addr[1],
                                exc.strerror)

    def _apply_dataplane(self, changes: list[BindingChange]) -> None:
        for ch in changes:
            if ch.kind in (ChangeKind.REMOVED, ChangeKind.EXPIRED):
                self.dataplane.binding_down(ch.binding)
            elif ch.previous is None or _endpoint(ch.previous) != _endpoint(ch.binding):
                self.dataplane.binding_up(ch.binding)

    # -- expiry ----------------------------------------------------------------

    def _arm_timer(self) -> None:
        at = self.core.next_expiry()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None and self._loop is not None:
            self._timer = self._loop.call_later(max(0.0, at - self.clock()), self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._timer_at = None
        expired = self.core.expire(self.clock())
        if expired:
            for ch in expired:
                log.info("%s: binding to %s expired", ch.binding.home_address,
                         ch.binding.care_of_address)
            self._submit(_Batch(changes=expired))
        self._arm_timer()


def _pktinfo(ifindex: int) -> bytes:
    """struct in_pktinfo: leave by this interface, source address chosen as usual."""
    return struct.pack("=i4s4s", ifindex, b"\0" * 4, b"\0" * 4)


def _ifindex_of(address: IPv4Address) -> int | None:
    """The interface holding ``address`` (the home link), or None."""
    for index, name in socket.if_nameindex():
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                got = fcntl.ioctl(s.fileno(), SIOCGIFADDR,
                                  struct.pack("256s", name.encode()[:15]))
        except OSError:
            continue
        if got[20:24] == address.packed:
            return index
    return None


def _endpoint(b: Binding) -> tuple[object, ...]:
    """What the data plane cares about; a renewal that changes none of it is a no-op."""
    return (b.care_of_address, b.source_address, b.source_port, b.udp_tunnel,
            b.reverse_tunnel)


def _is_renewal(o: Outcome) -> bool:
    return len(o.changes) == 1 and o.changes[0].kind is ChangeKind.UPDATED and (
        o.changes[0].previous is not None
        and o.changes[0].previous.care_of_address == o.changes[0].binding.care_of_address)
