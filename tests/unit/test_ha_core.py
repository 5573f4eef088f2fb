"""Every decision of the home agent core, driven with a fake clock."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from app.agents.bindings import ChangeKind
from app.agents.ha_core import HomeAgent
from app.mip import ident
from app.mip.auth import Algorithm
from app.mip.extensions import NaiExtension, SkippedExtension, UdpTunnelRequest
from app.mip.messages import RegFlags, RegistrationReply
from tests.mipclient import KEY_A, KEY_B, Mn
from tests.support.identities import ALICE, BOB, HA, T0, config

A = IPv4Address
COA = "10.30.0.5"
SRC = (A(COA), 434)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ha():
    return HomeAgent(config(), nonce=iter(range(1000, 10**6)).__next__)


@pytest.fixture
def alice(clock):
    return Mn(ALICE, HA, KEY_A, clock=clock)


@pytest.fixture
def bob(clock):
    return Mn(BOB, HA, KEY_B, spi=257, algorithm=Algorithm.KEYED_MD5, clock=clock,
              nonce_mode=True)


def send(ha, mn, clock, data, src=SRC):
    out = ha.handle_request(data, src, clock.now)
    rep = None
    if out.reply is not None:
        rep = mn.check_reply(out.reply) if out.reply[-20] == 32 else RegistrationReply.decode(
            out.reply)
        mn.learn(rep)
    return out, rep


def test_accept_creates_binding_and_signed_reply(ha, alice, clock):
    out, rep = send(ha, alice, clock, alice.request(COA, extensions=[NaiExtension(
        "alice@corp.example")]))
    assert rep.code == 1 and rep.lifetime == 600 and rep.home_agent == HA
    assert rep.home_address == ALICE
    b = ha.bindings[ALICE]
    assert b.care_of_address == A(COA) and b.expires_at == T0 + 600 and b.reverse_tunnel
    assert b.nai == "alice@corp.example" and not b.udp_tunnel and not b.nat_detected
    assert [c.kind for c in out.changes] == [ChangeKind.ADDED]
    assert out.replay[0] == ALICE


def test_reply_echoes_identification(ha, alice, clock):
    data = alice.request(COA)
    _, rep = send(ha, alice, clock, data)
    assert rep.identification == alice._last


def test_lifetime_capped_and_infinite(ha, alice, clock):
    _, rep = send(ha, alice, clock, alice.request(COA, lifetime=5000))
    assert rep.code == 1 and rep.lifetime == 600
    clock.now += 1
    _, rep = send(ha, alice, clock, alice.request(COA, lifetime=0xFFFF))
    assert rep.lifetime == 600
    clock.now += 1
    _, rep = send(ha, alice, clock, alice.request(COA, lifetime=30))
    assert rep.lifetime == 30 and ha.bindings[ALICE].expires_at == clock.now + 30


def test_move_updates_binding(ha, alice, clock):
    send(ha, alice, clock, alice.request(COA))
    clock.now += 5
    out, rep = send(ha, alice, clock, alice.request("10.40.0.9"), src=(A("10.40.0.9"), 434))
    assert rep.code == 1
    assert out.changes[0].kind is ChangeKind.UPDATED
    assert out.changes[0].previous.care_of_address == A(COA)
    assert ha.bindings[ALICE].care_of_address == A("10.40.0.9")
    assert "moved" in out.log


@pytest.mark.parametrize("how", ["lifetime0", "coa_is_hoa"])
def test_deregistration(ha, alice, clock, how):
    send(ha, alice, clock, alice.request(COA))
    clock.now += 1
    data = (alice.request(COA, lifetime=0) if how == "lifetime0"
            else alice.request(str(ALICE), lifetime=600))
    out, rep = send(ha, alice, clock, data)
    assert rep.code == 1 and rep.lifetime == 0
    assert ALICE not in ha.bindings
    assert out.changes[0].kind is ChangeKind.REMOVED


def test_expiry_with_fake_clock(ha, alice, clock):
    send(ha, alice, clock, alice.request(COA, lifetime=30))
    assert ha.next_expiry() == T0 + 30
    assert ha.expire(T0 + 29.9) == []
    gone = ha.expire(T0 + 30)
    assert [c.kind for c in gone] == [ChangeKind.EXPIRED] and ALICE not in ha.bindings
    assert ha.next_expiry() is None


def test_renewal_moves_expiry(ha, alice, clock):
    send(ha, alice, clock, alice.request(COA, lifetime=30))
    clock.now += 20
    send(ha, alice, clock, alice.request(COA, lifetime=30))
    assert ha.expire(T0 + 31) == []  # the old deadline is stale
    assert ha.next_expiry() == T0 + 50
    assert len(ha.expire(T0 + 50)) == 1


def test_134_poorly_formed_is_still_signed(ha, alice, clock):
    data = alice.request(COA) + b"\x83\x40ab"  # NAI length runs past the end
    out, rep = send(ha, alice, clock, data)
    assert rep.code == 134 and "malformed" in out.log and "offset" in out.log
    assert ALICE not in ha.bindings


def test_134_zero_coa(ha, alice, clock):
    _, rep = send(ha, alice, clock, alice.request("0.0.0.0"))
    assert rep.code == 134


def test_unknown_nonskippable_extension_discarded_silently(ha, alice, clock):
    data = alice.request(COA, sign=False) + bytes([99, 0])
    out = ha.handle_request(data, SRC, clock.now)
    assert out.reply is None and "discarded" in out.log


def test_garbage_discarded(ha, clock):
    out = ha.handle_request(b"\x03hello", SRC, clock.now)
    assert out.reply is None and "not a registration request" in out.log


def test_skippable_extension_ignored(ha, alice, clock):
    _, rep = send(ha, alice, clock, alice.request(COA, extensions=[SkippedExtension(250, b"z")]))
    assert rep.code == 1


@pytest.mark.parametrize(("kw", "why"), [
    ({"key": b"\x00" * 16}, "does not verify"),
    ({"spi": 999}, "unknown SPI 999"),
])
def test_131_authentication(ha, alice, clock, kw, why):
    out, rep = send(ha, alice, clock, alice.request(COA, **kw))
    assert rep.code == 131 and why in out.log
    assert ALICE not in ha.bindings
    assert out.replay is None  # an unauthenticated request must not move replay state


def test_unknown_home_address_silently_discarded(ha, clock):
    # RFC 5944 3.8.2.1a: no security association -> no reply at all (logged).
    stranger = Mn(A("10.20.1.99"), HA, KEY_A, clock=clock)
    out = ha.handle_request(stranger.request(COA), SRC, clock.now)
    assert out.reply is None and "no security association" in out.log


def test_131_nai_mismatch(ha, alice, clock):
    out, rep = send(ha, alice, clock, alice.request(COA, extensions=[NaiExtension("bob@x")]))
    assert rep.code == 131 and "NAI" in out.log


def test_nai_after_mhae_is_not_trusted(ha, alice, clock):
    data = alice.request(COA) + NaiExtension("bob@corp.example").encode()
    _out, rep = send(ha, alice, clock, data)
    assert rep.code == 1 and ha.bindings[ALICE].nai is None


def test_home_address_assigned_from_nai(ha, clock):
    mn = Mn(A("0.0.0.0"), HA, KEY_A, clock=clock)
    out = ha.handle_request(mn.request(COA, extensions=[NaiExtension("alice@corp.example")]),
                            SRC, clock.now)
    rep = mn.check_reply(out.reply)
    assert rep.code == 1 and rep.home_address == ALICE and ALICE in ha.bindings


def test_133_replay_of_identical_request(ha, alice, clock):
    data = alice.request(COA)
    _, rep = send(ha, alice, clock, data)
    assert rep.code == 1
    clock.now += 1
    out, rep = send(ha, alice, clock, data)
    assert rep.code == 133 and "not newer" in out.log


def test_133_clock_skew_then_resync(ha, alice, clock):
    alice.clock_offset = -300.0  # five minutes slow
    out, rep = send(ha, alice, clock, alice.request(COA))
    assert rep.code == 133 and "off the home agent's clock" in out.log
    assert ident.high(rep.identification) == ident.high(ident.ntp_from_unix(clock.now))
    assert abs(alice.clock_offset) <= 1.0  # learned from the reply
    clock.now += 0.5
    _, rep = send(ha, alice, clock, alice.request(COA))
    assert rep.code == 1


def test_nonce_mode_handshake_and_replay(ha, bob, clock):
    _, rep = send(ha, bob, clock, bob.request(COA, spi=257))
    assert rep.code == 133 and ident.high(rep.identification) == 1000
    data = bob.request(COA, spi=257)
    _, rep = send(ha, bob, clock, data)
    assert rep.code == 1 and ident.high(rep.identification) == 1001
    assert ident.low(rep.identification) == ident.low(data and bob._last)
    _, rep = send(ha, bob, clock, data)  # replay with the consumed nonce
    assert rep.code == 133
    _, rep = send(ha, bob, clock, bob.request(COA, spi=257))
    assert rep.code == 1


def test_136_wrong_home_agent(ha, alice, clock):
    out, rep = send(ha, alice, clock, alice.request(COA, home_agent="10.20.1.2"))
    assert rep.code == 136 and rep.home_agent == HA
    assert out.replay is not None  # authentic and fresh: replay state advances


def test_order_auth_before_identification(ha, alice, clock):
    alice.clock_offset = -300.0
    _, rep = send(ha, alice, clock, alice.request(COA, key=b"\x01" * 16))
    assert rep.code == 131


def test_order_identification_before_ha_address(ha, alice, clock):
    alice.clock_offset = -300.0
    _, rep = send(ha, alice, clock, alice.request(COA, home_agent="10.20.1.2"))
    assert rep.code == 133


def test_137_reverse_tunnel_off(alice, clock):
    ha = HomeAgent(config(reverse_tunnelling=False))
    _, rep = send(ha, alice, clock, alice.request(COA))
    assert rep.code == 137
    _, rep = send(ha, alice, clock, alice.request(COA, flags=RegFlags.D))
    assert rep.code == 1


def test_139_encapsulation(ha, alice, clock):
    _, rep = send(ha, alice, clock, alice.request(COA, flags=RegFlags.D | RegFlags.M))
    assert rep.code == 139


def test_simultaneous_bindings_unsupported_code_1(ha, alice, clock):
    _, rep = send(ha, alice, clock, alice.request(COA, flags=RegFlags.D | RegFlags.S))
    assert rep.code == 1 and ALICE in ha.bindings


def test_reserved_bits_ignored(ha, alice, clock):
    _, rep = send(ha, alice, clock, alice.request(COA, flags=RegFlags.D | RegFlags.r
                                                  | RegFlags.x))
    assert rep.code == 1


NAT_SRC = (A("198.51.100.7"), 40001)


def test_nat_detected_with_udp_tunnel_request(ha, alice, clock):
    out, rep = send(ha, alice, clock, alice.request(COA, extensions=[UdpTunnelRequest()]),
                    src=NAT_SRC)
    assert rep.code == 1
    utr = rep.udp_tunnel_reply
    assert utr is not None and utr.code == 0 and utr.keepalive_interval == 110
    b = ha.bindings[ALICE]
    assert b.udp_tunnel and b.nat_detected
    assert (b.source_address, b.source_port) == NAT_SRC
    assert "UDP tunnel" in out.log


def test_nat_mapping_change_followed_on_renewal(ha, alice, clock):
    send(ha, alice, clock, alice.request(COA, extensions=[UdpTunnelRequest()]), src=NAT_SRC)
    clock.now += 10
    send(ha, alice, clock, alice.request(COA, extensions=[UdpTunnelRequest()]),
         src=(A("198.51.100.7"), 50002))
    assert ha.bindings[ALICE].source_port == 50002


def test_forced_udp_without_nat(ha, alice, clock):
    _, rep = send(ha, alice, clock, alice.request(COA, extensions=[UdpTunnelRequest(True)]))
    assert rep.code == 1 and rep.udp_tunnel_reply.forced
    assert ha.bindings[ALICE].udp_tunnel and not ha.bindings[ALICE].nat_detected


def test_udp_requested_without_nat_is_declined_not_refused(ha, alice, clock):
    _, rep = send(ha, alice, clock, alice.request(COA, extensions=[UdpTunnelRequest()]))
    assert rep.code == 1 and rep.udp_tunnel_reply.code == 64
    assert not ha.bindings[ALICE].udp_tunnel


def test_nat_without_udp_request_129(ha, alice, clock):
    out, rep = send(ha, alice, clock, alice.request(COA), src=NAT_SRC)
    assert rep.code == 129 and "NAT detected" in out.log


def test_129_udp_forbidden(alice, clock):
    # RFC 3519 4.6.1: NAT detected but traversal not allowed -> 129.
    ha = HomeAgent(config(udp_tunnelling=False))
    _, rep = send(ha, alice, clock, alice.request(COA, extensions=[UdpTunnelRequest()]),
                  src=NAT_SRC)
    assert rep.code == 129


def test_142_udp_encapsulation_other_than_ipip(ha, alice, clock):
    _, rep = send(ha, alice, clock, alice.request(
        COA, extensions=[UdpTunnelRequest(encapsulation=47)]), src=NAT_SRC)
    assert rep.code == 142


def test_fa_mode_source_differs_is_not_nat(ha, alice, clock):
    # Without D the CoA is a foreign agent's; the FA relaying is not a NAT.
    _, rep = send(ha, alice, clock, alice.request(COA, flags=RegFlags.T),
                  src=(A("10.30.0.1"), 434))
    assert rep.code == 1 and not ha.bindings[ALICE].nat_detected


def test_restored_bindings_and_replay_state(ha, alice, clock):
    data = alice.request(COA, lifetime=100)
    send(ha, alice, clock, data)
    again = HomeAgent(config(), ha.bindings.values(), {ALICE: ha.replay_state(ALICE)})
    assert again.bindings[ALICE].expires_at == T0 + 100
    clock.now += 1
    out = again.handle_request(data, SRC, clock.now)
    assert RegistrationReply.decode(out.reply).code == 133  # replay still refused
    assert again.next_expiry() == T0 + 100


def test_expiry_heap_stays_bounded_under_renewals(ha, alice, clock):
    for _ in range(5000):
        clock.now += 0.01
        send(ha, alice, clock, alice.request(COA, lifetime=30))
    assert len(ha._expiry) <= 2 * len(ha.bindings) + 1024
    assert ha.next_expiry() == ha.bindings[ALICE].expires_at
    assert len(ha.expire(clock.now + 30)) == 1


FA_COA = A("10.40.1.1")
FA_KEY = bytes(range(32, 48))


def _fa_ha():
    from app.agents.ha_config import ForeignAgentSA
    return HomeAgent(config(foreign_agents=(ForeignAgentSA(FA_COA, 900, Algorithm.HMAC_MD5,
                                                           FA_KEY),)))


def _via_fa(mn, key=FA_KEY, spi=900, sign_fa=True):
    from app.mip.auth import append_authenticator
    data = mn.request(str(FA_COA), flags=RegFlags.T)
    return append_authenticator(data, 34, spi, key, Algorithm.HMAC_MD5) if sign_fa else data


def test_132_foreign_agent_authentication(alice, clock):
    ha = _fa_ha()
    fa_src = (A("10.0.0.11"), 434)
    out, rep = send(ha, alice, clock, _via_fa(alice, sign_fa=False), src=fa_src)
    assert rep.code == 132 and "no foreign-home authenticator" in out.log
    out, rep = send(ha, alice, clock, _via_fa(alice, key=b"\x07" * 16), src=fa_src)
    assert rep.code == 132 and "does not verify" in out.log
    out, rep = send(ha, alice, clock, _via_fa(alice), src=fa_src)
    assert rep.code == 1
    # The reply carries an FHAE after the MHAE, covering it, for the FA to check.
    from app.mip.auth import verify
    from app.mip.extensions import AuthExtension
    fhae = [e for e in RegistrationReply.decode(out.reply).extensions
            if isinstance(e, AuthExtension) and e.ext_type == 34]
    assert fhae and fhae[0].spi == 900
    assert verify(Algorithm.HMAC_MD5, FA_KEY, fhae[0].covered, fhae[0].authenticator)


def test_co_located_requests_need_no_fhae(alice, clock):
    _, rep = send(_fa_ha(), alice, clock, alice.request(COA))
    assert rep.code == 1
