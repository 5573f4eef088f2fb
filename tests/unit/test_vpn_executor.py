"""The VPN side's executor (app/mn/vpn_executor.py): the machine's VPN actions carried
out, charon's events turned into the machine's, the VPN probe's schedule.

No namespaces: the real sockets (``app.mn.sockets``) on loopback (root: SO_MARK),
where the kernel answers the VPN probe's echo itself; stand-in routes that record
what they were asked; charon is the fake VICI server (``tests/fake_vici.py``).
What is awaited is an event (a probe's answer), never a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

import pytest

from app.api import HistoryEntry, Mode, Probe, Snapshot
from app.mn import access_mode as am
from app.mn.mode_events import VpnNat
from app.mn.sockets import MobileNodeSockets
from app.mn.status_board import StatusBoard
from app.mn.vpn_executor import ECHO_INTERVAL, VpnExecutor
from app.mn.vpn_link import VpnLink
from app.net.mn_routes import LinkInfo
from app.vpn.charon import Charon
from app.vpn.events import DownKind, Endpoint, MobikeUpdate, VpnDown
from app.vpn.profile import VpnConfig
from tests.fake_vici import FakeVici
from tests.requirements import require_root
from tests.support.identities import T0

A = IPv4Address
MONO = 100.0
GW = A("127.0.0.1")
"""The VPN gateway: loopback, whose kernel answers the probe's echo."""
TIA = A("10.99.1.1")
USE = am.UseTia(TIA, "vpn.example", GW, ike_id=1, nat_detected=True,
                local="203.0.113.5[4500]", remote="127.0.0.1[4500]")
CFG = VpnConfig(("172.16.0.11",), "mn@lab", intranet=(IPv4Network("10.0.0.0/8"),))


class Routes:
    def __init__(self) -> None:
        self.link: LinkInfo | None = LinkInfo("lo", IPv4Interface("127.0.0.1/8"), GW)
        self.calls: list[tuple[str, Any]] = []

    async def vpn_gateway(self, gw: IPv4Address) -> None:
        self.calls.append(("vpn_gateway", gw))

    async def vpn_source(self, tia: IPv4Address | None) -> None:
        self.calls.append(("vpn_source", tia))


@dataclass
class Side:
    vpn: VpnExecutor
    routes: Routes
    sockets: MobileNodeSockets
    board: StatusBoard
    history: list[HistoryEntry]
    echoes: asyncio.Queue[tuple[IPv4Address, float]] = field(default_factory=asyncio.Queue)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.history]


def _side(link: VpnLink | None = None) -> Side:
    history: list[HistoryEntry] = []
    board = StatusBoard(Snapshot(profile="corp"), on_snapshot=lambda s: None,
                        on_event=history.append, clock=lambda: MONO, wall=lambda: T0)
    echoes: asyncio.Queue[tuple[IPv4Address, float]] = asyncio.Queue()
    sockets = MobileNodeSockets(A("127.0.0.2"), on_datagram=lambda d, p: None,
                                on_tunnel_data=lambda b: None, udp_tunnel=lambda: False,
                                on_echo=lambda gw, rtt: echoes.put_nowait((gw, rtt)))
    routes = Routes()
    return Side(VpnExecutor(link, routes, sockets, board),  # type: ignore[arg-type]
                routes, sockets, board, history, echoes)


@pytest.fixture
async def side() -> AsyncIterator[Side]:
    require_root("SO_MARK needs root")
    s = _side()
    yield s
    s.sockets.close()


async def test_rfc5266_3_4_use_tia_keeps_the_gateway_on_the_link_then_registers_from_the_tia(
        side: Side):
    open_vpn = side.sockets.open_vpn

    def opened(tia: IPv4Address) -> None:
        side.routes.calls.append(("open_vpn", tia))
        open_vpn(tia)

    side.sockets.open_vpn = opened  # type: ignore[method-assign]
    await side.vpn.use_tia(USE, MONO)
    # The gateway's route stays on the link, the TIA's source rule before its socket.
    assert side.routes.calls == [("vpn_gateway", GW), ("vpn_source", TIA), ("open_vpn", TIA)]
    assert side.sockets._vpn_reg is not None  # the registration through the VPN can leave
    assert side.sockets.can_register
    snap = side.board.snapshot
    assert snap.tunnel_inner_address == str(TIA) and snap.vpn_gateway == "vpn.example"
    assert snap.nat_detected  # charon's NAT-T, shown in mode mc
    assert side.kinds() == ["vpn-up", "vpn-nat"]
    assert side.vpn.get_timer() == MONO + ECHO_INTERVAL  # probed now, again then
    gw, _ = await asyncio.wait_for(side.echoes.get(), 5)  # and the probe really left
    assert gw == GW


async def test_the_vpn_probes_answer_is_shown_only_from_the_gateway_in_use(side: Side):
    await side.vpn.use_tia(USE, MONO)
    gw, rtt = await asyncio.wait_for(side.echoes.get(), 5)  # loopback's kernel answers
    assert gw == GW and rtt >= 0
    side.vpn.echo_answered(A("192.0.2.9"), 0.024, MONO)  # a gateway no longer ours
    assert side.board.snapshot.vpn_probe.rtt_ms == Probe().rtt_ms  # not shown
    side.vpn.echo_answered(gw, 0.024, MONO + 1)
    assert side.board.snapshot.vpn_probe == Probe(True, 24.0, T0 + 1)


