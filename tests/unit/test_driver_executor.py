"""The driver as an executor: actions passed through, the machine's numbers published.

No namespaces: the driver is built with stand-in routes and no gate, and its
executor and publishing are called directly.  Times: the machines run on the
monotonic ``clock``; what is published (history, binding expiry, probe answers)
is wall time.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from app.api import HistoryEntry, Mode, State
from app.mip import ident
from app.mip.messages import RegistrationRequest
from app.mn import access_mode as am
from app.mn.driver import MobileNodeDriver
from app.mn.profile import Profile
from app.mn.registration import Registered
from app.net.arp import ArpAnnouncer
from tests.support.identities import T0

A = IPv4Address
MONO = 100.0
COA = A("10.30.1.50")
FA = A("10.40.1.1")


class Routes:
    def __init__(self) -> None:
        self.arp = ArpAnnouncer()
        self.configured: list[tuple[Any, ...]] = []
        self.finished = 0

    async def configure(self, mode: Mode, **kw: Any) -> None:
        self.configured.append((mode, kw))

    async def finish(self) -> None:
        self.finished += 1


def driver() -> tuple[MobileNodeDriver, list[HistoryEntry]]:
    profile = Profile("corp", A("10.20.1.10"), IPv4Network("10.20.1.0/24"), A("10.20.1.1"),
                      256, gate_enabled=False)
    history: list[HistoryEntry] = []
    d = MobileNodeDriver(profile, b"k" * 16, Routes(), None,  # type: ignore[arg-type]
                         on_event=history.append, clock=lambda: MONO, wall=lambda: T0)
    return d, history


def test_configure_data_plane_is_a_pass_through():
    d, _ = driver()
    asyncio.run(d._execute([am.ConfigureDataPlane(Mode.FOREIGN_AGENT, "eth0",
                                                  foreign_agent=FA)], MONO))
    assert d.routes.configured == [(Mode.FOREIGN_AGENT,  # type: ignore[attr-defined]
                                    {"foreign_agent": FA, "udp": None, "tia": None})]
    assert d.routes.finished == 1  # type: ignore[attr-defined]


def test_the_handover_published_is_the_machines():
    d, history = driver()
    s = am.Status(State.TRUSTED, Mode.COLOCATED, "eth0", COA, None, 12.5, handover=True)
    asyncio.run(d._execute([s], MONO))
    assert d.snapshot.last_handover_ms == 12.5
    assert [(e.kind, e.details) for e in history] == [
        ("mode", {"state": "trusted", "mode": "c"}),
        ("handover", {"mode": "c", "ms": "12.5"})]
    # A Status that only ends a handover (mode c kept after the FA failed) is no new mode.
    history.clear()
    asyncio.run(d._execute([s], MONO))
    assert [e.kind for e in history] == ["handover"]


def test_the_handover_shown_ends_when_the_path_is_open_after_the_steps_actions():
    """Found by review: the machine stamps the step that decides; the routes and the
    gate of that step take time too, and the path is open only after them."""
    clock = [MONO]

    class SlowRoutes(Routes):
        async def configure(self, mode: Mode, **kw: Any) -> None:
            clock[0] += 0.05  # the routes take 50 ms
            await super().configure(mode, **kw)

    profile = Profile("corp", A("10.20.1.10"), IPv4Network("10.20.1.0/24"), A("10.20.1.1"),
                      256, gate_enabled=False)
    history: list[HistoryEntry] = []
    d = MobileNodeDriver(profile, b"k" * 16, SlowRoutes(), None,  # type: ignore[arg-type]
                         on_event=history.append, clock=lambda: clock[0], wall=lambda: T0)
    s = am.Status(State.TRUSTED, Mode.COLOCATED, "eth0", COA, None, 12.5, handover=True)
    asyncio.run(d._execute([am.ConfigureDataPlane(Mode.COLOCATED, "eth0"), s], MONO))
    assert d.snapshot.last_handover_ms == 62.5
    assert ("handover", {"mode": "c", "ms": "62.5"}) in [(e.kind, e.details) for e in history]


def test_the_driver_clock_counts_suspend():
    """Timers on CLOCK_BOOTTIME: a wall-clock step moves no deadline, and after a
    suspend the binding's lifetime has run on as it has at the home agent."""
    import inspect
    import time

    from app.mn import driver as drv

    default = inspect.signature(drv.MobileNodeDriver.__init__).parameters["clock"].default
    assert default is drv.boottime
    assert abs(drv.boottime() - time.clock_gettime(time.CLOCK_BOOTTIME)) < 1.0


