"""NAT inside the VPN (RFC 5266 4): a gateway that NATs its address pool towards the
intranet, so the home agent sees the TIA's registration from another address.

"In some cases, the TIA could be from a private address space associated with the
VPN gateway.  In such a case, Mobile IPv4 NAT traversal should be used in addition
to IPsec NAT traversal in the 'mc' mode."  Held here without namespaces: the
driver's client through the VPN against the real home agent core, the machine in
the shared fake-clock world with a NATing gateway, the driver's executor, and the
data plane's choice (tests/lab/test_mc_nat_inside.py runs it all for real).
"""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from app.agents.ha_core import HomeAgent
from app.api import NAT_IPSEC, NAT_MOBILE_IP, Mode, State
from app.mip.extensions import UdpTunnelRequest
from app.mip.messages import RegistrationRequest
from app.mn import access_mode as am
from app.mn.access_mode import ConfigureDataPlane, Note, Send
from app.mn.driver import MobileNodeDriver
from app.mn.profile import Profile
from app.mn.registration import UdpTunnelling
from app.net import mn_routes
from app.net.mn_routes import TUNNEL, Backend, LinkInfo, MobileNodeRoutes
from app.vpn.profile import VpnConfig
from tests.mipclient import KEY_A
from tests.support.identities import ALICE, HA, T0, config
from tests.support.world import TIA, World, machine, registration
from tests.unit.test_driver_executor import VpnRoutes
from tests.unit.test_mn_routes import FakeIPRoute

A = IPv4Address
MONO = 100.0
GW_NAT = A("172.16.0.11")
"""The gateway's own address: the source the home agent sees for the TIA."""


def vpn_profile(**kw: Any) -> Profile:
    return Profile("corp", ALICE, IPv4Network("10.20.1.0/24"), HA, 256, gate_enabled=False,
                   vpn=VpnConfig(("172.16.0.11",), "mn@lab",
                                 intranet=(IPv4Network("10.0.0.0/8"),)), **kw)


def vpn_driver(routes: Any = None, **kw: Any) -> tuple[MobileNodeDriver, list[Any]]:
    history: list[Any] = []
    d = MobileNodeDriver(vpn_profile(**kw), KEY_A, routes or VpnRoutes(), None,
                         on_event=history.append, clock=lambda: MONO, wall=lambda: T0,
                         charon=SimpleNamespace(gateway=None))  # type: ignore[arg-type]
    return d, history


# -- the registration through the VPN, at the home agent ------------------------------

def test_rfc5266_4_mip_nat_traversal_inside_ipsec_nat_t_when_the_tia_is_translated():
    """The helper's client through the VPN, profile ``udp_tunnelling = "auto"``: the
    home agent sees the gateway's address, not the TIA, and grants an RFC 3519 UDP
    tunnel (before: no UDP Tunnel Request through the VPN, so 129 and never mc)."""
    d, _ = vpn_driver()
    try:
        assert d.vpn_client is not None
        d.vpn_client.register(TIA, MONO)
        sent = d.vpn_client.datagrams_to_send()
        assert [s.source for s in sent] == [TIA]
        req = RegistrationRequest.decode(sent[0].data)
        utr = [e for e in req.extensions if isinstance(e, UdpTunnelRequest)]
        assert utr and not utr[0].force, "auto: asks, the home agent decides"
        ha = HomeAgent(config())
        out = ha.handle_request(sent[0].data, (GW_NAT, 4500), T0)
        assert out.code in (0, 1), out.log
        binding = ha.bindings[ALICE]
        assert (binding.care_of_address, binding.udp_tunnel) == (TIA, True)
        assert (binding.source_address, binding.source_port) == (GW_NAT, 4500)
        assert out.reply is not None
        d.vpn_client.receive(out.reply, MONO + 0.01)
        assert d.vpn_client.binding is not None and d.vpn_client.binding.udp_tunnel
    finally:
        d.sockets.close()