async def test_the_vpn_probe_is_due_every_interval_while_the_tia_is_ours(side: Side):
    assert side.vpn.get_timer() is None  # no VPN: no probe
    await side.vpn.use_tia(USE, MONO)
    await asyncio.wait_for(side.echoes.get(), 5)
    side.vpn.tick(MONO + ECHO_INTERVAL - 1)  # not yet
    assert side.vpn.get_timer() == MONO + ECHO_INTERVAL
    side.vpn.tick(MONO + ECHO_INTERVAL)
    assert side.vpn.get_timer() == MONO + 2 * ECHO_INTERVAL
    await asyncio.wait_for(side.echoes.get(), 5)  # sent again
    await side.vpn.drop_tia()
    side.vpn.tick(MONO + 2 * ECHO_INTERVAL)  # the gateway is not ours: no probe
    assert side.vpn.get_timer() is None


async def test_drop_tia_closes_its_socket_and_its_rule_and_shows_no_tia(side: Side):
    await side.vpn.use_tia(USE, MONO)
    await side.vpn.drop_tia()
    assert side.routes.calls[-1] == ("vpn_source", None)
    assert side.sockets._vpn_reg is None and not side.sockets.can_register
    snap = side.board.snapshot
    assert snap.tunnel_inner_address == "" and snap.vpn_gateway == ""
    assert not snap.vpn_probe.reachable


async def test_a_mobike_move_probes_again_from_the_new_path(tmp_path, side: Side):
    fake = FakeVici(tmp_path / "charon.vici")
    charon = Charon(str(fake.path), lambda e: None, call_timeout=2.0)
    v = VpnLink(charon, CFG, {}, events=lambda e: None, history=side.board.history)
    side.vpn.link = v
    try:
        await side.vpn.use_tia(USE, MONO)
        await asyncio.wait_for(side.echoes.get(), 5)
        move = MobikeUpdate(Endpoint(A("127.0.0.1"), 4500), Endpoint(GW, 4500), 1)
        assert side.vpn.events(move, MONO + 5) == [am.VpnMoved(A("127.0.0.1"))]
        assert side.vpn.get_timer() == MONO + 5 + ECHO_INTERVAL
        await asyncio.wait_for(side.echoes.get(), 5)  # the probe from the new path
        assert side.vpn.events(VpnDown("DPD", 1, DownKind.IKE_GONE), MONO) == [
            am.VpnLost("DPD", 1, gateway_gone=True)]
        # A NAT read again goes to the machine as it is: it knows the SA in use.
        assert side.vpn.events(VpnNat(7, True), MONO) == [VpnNat(7, True)]
    finally:
        await v.close()
        await charon.close()
        fake.close()


def test_without_a_vpn_in_the_profile_charons_events_are_ignored():
    vpn = _side().vpn
    assert vpn.events(VpnDown("DPD", 1), MONO) == []
    assert vpn.events(VpnNat(1, True), MONO) == []
    vpn.start(am.StartVpn("eth0"))  # nothing to start
    vpn.board.publish(Snapshot(profile="corp", vpn_probe=Probe(True, 24.0, T0)))
    vpn.stop("trusted")
    assert vpn.board.snapshot.vpn_probe == Probe()  # a stale answer is not left shown


async def test_stop_shows_no_probe_and_tears_the_tunnel_down(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    charon = Charon(str(fake.path), lambda e: None, call_timeout=2.0)
    s = _side()
    v = VpnLink(charon, CFG, {}, events=lambda e: None, history=s.board.history)
    s.vpn.link = v
    s.board.publish(Snapshot(profile="corp", vpn_probe=Probe(True, 24.0, T0)))
    try:
        s.vpn.stop("the network is trusted")
        assert s.board.snapshot.vpn_probe == Probe()  # stopped on purpose: nothing to say
        assert s.kinds() == ["vpn-stop"]
        assert v._stopping is not None
        await asyncio.wait_for(v._stopping, 5)  # stop itself tears down, not close
        assert "terminate" in fake.names()
        await s.vpn.close()
    finally:
        await charon.close()
        fake.close()


def test_rfc5266_4_the_nat_shown_is_the_vpns_in_mc_and_the_registrations_otherwise():
    s = _side()
    s.vpn.nat_detected(True)
    assert s.board.snapshot.nat_detected and s.kinds() == ["vpn-nat"]
    s.vpn.configured(Mode.COLOCATED, False)  # mode c without a UDP tunnel: no NAT
    assert not s.board.snapshot.nat_detected
    s.vpn.configured(Mode.VPN, False)  # mc: the VPN's
    assert s.board.snapshot.nat_detected
    s.vpn.nat_detected(False)
    s.vpn.configured(Mode.COLOCATED, True)  # RFC 3519: the registration crossed one
    assert s.board.snapshot.nat_detected



async def test_rfc3519_3_3_a_second_use_tia_for_the_same_tia_keeps_its_socket_and_port(
        side: Side):
    """IKE reauthentication or a re-initiate names the same TIA again: the socket that
    carries the binding (and in mc its UDP tunnel) stays, on the same source port
    (RFC 3519 3.3: the HA and the gateway's NAT mapping name that port).  A new TIA
    gets a new socket."""
    await side.vpn.use_tia(USE, MONO)
    first = side.sockets._vpn_reg
    assert first is not None
    port = first.getsockname()[1]
    await side.vpn.use_tia(am.UseTia(TIA, "vpn.example", GW, ike_id=2, nat_detected=True,
                                     local=USE.local, remote=USE.remote), MONO + 1)
    again = side.sockets._vpn_reg
    assert again is first and again.fileno() != -1 and again.getsockname()[1] == port
    await side.vpn.use_tia(am.UseTia(A("10.99.1.2"), "vpn.example", GW, ike_id=3,
                                     nat_detected=True, local=USE.local, remote=USE.remote),
                           MONO + 2)
    other = side.sockets._vpn_reg
    assert other is not first and other is not None
    assert other.getsockname()[0] == "10.99.1.2"