def test_published_times_are_wall_time_the_machines_run_on_the_monotonic_clock():
    d, history = driver()
    d.client.binding = Registered(COA, 600, MONO + 600, 0.01, False, False, 0)
    d._update_binding()
    assert d.snapshot.binding_expires == T0 + 600
    assert history and all(e.time == T0 for e in history)
    d.client.register(COA, MONO)
    data = d.client.datagrams_to_send()[0].data
    sent = ident.unix_from_ntp(RegistrationRequest.decode(data).identification)
    assert abs(sent - T0) < 1  # RFC 5944 5.7.1: the identification is wall time


async def vpn_event(d: MobileNodeDriver, ev: Any, now: float) -> None:
    """charon's event as the driver's loop takes it: the machine's events, fed."""
    for mev in d.vpn.events(ev, now):
        await d._feed(mev, now)


class VpnRoutes(Routes):
    def __init__(self) -> None:
        super().__init__()
        self.link = None
        self.sources: list[IPv4Address | None] = []
        self.gateways: list[IPv4Address] = []

    async def vpn_source(self, tia: IPv4Address | None) -> None:
        self.sources.append(tia)

    async def vpn_gateway(self, gw: IPv4Address) -> None:
        self.gateways.append(gw)


async def test_a_repeated_vpn_up_does_nothing_as_the_machine_decides():
    from types import SimpleNamespace

    from app.vpn.events import Endpoint, VpnDown, VpnUp
    from app.vpn.profile import VpnConfig

    profile = Profile("corp", A("10.20.1.10"), IPv4Network("10.20.1.0/24"), A("10.20.1.1"),
                      256, gate_enabled=False,
                      vpn=VpnConfig(("172.16.0.11",), "mn@lab",
                                    intranet=(IPv4Network("10.0.0.0/8"),)))
    history: list[HistoryEntry] = []
    routes = VpnRoutes()
    d = MobileNodeDriver(profile, b"k" * 16, routes, None,  # type: ignore[arg-type]
                         on_event=history.append, clock=lambda: MONO, wall=lambda: T0,
                         charon=SimpleNamespace(gateway=None, loaded_gateway=None))  # type: ignore[arg-type]
    d._loop = asyncio.get_running_loop()
    tia, gw = A("10.99.1.1"), Endpoint(A("172.16.0.11"), 4500)
    up = VpnUp(tia, gw, Endpoint(A("203.0.113.5"), 4500), False, 1)
    try:
        await vpn_event(d, up, MONO)
        await vpn_event(d, up, MONO + 0.1)  # initiate's answer and charon's event
        assert [e.kind for e in history].count("vpn-up") == 1
        assert routes.sources == [tia] and routes.gateways == [A("172.16.0.11")]
        assert d.snapshot.tunnel_inner_address == "10.99.1.1"
        await vpn_event(d, VpnDown("rekeyed away", 7), MONO + 0.2)  # not the SA in use
        assert routes.sources == [tia] and d.snapshot.tunnel_inner_address == "10.99.1.1"
        await vpn_event(d, VpnDown("DPD", 1), MONO + 0.3)
        assert routes.sources == [tia, None] and d.snapshot.tunnel_inner_address == ""
    finally:
        d.sockets.close()


def test_rfc3519_4_9_the_keepalive_runs_at_the_interval_the_action_carries():
    import socket

    d, history = driver()
    reg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the link's, unbound here
    d.sockets._reg = reg
    try:
        asyncio.run(d._execute([am.ConfigureDataPlane(Mode.COLOCATED, "eth0", udp_tunnel=True,
                                                      keepalive_s=20)], MONO))
        assert d.routes.configured[0][1]["udp"] is reg  # type: ignore[attr-defined]
        assert d.keepalive.get_timer() == MONO + 20
        assert ("udp-tunnel", {"keepalive_s": "20"}) in [(e.kind, e.details) for e in history]
        assert d.snapshot.nat_detected
    finally:
        reg.close()


async def test_rfc5266_4_the_vpns_nat_is_the_sa_in_uses_as_the_machine_says():
    from types import SimpleNamespace

    from app.mn.mode_events import VpnNat
    from app.vpn.events import Endpoint, VpnUp
    from app.vpn.profile import VpnConfig

    profile = Profile("corp", A("10.20.1.10"), IPv4Network("10.20.1.0/24"), A("10.20.1.1"),
                      256, gate_enabled=False,
                      vpn=VpnConfig(("172.16.0.11",), "mn@lab",
                                    intranet=(IPv4Network("10.0.0.0/8"),)))
    history: list[HistoryEntry] = []
    d = MobileNodeDriver(profile, b"k" * 16, VpnRoutes(), None,  # type: ignore[arg-type]
                         on_event=history.append, clock=lambda: MONO, wall=lambda: T0,
                         charon=SimpleNamespace(gateway=None, loaded_gateway=None))  # type: ignore[arg-type]
    d._loop = asyncio.get_running_loop()
    up = VpnUp(A("10.99.1.1"), Endpoint(A("172.16.0.11"), 4500),
               Endpoint(A("203.0.113.5"), 4500), False, 1)
    try:
        await vpn_event(d, up, MONO)
        assert not d.snapshot.nat_detected
        await vpn_event(d, VpnNat(7, True), MONO)  # another SA's (a rekeyed-away one)
        assert not d.snapshot.nat_detected and "vpn-nat" not in [e.kind for e in history]
        await vpn_event(d, VpnNat(1, True), MONO)
        assert d.snapshot.nat_detected
        assert ("vpn-nat", {"detected": "true"}) in [(e.kind, e.details) for e in history]
    finally:
        d.sockets.close()


