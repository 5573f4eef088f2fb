"""RFC 5266's access modes on the trusted side, against the real HA and FA cores
(``tests/support/world.py``, every reply back at once)."""

from __future__ import annotations

from ipaddress import IPv4Address

from app.agents.fa_config import ForeignAgentConfig
from app.agents.fa_core import ForeignAgent
from app.agents.ha_core import HomeAgent
from app.api import Mode, State
from app.mn.access_mode import (
    AgentAdvert,
    ConfigureDataPlane,
    Gate,
    LinkDown,
    Note,
    PrepareLink,
    Resumed,
    Send,
    Solicit,
)
from app.mn.registration import UdpTunnelling
from app.net.gate_rules import ProvenPath
from tests.support.identities import ALICE, HA, T0, config
from tests.support.world import (
    FA,
    FA_AGENT,
    NETS,
    machine,
    registration,
    statuses,
    trusted_world,
)

T1, FA1, HOME = NETS["t1"].up, NETS["fa1"].up, NETS["home-at-home"].up


def opened(actions):
    """The Gate actions that open a proven path."""
    return [a for a in actions if isinstance(a, Gate) and a.path is not None]


def shut(actions):
    return Gate(None) in actions


def test_trusted_dhcp_link_is_mode_c_gate_opens_only_after_the_reply():
    net = trusted_world()
    m = net.m
    acts = m.handle(T1, T0)
    assert m.open_path is None  # shut from the start (the driver installs it shut)
    assert isinstance(acts[0], PrepareLink)
    assert any(isinstance(a, Solicit) for a in acts)
    sends = [a for a in acts if isinstance(a, Send)]
    assert len(sends) == 1 and sends[0].datagram.destination == (HA, 434)
    assert not opened(acts)
    acts = net.roundtrip(acts, T0 + 0.003)
    assert (State.TRUSTED, Mode.COLOCATED) in statuses(acts)
    assert ConfigureDataPlane(Mode.COLOCATED, "eth0") in acts
    gate = opened(acts)[0]
    assert gate.path == ProvenPath("eth0", T1.address.ip, Mode.COLOCATED)
    assert acts.index(gate) > max(i for i, a in enumerate(acts)
                                  if isinstance(a, ConfigureDataPlane))
    assert m.last_handover_ms is not None and 2.9 < m.last_handover_ms < 3.1


def test_fa_link_becomes_mode_f_only_after_trust():
    net = trusted_world()
    m = net.m
    acts = net.roundtrip(m.handle(FA1, T0), T0)
    # The advertisement answers the solicitation; the probe already proved trust (c).
    acts += net.roundtrip(m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.01), T0 + 0.01)
    assert statuses(acts)[-1] == (State.TRUSTED, Mode.FOREIGN_AGENT)
    assert ConfigureDataPlane(Mode.FOREIGN_AGENT, "eth0", foreign_agent=FA) in acts
    assert net.ha.bindings[ALICE].care_of_address == FA


def test_advert_while_probing_waits_for_trust():
    net = trusted_world()
    m = net.m
    acts = m.handle(FA1, T0)
    acts += m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.001)
    # Nothing is sent to the FA before the home agent has answered the direct probe.
    assert not [a for a in acts if isinstance(a, Send) and a.datagram.destination[0] == FA]
    acts = net.roundtrip(acts, T0 + 0.002)
    assert statuses(acts)[-1] == (State.TRUSTED, Mode.FOREIGN_AGENT)


def test_no_reply_means_untrusted_and_the_gate_stays_shut():
    net = trusted_world(ha_down=True)
    m = net.m
    acts = net.roundtrip(m.handle(T1, T0), T0)
    now = T0
    while (t := m.get_timer()) is not None and now < T0 + 10:
        now = t
        acts += net.roundtrip(m.handle_timer(now), now)
    assert statuses(acts)[-1] == (State.UNTRUSTED, Mode.NONE)
    assert not opened(acts)
    sends = [a for a in acts if isinstance(a, Send)]
    assert len(sends) == 3  # the first request and 2 retransmissions, all straight to the HA


