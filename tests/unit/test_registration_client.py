"""The MN's registration client against the real HA core, with a fake clock."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from app.agents.ha_core import HomeAgent
from app.mip import ident
from app.mip.auth import Algorithm, append_authenticator
from app.mip.extensions import ExtType
from app.mip.messages import RegistrationReply, RegistrationRequest
from app.mn.registration import (
    BindingLost,
    ClientState,
    Denied,
    Deregistered,
    Registered,
    RegistrationClient,
    RegistrationConfig,
    ReplayMode,
    TimedOut,
)
from app.mn.replay_protection import MAX_RESYNCS
from tests.mipclient import KEY_A, KEY_B
from tests.support.identities import ALICE, BOB, HA, T0, config
from tests.support.world import COA, client, pump

A = IPv4Address


def test_register_reports_binding_and_rtt():
    c, ha = client(), HomeAgent(config())
    c.register(COA, T0)
    assert c.state is ClientState.REGISTERING
    sent = c.datagrams_to_send()
    assert len(sent) == 1 and sent[0].destination == (HA, 434)
    out = ha.handle_request(sent[0].data, (COA, 434), T0 + 0.004)
    c.receive(out.reply, T0 + 0.004)
    ev = c.next_event()
    assert isinstance(ev, Registered) and ev.care_of_address == COA and ev.lifetime == 100
    assert ev.rtt == pytest.approx(0.004, abs=1e-6) and not ev.renewal
    assert c.state is ClientState.REGISTERED and c.get_timer() == pytest.approx(T0 + 0.004 + 75)


def test_retransmit_backoff_then_timeout():
    c = client(initial_timeout=1.0, retries=3)
    c.register(COA, T0)
    times = [T0]
    assert len(c.datagrams_to_send()) == 1
    now = T0
    while True:
        now = c.get_timer()
        c.handle_timer(now)
        sent = c.datagrams_to_send()
        ev = c.next_event()
        if ev is not None:
            break
        assert len(sent) == 1
        times.append(now)
    assert [round(t - T0, 3) for t in times] == [0, 1, 3, 7]
    assert isinstance(ev, TimedOut) and ev.attempts == 4 and ev.waited == pytest.approx(15)
    assert c.state is ClientState.IDLE


def test_each_copy_has_a_new_identification_and_only_the_latest_is_answered():
    c, ha = client(), HomeAgent(config())
    c.register(COA, T0)
    first = c.datagrams_to_send()[0]
    c.handle_timer(T0 + 1)
    second = c.datagrams_to_send()[0]
    assert first.data[16:24] != second.data[16:24]
    out = ha.handle_request(first.data, (COA, 434), T0 + 1.1)  # the first copy's answer
    c.receive(out.reply, T0 + 1.1)
    assert c.next_event() is None  # RFC 5944 3.6.2.1: not the most recent request
    out = ha.handle_request(second.data, (COA, 434), T0 + 1.2)
    c.receive(out.reply, T0 + 1.2)
    assert isinstance(c.next_event(), Registered)


def test_renewal_and_binding_lost():
    c, ha = client(), HomeAgent(config())
    c.register(COA, T0)
    pump(c, ha, T0)
    c.handle_timer(T0 + 75)
    assert c.state is ClientState.RENEWING
    [ev] = pump(c, ha, T0 + 75)
    assert isinstance(ev, Registered) and ev.renewal and ev.expires_at == T0 + 175
    # Now the HA goes silent: renewals time out, then the binding is lost at expiry.
    now = T0 + 150
    c.handle_timer(now)
    events = []
    while (t := c.get_timer()) is not None:
        c.datagrams_to_send()
        c.handle_timer(t)
        while (e := c.next_event()) is not None:
            events.append(e)
    assert any(isinstance(e, TimedOut) for e in events)
    assert isinstance(events[-1], BindingLost) and c.binding is None


def test_resync_after_133_is_one_event():
    c, ha = client(), HomeAgent(config())
    c.clock_offset = -300.0
    c.register(COA, T0)
    events = pump(c, ha, T0)
    assert events == []  # the 133 was absorbed and a resynced copy is out
    events = pump(c, ha, T0)
    assert len(events) == 1 and isinstance(events[0], Registered)
    assert abs(c.clock_offset) < 1.0


def test_nonce_mode():
    cfg = RegistrationConfig(BOB, HA, 257, Algorithm.KEYED_MD5, KEY_B, lifetime=100,
                             replay=ReplayMode.NONCE)
    c, ha = RegistrationClient(cfg), HomeAgent(config())
    c.register(COA, T0)
    pump(c, ha, T0)
    [ev] = pump(c, ha, T0)
    assert isinstance(ev, Registered)


def test_denial_reported_with_code_and_meaning():
    c, ha = client(), HomeAgent(config(reverse_tunnelling=False))
    c.register(COA, T0)
    [ev] = pump(c, ha, T0)
    assert ev == Denied(137, "denied by home agent: requested reverse tunnel unavailable (137)")
    assert c.state is ClientState.IDLE


def test_forged_and_unmatched_replies_are_ignored():
    c, ha = client(), HomeAgent(config())
    c.register(COA, T0)
    d = c.datagrams_to_send()[0]
    out = ha.handle_request(d.data, (COA, 434), T0)
    forged = bytearray(out.reply)
    forged[-1] ^= 1
    c.receive(bytes(forged), T0)
    c.receive(b"\x03garbage", T0)
    assert c.next_event() is None
    c.receive(out.reply, T0)
    assert isinstance(c.next_event(), Registered)


def test_deregistration_at_home():
    c, ha = client(), HomeAgent(config())
    c.register(COA, T0)
    pump(c, ha, T0)
    c.deregister(T0 + 1)
    req = c.datagrams_to_send()[0]
    assert req.data[2:4] == b"\x00\x00"  # lifetime 0
    out = ha.handle_request(req.data, (ALICE, 434), T0 + 1)
    c.receive(out.reply, T0 + 1)
    assert isinstance(c.next_event(), Deregistered)
    assert c.binding is None and c.state is ClientState.IDLE and ALICE not in ha.bindings


def test_through_a_foreign_agent_no_d_bit():
    c = client()
    c.register(A("10.40.1.1"), T0, via=A("10.40.1.1"))
    d = c.datagrams_to_send()[0]
    assert d.destination == (A("10.40.1.1"), 434)
    assert d.data[1] & 0x20 == 0 and d.data[1] & 0x02  # no D, T set


def test_profile_keys_replay_udp_tunnelling_and_probe_defaults():
    from app.config import ConfigError
    from app.mn import profile
    from app.mn.registration import UdpTunnelling

    base = ('name = "p"\nhome_address = "10.20.1.10"\nhome_network = "10.20.1.0/24"\n'
            'home_agent = "10.20.1.1"\nspi = 256\n')
    p = profile.loads(base)
    assert (p.replay, p.udp_tunnelling) == (ReplayMode.TIMESTAMP, UdpTunnelling.AUTO)
    assert (p.initial_timeout, p.retries, p.decision_seconds) == (1.0, 2, 7.0)
    cfg = profile.loads(base + 'replay = "nonce"\nudp_tunnelling = "force"\n').registration(
        KEY_A)
    assert cfg.replay is ReplayMode.NONCE and cfg.udp_tunnelling is UdpTunnelling.FORCE
    again = profile.loads(profile.dumps(profile.loads(base + 'udp_tunnelling = "off"\n')))
    assert again.udp_tunnelling is UdpTunnelling.OFF
    with pytest.raises(ConfigError, match=r"probe.initial_timeout.*at least 1 s.*3\.6\.3"):
        profile.loads(base + "[probe]\ninitial_timeout = 0.3\n")
    with pytest.raises(ConfigError, match=r"udp_tunnelling.*'auto'"):
        profile.loads(base + 'udp_tunnelling = "yes"\n')


def test_reregister_renews_now_and_timeout_through_fa_names_it():
    # RFC 3519 4.10: the driver calls reregister() when keepalives go unanswered.
    c, ha = client(), HomeAgent(config())
    assert not c.reregister(T0)
    c.register(COA, T0)
    pump(c, ha, T0)
    assert c.reregister(T0 + 5) and c.state is ClientState.RENEWING
    [ev] = pump(c, ha, T0 + 5)
    assert isinstance(ev, Registered) and ev.renewal and ev.expires_at == T0 + 105
    fa = A("10.40.1.1")
    c.register(fa, T0 + 6, via=fa, lifetime=60)
    c.datagrams_to_send()
    while not (evs := pump(c, None, c.get_timer())):
        c.handle_timer(c.get_timer())
    assert isinstance(evs[-1], TimedOut) and evs[-1].via == fa
    assert c.state is ClientState.REGISTERED  # the direct binding still stands: fall back to it


def test_deregistration_away_goes_where_the_binding_was_made():
    c, ha = client(), HomeAgent(config())
    fa = A("10.40.1.1")
    c.register(fa, T0, via=fa, lifetime=60)
    d = c.datagrams_to_send()[0]
    c.receive(ha.handle_request(d.data, (fa, 434), T0).reply, T0)
    assert isinstance(c.next_event(), Registered)
    c.deregister(T0 + 1, at_home=False)
    [dd] = c.datagrams_to_send()
    assert dd.destination == (fa, 434) and dd.source == ALICE  # through the FA
    c2 = client()
    c2.register(COA, T0)
    pump(c2, HomeAgent(config()), T0)
    c2.deregister(T0 + 1, at_home=False)
    [d2] = c2.datagrams_to_send()
    assert d2.destination == (HA, 434) and d2.source == COA


def test_a_renewal_due_while_another_request_is_out_is_not_offered_as_a_timer():
    """A timer that handle_timer cannot act on would make its caller spin: a renewal
    due while a request (a move's new registration) is out waits for it."""
    c, ha = client(), HomeAgent(config())
    c.register(COA, T0)
    assert isinstance(pump(c, ha, T0)[0], Registered)
    c.register(A("10.30.2.7"), T0 + 90)  # a move, past the renewal time (75 s)
    c.datagrams_to_send()  # lost
    t = c.get_timer()
    assert t is not None and t > T0 + 90, t
    c.handle_timer(t)
    t2 = c.get_timer()
    assert t2 is not None and t2 > t


# -- RFC 5944 5.7: the identification ------------------------------------------------

def _sent_ident(c: RegistrationClient) -> int:
    return RegistrationRequest.decode(c.datagrams_to_send()[-1].data).identification


def test_rfc5944_5_7_1_each_identification_exceeds_the_last_even_if_the_clock_steps_back():
    # The home agent takes it as a sequence number: a wall clock stepped back an
    # hour (NTP after a resume), or two requests in one tick with the same random
    # bits, must still give a greater identification.
    step = [0.0]
    cfg = client().config
    c = RegistrationClient(cfg, nonce=lambda: 0, wall=lambda now: now + step[0])
    c.register(COA, T0)
    first = _sent_ident(c)
    c.register(COA, T0)  # same tick, same random bits
    second = _sent_ident(c)
    step[0] = -3600.0
    c.register(COA, T0 + 1)
    third = _sent_ident(c)
    assert first < second < third


def test_rfc5944_5_7_1_after_133_the_identification_stays_above_the_last_accepted():
    # Accepted 5 s ahead (inside the 7 s window), then an hour ahead: the 133
    # brings the clock back to the home agent's, below what it accepted; the next
    # request must still be greater than that one, or it earns 133 after 133.
    c, ha = client(), HomeAgent(config())
    c.clock_offset = 5.0
    c.register(COA, T0)
    assert isinstance(pump(c, ha, T0)[0], Registered)
    c.clock_offset = 3600.0
    c.register(COA, T0 + 1)
    assert pump(c, ha, T0 + 1) == []  # 133, resynchronised
    [ev] = pump(c, ha, T0 + 1)
    assert isinstance(ev, Registered)


def test_rfc5944_5_7_2_the_low_order_nonce_differs_from_the_previous_one():
    cfg = RegistrationConfig(BOB, HA, 257, Algorithm.KEYED_MD5, KEY_B, lifetime=100,
                             replay=ReplayMode.NONCE)
    c = RegistrationClient(cfg, nonce=lambda: 42)  # a random source that repeats itself
    c.register(COA, T0)
    first = _sent_ident(c)
    c.register(COA, T0 + 1)
    assert ident.low(_sent_ident(c)) != ident.low(first)


def test_133_resynchronisations_per_request_are_bounded():
    # A home agent (or a replayed reply) answering every resynchronised request with
    # an authenticated 133 must not keep the client sending at once for ever.
    c = client()
    c.register(COA, T0)
    sent = 0
    while out := c.datagrams_to_send():
        assert sent < 10, "the 133 loop did not end"
        sent += len(out)
        low = ident.low(RegistrationRequest.decode(out[-1].data).identification)
        rep = RegistrationReply(133, 0, ALICE, HA, ident.join(ident.high(
            ident.ntp_from_unix(T0 + 3600)), low)).encode()
        c.receive(append_authenticator(rep, ExtType.MOBILE_HOME_AUTH, 256, KEY_A,
                                       Algorithm.HMAC_MD5), T0)
    assert sent == 1 + MAX_RESYNCS
    ev = c.next_event()
    assert isinstance(ev, Denied) and ev.code == 133
