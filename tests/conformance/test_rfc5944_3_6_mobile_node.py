"""RFC 5944 section 3.6 (and 5.7): the mobile node's registration, one test per rule.

The peer is the real home agent core; time is a fake clock (the shared world,
``tests/support/world.py``, with a registration client alone in it).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from app.agents.ha_core import HomeAgent
from app.mip import ident
from app.mip.auth import Algorithm, append_authenticator
from app.mip.codes import ReplyCode
from app.mip.extensions import ExtType, UdpTunnelReply
from app.mip.messages import RegistrationReply, RegistrationRequest
from app.mn.registration import (
    Denied,
    Registered,
    RegistrationClient,
    RegistrationConfig,
    ReplayMode,
    TimedOut,
)
from tests.mipclient import KEY_A, KEY_B
from tests.support.identities import ALICE, BOB, HA, T0, config
from tests.support.world import client_world

A = IPv4Address
COA = A("10.30.1.50")
FA = A("10.40.1.1")
FA_IP_SOURCE = A("10.40.1.254")  # an FA may advertise a CoA that is not its own address


def alice(**kw: object) -> RegistrationClient:
    cfg = RegistrationConfig(ALICE, HA, 256, Algorithm.HMAC_MD5, KEY_A, lifetime=100)
    return RegistrationClient(replace(cfg, **kw))


def bob(**kw: object) -> RegistrationClient:
    cfg = RegistrationConfig(BOB, HA, 257, Algorithm.KEYED_MD5, KEY_B, lifetime=100,
                             replay=ReplayMode.NONCE)
    return RegistrationClient(replace(cfg, **kw))


def silent_send_times(c: RegistrationClient) -> list[float]:
    """When each request leaves while nothing answers."""
    link = client_world(c, HomeAgent(config()), drop=lambda _d: True)
    c.register(COA, T0)
    link.run_from(T0, T0 + 120)
    return [t - T0 for t, _ in link.sent]


# -- 3.6.3 Registration Retransmission ------------------------------------------

@pytest.mark.parametrize("initial", [0.1, 0.3, 0.5])
def test_rfc5944_3_6_3_retransmit_at_least_1s_apart(initial):
    times = silent_send_times(alice(initial_timeout=initial, retries=4))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 4 and min(gaps) >= 1.0, gaps


def test_rfc5944_3_6_3_each_timeout_at_least_twice_the_previous():
    times = silent_send_times(alice(initial_timeout=1.0, retries=3, max_timeout=60))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(b >= 2 * a for a, b in itertools.pairwise(gaps)), gaps


def test_rfc5944_3_6_3_timeout_no_greater_than_requested_lifetime():
    times = silent_send_times(alice(initial_timeout=1.0, retries=5, max_timeout=60,
                                    lifetime=3))
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= 3, gaps


def test_rfc5944_3_6_3_nonce_mode_retransmits_the_unchanged_request():
    c = bob()
    link = client_world(c, HomeAgent(config()), drop=lambda _d: True)
    c.register(COA, T0)
    link.run_from(T0, T0 + 20)
    assert len(link.sent) >= 3
    assert len({s.datagram.data for _, s in link.sent}) == 1


def test_rfc5944_3_6_3_timestamp_mode_retransmission_is_a_new_identification():
    c = alice()
    link = client_world(c, HomeAgent(config()), drop=lambda _d: True)
    c.register(COA, T0)
    link.run_from(T0, T0 + 20)
    ids = [RegistrationRequest.decode(s.datagram.data).identification for _, s in link.sent]
    assert len(ids) >= 3 and ids == sorted(set(ids))


@pytest.mark.parametrize("mode", ["timestamp", "nonce"])
@pytest.mark.parametrize("rtt", [0.4, 1.2, 2.5])
def test_rfc5944_3_6_3_distant_home_agent_registers(mode, rtt):
    c = alice() if mode == "timestamp" else bob()
    ha = HomeAgent(config(), nonce=iter(range(1000, 10**6)).__next__)
    link = client_world(c, ha, one_way=rtt / 2)
    c.register(COA, T0)
    link.run_from(T0, T0 + 30)
    got = link.m.first(Registered)
    assert got is not None, [e for _, e in link.m.events]
    assert not any(isinstance(e, Denied | TimedOut) for _, e in link.m.events)
    # and the renewals keep working at that distance
    link.run_from(got[0], T0 + 300)
    assert c.binding is not None and c.binding.expires_at > T0 + 300


# -- 3.6.2.1 Validity Checks / 5.7 low-order bits -------------------------------

def test_rfc5944_3_6_2_1_reply_to_an_earlier_request_is_discarded():
    c, ha = alice(), HomeAgent(config())
    c.register(COA, T0)
    first = c.datagrams_to_send()[0]
    c.handle_timer(c.get_timer())
    second = c.datagrams_to_send()[0]
    late = ha.handle_request(first.data, (COA, 434), T0 + 1.1).reply
    c.receive(late, T0 + 1.1)
    assert c.next_event() is None
    c.receive(ha.handle_request(second.data, (COA, 434), T0 + 1.2).reply, T0 + 1.2)
    assert isinstance(c.next_event(), Registered)


def test_rfc5944_5_7_reply_matched_on_low_order_32_bits_only():
    c, ha = bob(), HomeAgent(config(), nonce=lambda: 77)
    c.register(COA, T0)
    d = c.datagrams_to_send()[0]
    rep = RegistrationReply.decode(ha.handle_request(d.data, (COA, 434), T0).reply)
    assert rep.code == 133 and ident.high(rep.identification) == 77
    assert ident.low(rep.identification) == ident.low(
        RegistrationRequest.decode(d.data).identification)
    c.receive(ha.handle_request(d.data, (COA, 434), T0).reply, T0)  # high bits differ: taken
    assert len(c.datagrams_to_send()) == 1  # resynchronised and resent


def _signed_reply(code: int, identification: int, mhaes: int) -> bytes:
    msg = RegistrationReply(code, 100, ALICE, HA, identification).encode()
    for _ in range(mhaes):
        msg = append_authenticator(msg, ExtType.MOBILE_HOME_AUTH, 256, KEY_A,
                                   Algorithm.HMAC_MD5)
    return msg


def test_rfc5944_3_6_2_1_b_exactly_one_mobile_home_authenticator():
    c = alice()
    c.register(COA, T0)
    i = RegistrationRequest.decode(c.datagrams_to_send()[0].data).identification
    c.receive(_signed_reply(0, i, 2), T0 + 0.1)
    c.receive(_signed_reply(0, i, 0), T0 + 0.1)
    assert c.next_event() is None and c.binding is None
    c.receive(_signed_reply(0, i, 1), T0 + 0.1)
    assert isinstance(c.next_event(), Registered)


# -- 3.6.2.2 Registration Request Accepted --------------------------------------

def test_rfc5944_3_6_2_2_binding_timer_starts_when_the_request_was_sent():
    c, ha = alice(), HomeAgent(config())
    link = client_world(c, ha, one_way=0.6)
    c.register(COA, T0)
    link.run_from(T0, T0 + 5)
    _t, ev = link.m.first(Registered)
    sent_at = link.sent[-1][0]
    assert isinstance(ev, Registered) and ev.expires_at == pytest.approx(sent_at + 100)
    assert ev.expires_at <= ha.bindings[ALICE].expires_at


def test_rfc5944_3_6_2_2_granted_lifetime_never_above_requested():
    c = alice()
    c.register(COA, T0)
    i = RegistrationRequest.decode(c.datagrams_to_send()[0].data).identification
    msg = RegistrationReply(0, 5000, ALICE, HA, i).encode()
    c.receive(append_authenticator(msg, ExtType.MOBILE_HOME_AUTH, 256, KEY_A,
                                   Algorithm.HMAC_MD5), T0 + 0.1)
    ev = c.next_event()
    assert isinstance(ev, Registered) and ev.lifetime == 100
    assert ev.expires_at == pytest.approx(T0 + 100)


# -- 3.6.2.3 Registration Request Denied ----------------------------------------

@pytest.mark.parametrize("ahead", [3600.0, -3600.0, 30.0])
def test_rfc5944_3_6_2_3_registers_at_the_next_attempt_after_133(ahead):
    c, ha = alice(), HomeAgent(config())
    c.clock_offset = ahead  # the node's clock is off by this much
    link = client_world(c, ha)
    c.register(COA, T0)
    link.run_from(T0, T0 + 0.5)
    assert [code for _, code in link.replies] == [133, 1]
    assert isinstance(link.m.events[-1][1], Registered)


def test_rfc5944_3_6_2_3_identification_floor_is_the_last_accepted_one():
    # Registered once with a fast clock (within the window), then told by a 133
    # that the clock is far ahead: the next request must be accepted at once.
    c, ha = alice(), HomeAgent(config())
    c.clock_offset = 5.0
    link = client_world(c, ha)
    c.register(COA, T0)
    link.run_from(T0, T0 + 0.1)
    assert [code for _, code in link.replies] == [1]
    c.clock_offset = 3600.0
    c.register(COA, T0 + 10)
    link.run_from(T0 + 10, T0 + 10.5)
    assert [code for _, code in link.replies] == [1, 133, 1]


def test_rfc5944_3_6_2_3_nonce_resync_uses_the_home_agents_nonce():
    c, ha = bob(), HomeAgent(config(), nonce=iter(range(500, 600)).__next__)
    link = client_world(c, ha)
    c.register(COA, T0)
    link.run_from(T0, T0 + 0.1)
    assert [code for _, code in link.replies] == [133, 1]
    second = RegistrationRequest.decode(link.sent[1][1].datagram.data)
    assert ident.high(second.identification) == 500


def test_rfc5944_3_6_2_3_after_69_no_more_than_the_replys_lifetime():
    c = alice(lifetime=600)
    c.register(FA, T0, via=FA, lifetime=300)
    i = RegistrationRequest.decode(c.datagrams_to_send()[0].data).identification
    c.receive(RegistrationReply(ReplyCode.FA_LIFETIME_TOO_LONG, 45, ALICE, HA, i).encode(),
              T0 + 0.01)
    assert isinstance(c.next_event(), Denied)
    c.register(FA, T0 + 1, via=FA, lifetime=300)
    assert RegistrationRequest.decode(c.datagrams_to_send()[0].data).lifetime <= 45


def test_rfc5944_3_6_3_an_unauthenticated_69_cannot_push_renewals_under_1_s_apart():
    """A code 69 carries no authenticator (3.6.2.1 a: no MN-FA key), so anyone on the
    link can send one; its lifetime caps later requests through that FA, but never
    below what keeps renewals at least 1 s apart (3.6.3)."""
    c = alice(lifetime=600)
    c.register(FA, T0, via=FA, lifetime=300)
    i = RegistrationRequest.decode(c.datagrams_to_send()[0].data).identification
    c.receive(RegistrationReply(ReplyCode.FA_LIFETIME_TOO_LONG, 1, ALICE, HA, i).encode(),
              T0 + 0.01)
    assert isinstance(c.next_event(), Denied)
    c.register(FA, T0 + 1, via=FA, lifetime=300)
    life = RegistrationRequest.decode(c.datagrams_to_send()[0].data).lifetime
    assert life * c.config.renew_fraction >= 1


# -- 3.6.1.1 IP Fields / 3.6.1.2 Request Fields -----------------------------------

def test_rfc5944_3_6_1_1_through_an_fa_to_the_advertisements_ip_source_from_home_address():
    c = alice()
    c.register(FA, T0, via=FA_IP_SOURCE)
    d = c.datagrams_to_send()[0]
    assert d.destination == (FA_IP_SOURCE, 434)
    assert d.source == ALICE
    assert RegistrationRequest.decode(d.data).care_of_address == FA


def test_rfc5944_3_6_1_1_co_located_source_is_the_care_of_address():
    c = alice()
    c.register(COA, T0)
    assert c.datagrams_to_send()[0].source == COA


def test_rfc3024_4_1_1_ttl_255_through_a_foreign_agent():
    c = alice()
    c.register(FA, T0, via=FA)
    assert c.datagrams_to_send()[0].ttl == 255


def test_rfc5944_3_6_1_2_renewal_through_fa_asks_no_more_than_advertised():
    c, ha = alice(lifetime=600), HomeAgent(config())
    c.register(FA, T0, via=FA, lifetime=60)
    d = c.datagrams_to_send()[0]
    assert RegistrationRequest.decode(d.data).lifetime == 60
    c.receive(ha.handle_request(d.data, (FA, 434), T0).reply, T0)
    assert isinstance(c.next_event(), Registered)
    c.handle_timer(c.get_timer())  # renewal
    [renewal] = c.datagrams_to_send()
    assert RegistrationRequest.decode(renewal.data).lifetime <= 60


def test_rfc5944_3_6_2_1_udp_tunnel_reply_after_the_mhae_is_not_believed():
    c = alice()
    c.register(COA, T0)
    i = RegistrationRequest.decode(c.datagrams_to_send()[0].data).identification
    msg = append_authenticator(RegistrationReply(0, 100, ALICE, HA, i).encode(),
                               ExtType.MOBILE_HOME_AUTH, 256, KEY_A, Algorithm.HMAC_MD5)
    c.receive(msg + UdpTunnelReply().encode(), T0 + 0.1)
    ev = c.next_event()
    assert isinstance(ev, Registered) and not ev.udp_tunnel


# -- 5.7.2 Replay Protection Using Nonces, end to end from the profile -------------

def test_rfc5944_5_7_2_profile_replay_nonce_registers_with_a_nonce_home_agent():
    from app.mn import profile

    p = profile.loads('name = "bob"\nhome_address = "10.20.1.11"\n'
                      'home_network = "10.20.1.0/24"\nhome_agent = "10.20.1.1"\nspi = 257\n'
                      'algorithm = "keyed-md5"\nreplay = "nonce"\n')
    c = RegistrationClient(p.registration(KEY_B), nonce=iter(range(9, 99)).__next__)
    ha = HomeAgent(config(), nonce=iter(range(1000, 10**6)).__next__)
    link = client_world(c, ha, one_way=0.2)
    for k in range(5):  # registration and several renewals, each answered
        c.register(COA, T0 + 100 * k)
        link.run_from(T0 + 100 * k, T0 + 100 * k + 10)
    assert [type(e) for _, e in link.m.events] == [Registered] * 5
