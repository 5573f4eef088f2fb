"""RFC 3519 (Mobile IP traversal of NAT devices): home agent and mobile node rules."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address

import pytest

from app.agents.binding_store import BindingStore
from app.agents.bindings import Binding
from app.agents.ha_core import HomeAgent
from app.agents.ha_server import HomeAgentServer
from app.agents.ha_userspace import UserspaceHomeAgentPlane
from app.mip.auth import Algorithm, append_authenticator
from app.mip.extensions import ExtType, UdpTunnelReply, UdpTunnelRequest
from app.mip.messages import RegFlags, RegistrationReply, RegistrationRequest
from app.mn.registration import Registered, RegistrationClient, RegistrationConfig
from tests.mipclient import KEY_A, Mn
from tests.support.identities import ALICE, HA, T0, config

A = IPv4Address
COA = "10.30.0.5"
NAT = (A("198.51.100.7"), 40001)
FA_COA = A("10.40.1.1")


@pytest.fixture
def alice():
    return Mn(ALICE, HA, KEY_A, clock=lambda: T0)


def answer(ha: HomeAgent, data: bytes, src=NAT) -> RegistrationReply:
    out = ha.handle_request(data, src, T0)
    assert out.reply is not None, out.log
    return RegistrationReply.decode(out.reply)


# -- home agent -------------------------------------------------------------------

def test_rfc3519_3_1_4_encapsulation_0_means_as_m_and_g_say(alice):
    rep = answer(HomeAgent(config()), alice.request(COA, extensions=[
        UdpTunnelRequest(encapsulation=0)]))
    assert rep.code == 1 and rep.udp_tunnel_reply.code == 0
    rep = answer(HomeAgent(config()), alice.request(COA, flags=RegFlags.D | RegFlags.G,
                                                    extensions=[UdpTunnelRequest(
                                                        encapsulation=0)]))
    assert rep.code == 142  # GRE in UDP, by the G bit: not offered


def test_rfc3519_3_1_4_nonzero_encapsulation_overrides_m_and_g(alice):
    rep = answer(HomeAgent(config()), alice.request(COA, flags=RegFlags.D | RegFlags.G,
                                                    extensions=[UdpTunnelRequest()]))
    assert rep.code == 1 and rep.udp_tunnel_reply.code == 0


def test_rfc3519_4_1_unsupported_encapsulation_142(alice):
    rep = answer(HomeAgent(config()), alice.request(COA, extensions=[
        UdpTunnelRequest(encapsulation=55)]))
    assert rep.code == 142


def test_rfc3519_4_6_1_nat_traversal_not_allowed_129(alice):
    rep = answer(HomeAgent(config(udp_tunnelling=False)),
                 alice.request(COA, extensions=[UdpTunnelRequest()]))
    assert rep.code == 129


def test_rfc3519_4_6_1_forced_not_allowed_129(alice):
    rep = answer(HomeAgent(config(udp_tunnelling=False)),
                 alice.request(COA, extensions=[UdpTunnelRequest(force=True)]),
                 src=(A(COA), 434))
    assert rep.code == 129


def test_rfc3519_4_6_1_mobile_nodes_request_without_d_bit_134(alice):
    rep = answer(HomeAgent(config()), alice.request(str(FA_COA), flags=RegFlags.T,
                                                    extensions=[UdpTunnelRequest()]))
    assert rep.code == 134


def test_rfc3519_4_6_1_foreign_agents_request_with_d_bit_134(alice):
    data = alice.request(COA) + UdpTunnelRequest().encode()
    assert answer(HomeAgent(config()), data).code == 134


def test_rfc3519_4_6_1_reserved_3_nonzero_134(alice):
    rep = answer(HomeAgent(config()), alice.request(COA, extensions=[
        UdpTunnelRequest(reserved3=1)]))
    assert rep.code == 134


def test_rfc3519_4_5_request_added_by_a_foreign_agent_after_the_mhae_honoured(alice):
    # An FA behind a NAT relays with its own UDP Tunnel Request after the MHAE.
    data = alice.request(str(FA_COA), flags=RegFlags.T) + UdpTunnelRequest().encode()
    ha = HomeAgent(config())
    rep = answer(ha, data)
    assert rep.code == 1 and rep.udp_tunnel_reply is not None
    assert rep.udp_tunnel_reply.code == 0
    b = ha.bindings[ALICE]
    assert b.udp_tunnel and (b.source_address, b.source_port) == NAT


def test_rfc3519_4_6_declining_reply_without_nat(alice):
    rep = answer(HomeAgent(config()), alice.request(COA, extensions=[UdpTunnelRequest()]),
                 src=(A(COA), 434))
    assert rep.code == 1 and rep.udp_tunnel_reply.code == 64


def test_rfc3519_4_10_new_mapping_learnt_from_a_new_registration(alice):
    ha = HomeAgent(config())
    answer(ha, alice.request(COA, extensions=[UdpTunnelRequest()]))
    moved = (NAT[0], 40999)
    answer(ha, alice.request(COA, extensions=[UdpTunnelRequest()]), src=moved)
    b = ha.bindings[ALICE]
    assert (b.source_address, b.source_port) == moved


class _FakeTunnel:
    def __init__(self, endpoint: tuple[str, int]) -> None:
        self.route = (socket.inet_aton(endpoint[0]), endpoint[1], False)
        self.written: list[bytes] = []
        self.spoofed = 0
        self.moved: list[object] = []

    def route_of(self, _key: bytes) -> tuple[bytes, int, bool] | None:
        return self.route

    def count_spoofed(self) -> None:
        self.spoofed += 1

    def write(self, pkt: bytes) -> None:
        self.written.append(pkt)

    def set_route(self, key: bytes, endpoint: object) -> None:
        self.moved.append(endpoint)


def _inner_from_home() -> bytes:
    return bytes([0x45, 0, 0, 20]) + bytes(8) + ALICE.packed + A("10.20.1.50").packed


@pytest.mark.parametrize(("source", "taken"), [
    (("198.51.100.7", 40001), True),
    (("198.51.100.7", 40002), False),   # same NAT, another port: another host
    (("198.51.100.8", 40001), False),
])
def test_rfc3519_4_3_tunnel_data_only_from_the_bound_address_and_port(source, taken):
    plane = object.__new__(UserspaceHomeAgentPlane)
    plane.tunnel = _FakeTunnel(("198.51.100.7", 40001))
    plane.udp_tunnel_data(source, _inner_from_home())
    assert bool(plane.tunnel.written) == taken and plane.tunnel.spoofed == (not taken)
    assert plane.tunnel.moved == []  # 4.10: never a new mapping from data


class _Recorder:
    def __init__(self) -> None:
        self.data: list[bytes] = []

    def start(self, _sock: socket.socket) -> None: ...

    def tunnel_data(self, _source: tuple[str, int], inner: bytes) -> None:
        self.data.append(inner)

    def binding_up(self, _b: Binding) -> None: ...

    def binding_down(self, _b: Binding) -> None: ...

    def close(self) -> None: ...


def test_rfc3519_3_3_tunnel_data_with_another_next_header_dropped(tmp_path):
    async def main() -> tuple[list[bytes], int]:
        plane = _Recorder()
        server = HomeAgentServer(HomeAgent(config()), BindingStore(tmp_path), plane)
        host, port = server.start("127.0.0.1", 0)
        done = asyncio.get_running_loop().create_future()
        orig = plane.tunnel_data

        def seen(src: tuple[str, int], inner: bytes) -> None:
            orig(src, inner)
            done.set_result(None)

        plane.tunnel_data = seen  # type: ignore[method-assign]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"\x04\x2f\x00\x00" + b"GRE?", (host, port))   # Next Header 47
            s.sendto(b"\x04\x04\xff\xff" + _inner_from_home(), (host, port))  # Reserved ignored
        await asyncio.wait_for(done, 5)
        server.close()
        return plane.data, server.tunnel_data_dropped

    data, dropped = asyncio.run(main())
    assert data == [_inner_from_home()] and dropped == 1


# -- mobile node ----------------------------------------------------------------------

def _client(mode: str = "auto") -> RegistrationClient:
    from app.mn.registration import UdpTunnelling
    return RegistrationClient(RegistrationConfig(ALICE, HA, 256, Algorithm.HMAC_MD5, KEY_A,
                                                 lifetime=100,
                                                 udp_tunnelling=UdpTunnelling(mode)))


@pytest.mark.parametrize(("mode", "want"), [("auto", False), ("force", True), ("off", None)])
def test_rfc3519_4_4_co_located_request_carries_the_profiles_choice(mode, want):
    c = _client(mode)
    c.register(A(COA), T0)
    req = RegistrationRequest.decode(c.datagrams_to_send()[0].data)
    utr = req.udp_tunnel_request
    assert (None if utr is None else utr.force) == want
    if utr is not None:  # 4.4: before the MHAE, so it is covered; 3.1.5: D set
        assert req.extensions.index(utr) < req.extensions.index(req.mobile_home_auth)
        assert req.flags & RegFlags.D


def test_rfc3519_4_4_never_through_a_foreign_agent_care_of_address():
    c = _client("force")
    c.register(FA_COA, T0, via=FA_COA, udp_tunnel=True)
    assert RegistrationRequest.decode(c.datagrams_to_send()[0].data).udp_tunnel_request is None


def test_rfc3519_4_4_no_tunnel_reply_means_no_udp_tunnelling():
    c = _client("force")
    c.register(A(COA), T0)
    i = RegistrationRequest.decode(c.datagrams_to_send()[0].data).identification
    c.receive(append_authenticator(RegistrationReply(1, 100, ALICE, HA, i).encode(),
                                   ExtType.MOBILE_HOME_AUTH, 256, KEY_A, Algorithm.HMAC_MD5),
              T0)
    ev = c.next_event()
    assert isinstance(ev, Registered) and not ev.udp_tunnel


def test_rfc3519_auto_behind_a_nat_is_tunnelled_over_udp():
    c, ha = _client("auto"), HomeAgent(config())
    c.register(A(COA), T0)
    d = c.datagrams_to_send()[0]
    c.receive(ha.handle_request(d.data, NAT, T0).reply, T0)
    ev = c.next_event()
    assert isinstance(ev, Registered) and ev.udp_tunnel and ev.keepalive_interval == 110


def test_rfc3519_3_2_assent_codes_below_64():
    c = _client("force")
    c.register(A(COA), T0)
    i = RegistrationRequest.decode(c.datagrams_to_send()[0].data).identification
    msg = RegistrationReply(1, 100, ALICE, HA, i, (UdpTunnelReply(code=5),)).encode()
    c.receive(append_authenticator(msg, ExtType.MOBILE_HOME_AUTH, 256, KEY_A,
                                   Algorithm.HMAC_MD5), T0)
    ev = c.next_event()
    assert isinstance(ev, Registered) and ev.udp_tunnel


def test_rfc3519_4_7_no_udp_tunnelling_unless_requested():
    c = _client("off")
    c.register(A(COA), T0)
    i = RegistrationRequest.decode(c.datagrams_to_send()[0].data).identification
    msg = RegistrationReply(1, 100, ALICE, HA, i, (UdpTunnelReply(),)).encode()
    c.receive(append_authenticator(msg, ExtType.MOBILE_HOME_AUTH, 256, KEY_A,
                                   Algorithm.HMAC_MD5), T0)
    ev = c.next_event()
    assert isinstance(ev, Registered) and not ev.udp_tunnel
