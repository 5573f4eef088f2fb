"""The driver's loop, without namespaces: events in, actions executed in order, one
timer, status published.

The real sockets (``app.mn.sockets``) on loopback (root: SO_BINDTODEVICE, SO_MARK),
the real home agent core answering the registration datagrams the driver sends (on
a 127/8 address of its own), stand-in routes and gate that record what they were
asked, in order.  What is awaited is an event (a snapshot, a history entry), never
a time; WAIT only bounds a failure.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import pytest

from app.agents.ha_core import HomeAgent
from app.api import HistoryEntry, Mode, Snapshot, State
from app.mn import driver as driver_module
from app.mn.driver import MobileNodeDriver
from app.mn.profile import Profile
from app.net.arp import ArpAnnouncer
from app.net.links import LinkSnapshot
from tests.mipclient import KEY_A
from tests.requirements import require_root
from tests.support.identities import ALICE, config

WAIT = 10.0
"""Seconds before an awaited event counts as missing (a failure, not a measure)."""
A = IPv4Address


def _addr() -> IPv4Address:
    return A(f"127.{random.randint(64, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}")


@dataclass
class Calls:
    """What the stand-ins were asked, in order."""

    log: list[tuple[Any, ...]] = field(default_factory=list)


class Routes:
    def __init__(self, calls: Calls, fail_set_link: int = 0) -> None:
        self.arp = ArpAnnouncer()
        self.calls = calls
        self.link: Any = None
        self.fail_set_link = fail_set_link

    async def set_link(self, link: Any) -> None:
        if self.fail_set_link:
            self.fail_set_link -= 1
            raise RuntimeError("netlink said no")
        self.link = link
        self.calls.log.append(("set_link", link.iface))

    async def configure(self, mode: Mode, **kw: Any) -> None:
        self.calls.log.append(("configure", mode))

    async def finish(self) -> None:
        self.calls.log.append(("finish",))

    def announce_home(self, iface: str | None = None) -> None:
        self.calls.log.append(("announce_home", iface))

    def tunnel_write(self, inner: bytes) -> None:
        self.calls.log.append(("tunnel_write", inner))


class Gate:
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def manage(self, iface: str) -> None:
        self.calls.log.append(("manage", iface))

    async def decide(self, path: Any, home_probe: str | None = None) -> None:
        self.calls.log.append(("gate", None if path is None else path.mode))


@dataclass
class Node:
    driver: MobileNodeDriver
    calls: Calls
    routes: Routes
    ha: HomeAgent
    address: IPv4Address
    history: list[HistoryEntry]
    seen: asyncio.Queue[Snapshot | HistoryEntry]

    async def until(self, test: Any) -> Any:
        """The first snapshot or history entry (from now) for which ``test`` is true."""
        async def wait() -> Any:
            while True:
                item = await self.seen.get()
                if test(item):
                    return item
        return await asyncio.wait_for(wait(), WAIT)

    def link(self) -> LinkSnapshot:
        return LinkSnapshot("lo", True, (IPv4Interface(f"{self.address}/8"),), A("127.0.0.1"))


async def _serve(sock: socket.socket, ha: HomeAgent) -> None:
    """The home agent's registration port: the real core's answers, sent back."""
    loop = asyncio.get_running_loop()
    while True:
        data, src = await loop.sock_recvfrom(sock, 2048)
        out = ha.handle_request(data, (A(src[0]), src[1]), time.time())
        if out.reply:
            await loop.sock_sendto(sock, out.reply, src)


@pytest.fixture
async def node(request: pytest.FixtureRequest) -> AsyncIterator[Node]:
    require_root("SO_BINDTODEVICE and SO_MARK need root")
    ha_addr = _addr()
    ha = HomeAgent(config(address=ha_addr))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((str(ha_addr), 434))
    sock.setblocking(False)
    server = asyncio.create_task(_serve(sock, ha))
    calls = Calls()
    routes = Routes(calls, **getattr(request, "param", {}))
    seen: asyncio.Queue[Snapshot | HistoryEntry] = asyncio.Queue()
    history: list[HistoryEntry] = []

    def event(e: HistoryEntry) -> None:
        history.append(e)
        seen.put_nowait(e)

    profile = Profile("corp", ALICE, IPv4Network("10.20.1.0/24"), ha_addr, 256,
                      foreign_agents=False, lifetime=600)
    d = MobileNodeDriver(profile, KEY_A, routes, Gate(calls),  # type: ignore[arg-type]
                         on_snapshot=seen.put_nowait, on_event=event)
    await d.start()
    try:
        yield Node(d, calls, routes, ha, _addr(), history, seen)
    finally:
        await d.stop()
        server.cancel()
        sock.close()


def _trusted(item: object) -> bool:
    return isinstance(item, Snapshot) and item.state is State.TRUSTED


async def test_rfc5266_3_4_link_probe_reply_then_configure_before_the_gate_opens(node: Node):
    d = node.driver
    d.link_snapshot(node.link())
    snap = await node.until(_trusted)
    assert snap.mode is Mode.COLOCATED and snap.care_of_address == str(node.address)
    await node.until(lambda e: isinstance(e, Snapshot) and e.binding_expires > time.time())
    assert d.snapshot.interface == "lo"
    log = [c for c in node.calls.log if c[0] != "tunnel_write"]
    # Managed by the gate (shut) first, the link set up, the data plane configured,
    # then opened on it; the routes finish after the step's actions.
    assert log == [("manage", "lo"), ("set_link", "lo"), ("configure", Mode.COLOCATED),
                   ("gate", Mode.COLOCATED), ("finish",)]
    kinds = [e.kind for e in node.history]
    assert kinds.index("link-up") < kinds.index("probe-sent") < kinds.index("registered")
    assert node.ha.bindings  # the real home agent holds the binding
    # One timer, re-armed for the machine's next deadline (the renewal).
    assert d._timer is not None
    assert d._timer.when() - asyncio.get_running_loop().time() == pytest.approx(
        d.machine.get_timer() - d.clock(), abs=1.0)


async def test_rfc5944_3_6_1_1_stop_deregisters_and_waits_for_the_answer(
        node: Node, monkeypatch: pytest.MonkeyPatch):
    d = node.driver
    d.link_snapshot(node.link())
    await node.until(_trusted)
    assert node.ha.bindings
    monkeypatch.setattr(driver_module, "SHUTDOWN_WAIT", WAIT)
    await d.stop()
    # The answer was taken before the loop ended: the client holds no binding.
    assert d.client.binding is None and not node.ha.bindings
    assert d.snapshot.state is State.OFFLINE and d.snapshot.binding_expires == 0.0


@pytest.mark.parametrize("node", [{"fail_set_link": 1}], indirect=True)
async def test_a_step_that_raises_is_logged_and_the_loop_goes_on(
        node: Node, caplog: pytest.LogCaptureFixture):
    d = node.driver
    with caplog.at_level(logging.ERROR, "trustroam.mn"):
        d.link_snapshot(node.link())
        await node.until(lambda e: isinstance(e, HistoryEntry) and e.kind == "link-up")
        d.reprobe()  # the next input is handled: the probe goes out this time
        await node.until(_trusted)
    assert "mobile-node driver step failed" in caplog.text


async def test_a_policy_and_a_reprobe_go_through_the_loop(node: Node):
    from app.api import Policy

    d = node.driver
    d.link_snapshot(node.link())
    await node.until(_trusted)
    d.set_policy(Policy.NEVER_VPN)
    await node.until(lambda e: isinstance(e, HistoryEntry) and e.kind == "policy-applied")
    d.reprobe()
    await node.until(lambda e: isinstance(e, HistoryEntry) and e.kind == "reprobe")
    d.link_snapshot(replace(node.link(), carrier=False))
    await node.until(lambda e: isinstance(e, HistoryEntry) and e.kind == "link-lost")