def test_home_link_is_mode_h():
    net = trusted_world()
    m = net.m
    net.roundtrip(m.handle(T1, T0), T0)
    acts = net.roundtrip(m.handle(HOME, T0 + 5), T0 + 5)
    assert statuses(acts)[-1] == (State.TRUSTED, Mode.HOME)
    assert ConfigureDataPlane(Mode.HOME, "eth0") in acts
    assert ALICE not in net.ha.bindings


def test_denial_is_an_error_that_keeps_the_gate_shut():
    net = trusted_world(ha=HomeAgent(config(reverse_tunnelling=False)))
    m = net.m
    acts = net.roundtrip(m.handle(T1, T0), T0)
    assert m.phase is State.ERROR
    assert m.error == "denied by home agent: requested reverse tunnel unavailable (137)"
    assert not opened(acts)


def test_link_down_and_resume():
    net = trusted_world()
    m = net.m
    net.roundtrip(m.handle(T1, T0), T0)
    acts = m.handle(LinkDown("eth0"), T0 + 1)
    assert shut(acts) and m.phase is State.OFFLINE
    assert acts.index(Gate(None)) < acts.index(ConfigureDataPlane(Mode.NONE, None))
    net.roundtrip(m.handle(T1, T0 + 2), T0 + 2)
    assert m.phase is State.TRUSTED
    acts = m.handle(Resumed(), T0 + 100)
    assert acts[0] == Gate(None) and m.phase is State.PROBING
    assert [a for a in acts if isinstance(a, Send)]
    acts = net.roundtrip(acts, T0 + 100)
    assert m.phase is State.TRUSTED and opened(acts)


def test_fa_request_lifetime_is_capped_by_the_advertisement():
    net = trusted_world()
    m = net.m
    net.roundtrip(m.handle(FA1, T0), T0)
    net.roundtrip(m.handle(AgentAdvert("eth0", FA, 120), T0 + 0.01), T0 + 0.01)
    assert m.mode is Mode.FOREIGN_AGENT
    assert net.ha.bindings[ALICE].lifetime <= 120


def test_fa_denial_keeps_mode_c_and_is_not_retried_on_every_advert():
    net = trusted_world()
    m = net.m
    net.fa = ForeignAgent(ForeignAgentConfig(FA, "fa", max_lifetime=60))
    net.roundtrip(m.handle(FA1, T0), T0)
    # The advert promises more than the FA grants: it denies (69) without an MHAE.
    acts = net.roundtrip(m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.01), T0 + 0.01)
    assert m.phase is State.TRUSTED and m.mode is Mode.COLOCATED
    notes = [a for a in acts if isinstance(a, Note)]
    assert notes and notes[0].kind == "fa-denied" and "(69)" in notes[0].text
    assert net.ha.bindings[ALICE].care_of_address == FA1.address.ip  # renewed directly
    again = m.handle(AgentAdvert("eth0", FA, 600), T0 + 1)
    assert not [a for a in again if isinstance(a, Send)]


def test_rfc5944_3_6_2_1_b_a_wrong_key_is_a_timeout_with_a_hint_not_an_outcome():
    """A mis-keyed profile: the home agent's 131 does not authenticate, so it is
    discarded like a forgery; the outcome is a timeout's (untrusted), and the
    count only adds a hint to that outcome's message and the history."""
    net = trusted_world(m=machine(registration(key=b"\x42" * 16, lifetime=300,
                                               initial_timeout=0.5, retries=1)))
    m = net.m
    acts = net.roundtrip(m.handle(T1, T0), T0)
    now = T0
    while (t := m.get_timer()) is not None and now < T0 + 10:
        now = t
        acts += net.roundtrip(m.handle_timer(now), now)
    assert statuses(acts)[-1] == (State.UNTRUSTED, Mode.NONE)
    assert "2 replies without a valid Mobile-Home authenticator" in (m.error or "")
    assert any(isinstance(a, Note) and a.kind == "replies-discarded" for a in acts)
    assert m.client.discarded == 2 and not opened(acts)