def test_rfc5266_4_an_untranslated_tia_keeps_ip_in_ip_and_off_asks_nothing():
    d, _ = vpn_driver()
    off, _ = vpn_driver(udp_tunnelling=UdpTunnelling.OFF)
    try:
        assert d.vpn_client is not None and off.vpn_client is not None
        ha = HomeAgent(config())
        d.vpn_client.register(TIA, MONO)
        out = ha.handle_request(d.vpn_client.datagrams_to_send()[0].data, (TIA, 434), T0)
        assert out.code in (0, 1) and not ha.bindings[ALICE].udp_tunnel, out.log
        off.vpn_client.register(TIA, MONO)
        req = RegistrationRequest.decode(off.vpn_client.datagrams_to_send()[0].data)
        assert not [e for e in req.extensions if isinstance(e, UdpTunnelRequest)]
    finally:
        d.sockets.close()
        off.sockets.close()


# -- the machine: mc with a UDP-tunnelled binding ---------------------------------------

class NatGatewayWorld(World):
    """The fake-clock world whose VPN gateway NATs its pool towards the intranet."""

    def _deliver(self, kind: str, p: Any) -> None:
        if kind == "ha" and p[2] and not self.ha_down:
            data, tia, _vpn, epoch = p
            out = self.ha.handle_request(data, (GW_NAT, 4500), self.now)
            if out.reply is not None:
                self.replies.append((self.now, out.code or 0))
                self.at(self.through, "reply", (out.reply, True, epoch, tia))
            return
        super()._deliver(kind, p)


def nat_world() -> NatGatewayWorld:
    cfg = registration(lifetime=60, initial_timeout=1.0, retries=2,
                       udp_tunnelling=UdpTunnelling.AUTO)
    return NatGatewayWorld(m=machine(cfg, vpn=True, use_foreign_agents=False))


def test_rfc5266_4_mc_through_a_natting_gateway_configures_an_rfc3519_tunnel():
    w = nat_world()
    w.move("pub")
    w.run(2)
    assert (w.m.phase, w.m.mode) == (State.UNTRUSTED, Mode.VPN)
    b = w.ha.bindings[ALICE]
    assert (b.care_of_address, b.udp_tunnel) == (TIA, True)
    conf = [a for _, a in w.actions if isinstance(a, ConfigureDataPlane) and a.mode is Mode.VPN]
    assert conf == [ConfigureDataPlane(Mode.VPN, "eth0", tia=TIA, udp_tunnel=True,
                                       keepalive_s=b.keepalive_interval or am.DEFAULT_KEEPALIVE)]
    w.agrees()


def test_rfc3519_4_10_unanswered_keepalives_in_mc_register_again_through_the_vpn():
    w = nat_world()
    w.move("pub")
    w.run(2)
    assert w.m.mode is Mode.VPN
    before = len([s for _, s in w.sent if s.through_vpn])
    acts = w.m.reregister(w.now)
    sends = [a for a in acts if isinstance(a, Send)]
    assert sends and all(s.through_vpn and s.datagram.source == TIA for s in sends)
    assert any(isinstance(a, Note) and a.kind == "nat-rebind" for a in acts)
    w.apply(acts)
    w.run(1)
    assert len([s for _, s in w.sent if s.through_vpn]) == before + 1
    assert w.m.mode is Mode.VPN and w.ha.bindings[ALICE].udp_tunnel


# -- the driver: the TIA's socket carries the tunnel --------------------------------