def test_a_status_that_ends_no_handover_leaves_the_handover_shown():
    """Found by review: a later Status (untrusted, say) carries the machine's last
    handover time; only the Status that ends a handover may set the one shown (a later
    step's routes must not be added to it)."""
    clock = [MONO]

    class SlowRoutes(Routes):
        async def configure(self, mode: Mode, **kw: Any) -> None:
            clock[0] += 0.05
            await super().configure(mode, **kw)

    profile = Profile("corp", A("10.20.1.10"), IPv4Network("10.20.1.0/24"), A("10.20.1.1"),
                      256, gate_enabled=False)
    d = MobileNodeDriver(profile, b"k" * 16, SlowRoutes(), None,  # type: ignore[arg-type]
                         clock=lambda: clock[0], wall=lambda: T0)
    end = am.Status(State.TRUSTED, Mode.COLOCATED, "eth0", COA, None, 12.5, handover=True)
    asyncio.run(d._execute([end], clock[0]))
    later = am.Status(State.UNTRUSTED, Mode.NONE, "eth0", None, None, 12.5)
    asyncio.run(d._execute([am.ConfigureDataPlane(Mode.NONE, None), later], clock[0]))
    assert d.snapshot.last_handover_ms == 12.5


async def test_the_vpn_probes_deadline_reaches_the_one_timer_and_its_tick_probes_again():
    """The executor computes the probe's deadline; the driver must arm its one timer
    on it and, when it fires, let the executor probe again (review: no test held it)."""
    from types import SimpleNamespace

    from app.vpn.events import Endpoint, VpnUp
    from app.vpn.profile import VpnConfig

    profile = Profile("corp", A("10.20.1.10"), IPv4Network("10.20.1.0/24"), A("10.20.1.1"),
                      256, gate_enabled=False,
                      vpn=VpnConfig(("172.16.0.11",), "mn@lab",
                                    intranet=(IPv4Network("10.0.0.0/8"),)))
    routes = VpnRoutes()
    routes.link = SimpleNamespace(iface="wlan0",  # type: ignore[assignment]
                                  address=SimpleNamespace(ip=A("192.0.2.7")))
    d = MobileNodeDriver(profile, b"k" * 16, routes, None,  # type: ignore[arg-type]
                         on_event=lambda e: None, clock=lambda: MONO, wall=lambda: T0,
                         charon=SimpleNamespace(gateway=None, loaded_gateway=None))  # type: ignore[arg-type]
    loop = d._loop = asyncio.get_running_loop()
    probes: list[tuple[Any, ...]] = []
    d.sockets.send_echo = lambda *a: probes.append(a)  # type: ignore[method-assign]
    up = VpnUp(A("10.99.1.1"), Endpoint(A("172.16.0.11"), 4500),
               Endpoint(A("203.0.113.5"), 4500), False, 1)
    try:
        await vpn_event(d, up, MONO)
        assert probes == [(A("172.16.0.11"), "wlan0", A("192.0.2.7"))]
        d._arm_timer()
        assert d._timer is not None
        assert abs(d._timer.when() - (loop.time() + 30.0)) < 1.0
        await d._tick(MONO + 30.0)
        assert len(probes) == 2
    finally:
        if d._timer is not None:
            d._timer.cancel()
        d.sockets.close()


async def test_rfc3519_4_10_the_keepalives_deadline_reaches_the_one_timer():
    import socket

    d, _ = driver()
    loop = d._loop = asyncio.get_running_loop()
    reg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    d.sockets._reg = reg
    try:
        await d._execute([am.ConfigureDataPlane(Mode.COLOCATED, "eth0", udp_tunnel=True,
                                                keepalive_s=20)], MONO)
        d._arm_timer()
        assert d._timer is not None
        assert d.machine.get_timer() is None or d.machine.get_timer() > MONO + 20
        assert abs(d._timer.when() - (loop.time() + 20.0)) < 1.0
    finally:
        if d._timer is not None:
            d._timer.cancel()
        reg.close()