def test_rfc5944_3_6_1_1_requests_through_an_fa_go_to_the_advertisements_source():
    net = trusted_world()
    m = net.m
    net.roundtrip(m.handle(FA1, T0), T0)
    agent = FA_AGENT  # an agent address that is not the advertised care-of address
    acts = m.handle(AgentAdvert("eth0", FA, 600, agent=agent), T0 + 0.01)
    sends = [a for a in acts if isinstance(a, Send)]
    assert [s.datagram.destination for s in sends] == [(agent, 434)]
    assert sends[0].datagram.source == ALICE and sends[0].datagram.ttl == 255
    # The gate lets registrations to that agent out of this proven link.
    assert opened(acts)[-1].path.foreign_agent == agent


def test_rfc5944_2_1_1_a_busy_agent_gets_no_new_registration():
    net = trusted_world()
    m = net.m
    net.roundtrip(m.handle(FA1, T0), T0)
    busy = m.handle(AgentAdvert("eth0", FA, 600, busy=True), T0 + 0.01)
    assert not [a for a in busy if isinstance(a, Send)]
    acts = net.roundtrip(m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.02), T0 + 0.02)
    assert m.mode is Mode.FOREIGN_AGENT, statuses(acts)


def test_a_renewal_through_a_dead_fa_falls_back_to_mode_c_before_the_binding_runs_out():
    net = trusted_world()
    m = net.m
    net.roundtrip(m.handle(FA1, T0), T0)
    net.roundtrip(m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.01), T0 + 0.01)
    assert m.mode is Mode.FOREIGN_AGENT
    expires = m.client.binding.expires_at
    net.fa_down = True
    now, acts = T0, []
    while m.mode is not Mode.COLOCATED and now < expires:
        now = m.get_timer()
        acts += net.roundtrip(m.handle_timer(now), now)
    assert m.phase is State.TRUSTED and m.mode is Mode.COLOCATED, statuses(acts)
    assert now < expires
    assert net.ha.bindings[ALICE].care_of_address == FA1.address.ip
    assert any(isinstance(a, Note) and a.kind == "fa-timeout" for a in acts)


def test_rfc5944_3_6_1_1_a_renewal_after_the_fa_went_quiet_never_leaves_from_the_fas_address():
    """Found by the shared world's source check: after the FA stopped answering and
    the direct registration timed out too, the binding of mode f is renewed straight
    to the home agent from the FA's address (not the node's: RFC 5944 3.6.1.1)."""
    net = trusted_world()
    m = net.m
    net.roundtrip(m.handle(FA1, T0), T0)
    net.roundtrip(m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.01), T0 + 0.01)
    assert m.mode is Mode.FOREIGN_AGENT
    net.fa_down, net.ha_down = True, True
    now = T0
    while (t := m.get_timer()) is not None and t < m.client.binding.expires_at:
        now = t
        net.roundtrip(m.handle_timer(now), now)  # _check_source asserts every source
def test_rfc3519_4_9_mode_c_over_udp_carries_its_keepalive_interval():
    """A reply that granted UDP tunnelling (the home agent saw another source: a NAT)
    configures mode c over UDP with the keepalive interval the machine decided (the
    reply's, or RFC 3519 4.9's default K)."""
    m = machine(registration(lifetime=300, udp_tunnelling=UdpTunnelling.AUTO))
    ha = HomeAgent(config())
    send = next(a for a in m.handle(T1, T0) if isinstance(a, Send))
    behind_a_nat = IPv4Address("198.51.100.7")  # the source the home agent sees
    out = ha.handle_request(send.datagram.data, (behind_a_nat, 434), T0 + 0.001)
    assert out.reply is not None
    acts = m.receive(out.reply, T0 + 0.003)
    assert ConfigureDataPlane(Mode.COLOCATED, "eth0", udp_tunnel=True, keepalive_s=110) in acts