async def test_rfc5266_4_the_driver_puts_the_udp_tunnel_on_the_tias_socket():
    routes = VpnRoutes()
    d, history = vpn_driver(routes)
    d._loop = asyncio.get_running_loop()
    link = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tia = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tia.bind(("127.0.0.1", 0))
    d.sockets._reg, d.sockets._vpn_reg = link, tia
    try:
        d.vpn.nat_detected(True)  # charon: the SA crosses a NAT too
        await d._execute([ConfigureDataPlane(Mode.VPN, "eth0", tia=TIA, udp_tunnel=True,
                                             keepalive_s=20)], MONO)
        assert routes.configured[-1] == (Mode.VPN, {"foreign_agent": None, "udp": tia,
                                                    "tia": TIA})
        assert d.keepalive.running and d.keepalive.via_vpn
        assert ("udp-tunnel", {"keepalive_s": "20", "path": "vpn"}) in [
            (e.kind, e.details) for e in history]
        assert d.snapshot.nat_layers == (NAT_IPSEC, NAT_MOBILE_IP)
        assert d.snapshot.nat_detected
        # A MOBIKE move (a new link) keeps the gateway's mapping and its keepalives
        # (the driver's side only: the machine is not fed here).
        async def unfed(ev: Any, now: float) -> None:
            pass

        d._feed = unfed  # type: ignore[method-assign]
        await d._link_event(am.LinkUp("eth0", IPv4Interface("192.168.50.7/24"),
                                      A("192.168.50.1")), MONO)
        assert d.keepalive.running
        # The keepalive leaves from the TIA's socket, not the link's.
        ticked: list[Any] = []
        d.keepalive.tick = lambda now, reg: bool(ticked.append(reg))  # type: ignore[method-assign]
        await d._tick(MONO + 20)
        assert ticked == [tia]
    finally:
        d.sockets._reg = d.sockets._vpn_reg = None
        link.close()
        tia.close()
        d.sockets.close()


def test_rfc5266_4_the_tias_loss_ends_its_keepalives_and_its_nat():
    d, _ = vpn_driver()
    try:
        d.keepalive.configure(True, 20, MONO, via_vpn=True)
        d.vpn.nat_detected(True)
        asyncio.run(d._execute([am.DropTia(TIA)], MONO))
        assert not d.keepalive.running
        d.board.publish(d.vpn.nat.configured(d.snapshot, Mode.NONE, False))
        assert (d.snapshot.nat_detected, d.snapshot.nat_layers) == (False, ())
    finally:
        d.sockets.close()


# -- the data plane: RFC 3519 has no kernel tunnel, so the binding goes userspace ------

class FakeTunnel:
    """The userspace tunnel without a TUN device: its device appears in the fake
    netlink with an index of its own (8, 9...; the kernel's ipip device is 7)."""

    made: ClassVar[list[FakeTunnel]] = []
    ipr: ClassVar[FakeIPRoute] = FakeIPRoute()

    def __init__(self, name: str, *_: Any) -> None:
        self.name, self.udp, self.routes, self.closed = name, None, [], False
        FakeTunnel.made.append(self)
        FakeTunnel.ipr.indexes[name] = 7 + len(FakeTunnel.made)

    def set_route(self, key: Any, endpoint: Any) -> None:
        self.routes.append(endpoint)

    def set_accept(self, *_: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def bind(self, *_: Any) -> None:
        pass

    def attach_udp(self, udp: Any) -> None:
        self.udp = udp

    def close(self) -> None:
        self.closed = True

    def write(self, inner: bytes) -> None:
        pass


@pytest.fixture
def kernel_routes(monkeypatch: pytest.MonkeyPatch) -> tuple[MobileNodeRoutes, FakeIPRoute]:
    monkeypatch.setattr(mn_routes, "UserspaceTunnel", FakeTunnel)
    FakeTunnel.made = []
    ipr = FakeTunnel.ipr = FakeIPRoute()
    return MobileNodeRoutes(ALICE, IPv4Network("10.20.1.0/24"), HA, Backend.KERNEL,
                            ipr=ipr), ipr


LINK = LinkInfo("eth0", IPv4Interface("192.168.60.100/24"), A("192.168.60.1"))


async def test_kernel_dataplane_a_udp_tunnelled_binding_takes_the_userspace_plane(
        kernel_routes) -> None:
    """``--dataplane kernel`` behind a NAT: the binding the home agent UDP-tunnels
    gets the userspace tunnel (before: EOPNOTSUPP, configuring failed, the gate
    stayed shut); the next plain binding gets the kernel's ipip device again."""
    r, ipr = kernel_routes
    udp = object()
    assert r.plane(True) is Backend.USERSPACE and r.plane(False) is Backend.KERNEL
    await r.set_link(LINK)
    ipr.take()
    await r.configure(Mode.COLOCATED, udp=udp)  # type: ignore[arg-type]
    calls = ipr.take()
    assert not [c for c in calls if c[:2] == ("link", "add")], "no kernel ipip device"
    [tun] = FakeTunnel.made
    assert tun.udp is udp and tun.routes[-1].udp_port == 434
    assert ("link", "set", {"index": 8, "mtu": 1480 - 12}) in calls
    assert ("addr", "replace", {"index": 8, "address": str(ALICE), "prefixlen": 32}) in calls
    # Mode c without a NAT, kernel plane: the userspace device goes, ipip comes.
    await r.configure(Mode.COLOCATED)
    calls = ipr.take()
    assert tun.closed
    assert ("link", "add", {"ifname": TUNNEL, "kind": "ipip", "ipip_local": "192.168.60.100",
                            "ipip_remote": str(HA)}) in calls
    assert ("addr", "replace", {"index": 7, "address": str(ALICE), "prefixlen": 32}) in calls
    # And back behind the NAT: the kernel's device goes, a userspace one comes.
    await r.configure(Mode.COLOCATED, udp=udp)  # type: ignore[arg-type]
    calls = ipr.take()
    assert ("link", "del", {"index": 7}) in calls
    assert len(FakeTunnel.made) == 2 and FakeTunnel.made[1].udp is udp
    assert ("addr", "replace", {"index": 9, "address": str(ALICE), "prefixlen": 32}) in calls
    assert ("route", "replace", {"dst": "0.0.0.0/0", "table": mn_routes.TABLE_MODE,
                                 "oif": 9, "prefsrc": str(ALICE)}) in calls


async def test_kernel_dataplane_mc_with_a_translated_tia_takes_the_userspace_plane(
        kernel_routes) -> None:
    r, ipr = kernel_routes
    udp = object()
    await r.set_link(LINK)
    await r.configure(Mode.VPN, udp=udp, tia=TIA)  # type: ignore[arg-type]
    calls = ipr.take()
    assert not [c for c in calls if c[:2] == ("link", "add")]
    [tun] = FakeTunnel.made
    assert tun.udp is udp and tun.routes[-1].udp_port == 434
    assert ("route", "replace", {"dst": f"{HA}/32", "table": mn_routes.TABLE_MODE,
                                 "gateway": "192.168.60.1", "oif": 2,
                                 "prefsrc": str(TIA)}) in calls


def test_rfc3519_mc_put_back_on_its_tunnel_keeps_the_udp_tunnel_and_its_keepalives():
    """mc's home address claimed for the home link, then another link while mc holds:
    the data plane goes back to mc as configured, UDP-tunnelled with its keepalive
    interval (the home agent still UDP-tunnels; IP-in-IP here would lose its packets)."""
    w = nat_world()
    w.move("pub")
    w.run(2)
    assert w.m.mode is Mode.VPN and w.ha.bindings[ALICE].udp_tunnel
    first = next(a for _, a in w.actions if isinstance(a, ConfigureDataPlane)
                 and a.mode is Mode.VPN)
    w.move("home")
    for _ in range(200):
        if w.m.home_claimed is not None:
            break
        w.run(0.01)
    assert w.m.home_claimed == "eth0" and w.m.mode is Mode.VPN
    n = len(w.actions)
    w.move("pub")
    again = [a for _, a in w.actions[n:] if isinstance(a, ConfigureDataPlane)
             and a.mode is Mode.VPN]
    assert again and again[0] == first, again
