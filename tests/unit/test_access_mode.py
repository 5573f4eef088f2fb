"""RFC 5266's access modes on the trusted side, against the real HA and FA cores."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from app.agents.fa_config import ForeignAgentConfig
from app.agents.fa_core import ForeignAgent, ToHomeAgent, ToMobileNode
from app.agents.ha_core import HomeAgent
from app.api import Mode, State
from app.mip.auth import Algorithm
from app.mn.access_mode import (
    AccessModeMachine,
    AgentAdvert,
    ConfigureDataPlane,
    Gate,
    LinkDown,
    LinkUp,
    Note,
    PrepareLink,
    Resumed,
    Send,
    Solicit,
    Status,
)
from app.mn.registration import RegistrationClient, RegistrationConfig
from app.net.gate_rules import ProvenPath
from tests.mipclient import KEY_A
from tests.support.identities import ALICE, HA, T0, config

A = IPv4Address
FA = A("10.40.1.1")
T1 = LinkUp("eth0", IPv4Interface("10.30.1.50/24"), A("10.30.1.1"))
FA1 = LinkUp("eth0", IPv4Interface("10.40.1.150/24"), FA)
HOME = LinkUp("eth0", IPv4Interface("10.20.1.10/24"), A("10.20.1.254"))


class Net:
    """Carries Send actions to the HA (and through the FA), replies back."""

    def __init__(self, ha_reachable=True, ha=None):
        self.ha = ha or HomeAgent(config())
        self.fa = ForeignAgent(ForeignAgentConfig(FA, "fa", max_lifetime=600))
        self.ha_reachable = ha_reachable
        self.fa_down = False

    def run(self, m: AccessModeMachine, actions, now, src):
        out = list(actions)
        pending = [a for a in actions if isinstance(a, Send)]
        while pending:
            a = pending.pop(0)
            dst = a.datagram.destination[0]
            replies = []
            if dst == HA and self.ha_reachable:
                o = self.ha.handle_request(a.datagram.data, (src, 434), now)
                replies = [o.reply] if o.reply else []
            elif dst in (FA, A("10.40.1.2")) and not self.fa_down:
                res = self.fa.from_mobile_node(a.datagram.data, (src, 434), now)
                for act in res.actions:
                    if isinstance(act, ToHomeAgent):
                        o = self.ha.handle_request(act.data, (A("10.0.0.11"), 434), now)
                        res2 = self.fa.from_home_agent(o.reply, (HA, 434), now)
                        replies += [x.data for x in res2.actions if isinstance(x, ToMobileNode)]
                    elif isinstance(act, ToMobileNode):
                        replies.append(act.data)
            for r in replies:
                new = m.receive(r, now)
                out += new
                pending += [x for x in new if isinstance(x, Send)]
        return out


def machine(**kw):
    cfg = RegistrationConfig(ALICE, HA, 256, Algorithm.HMAC_MD5, KEY_A, lifetime=300,
                             initial_timeout=0.5, retries=2)
    return AccessModeMachine(IPv4Network("10.20.1.0/24"), RegistrationClient(cfg), **kw)


def opened(actions):
    """The Gate actions that open a proven path."""
    return [a for a in actions if isinstance(a, Gate) and a.path is not None]


def shut(actions):
    return Gate(None) in actions


def statuses(actions):
    return [(s.phase, s.mode) for s in actions if isinstance(s, Status)]


def test_trusted_dhcp_link_is_mode_c_gate_opens_only_after_the_reply():
    m, net = machine(), Net()
    acts = m.handle(T1, T0)
    assert m.open_path is None  # shut from the start (the driver installs it shut)
    assert isinstance(acts[0], PrepareLink)
    assert any(isinstance(a, Solicit) for a in acts)
    sends = [a for a in acts if isinstance(a, Send)]
    assert len(sends) == 1 and sends[0].datagram.destination == (HA, 434)
    assert not opened(acts)
    acts = net.run(m, acts, T0 + 0.003, T1.address.ip)
    assert (State.TRUSTED, Mode.COLOCATED) in statuses(acts)
    assert ConfigureDataPlane(Mode.COLOCATED, "eth0", T1.address.ip) in acts
    gate = opened(acts)[0]
    assert gate.path == ProvenPath("eth0", T1.address.ip, Mode.COLOCATED)
    assert acts.index(gate) > max(i for i, a in enumerate(acts)
                                  if isinstance(a, ConfigureDataPlane))
    assert m.last_handover_ms is not None and 2.9 < m.last_handover_ms < 3.1


def test_fa_link_becomes_mode_f_only_after_trust():
    m, net = machine(), Net()
    acts = net.run(m, m.handle(FA1, T0), T0, FA1.address.ip)
    # The advertisement answers the solicitation; the probe already proved trust (c).
    acts += net.run(m, m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.01), T0 + 0.01,
                    FA1.address.ip)
    assert statuses(acts)[-1] == (State.TRUSTED, Mode.FOREIGN_AGENT)
    assert ConfigureDataPlane(Mode.FOREIGN_AGENT, "eth0", FA) in acts
    assert net.ha.bindings[ALICE].care_of_address == FA


def test_advert_while_probing_waits_for_trust():
    m, net = machine(), Net()
    acts = m.handle(FA1, T0)
    acts += m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.001)
    # Nothing is sent to the FA before the home agent has answered the direct probe.
    assert not [a for a in acts if isinstance(a, Send) and a.datagram.destination[0] == FA]
    acts = net.run(m, acts, T0 + 0.002, FA1.address.ip)
    assert statuses(acts)[-1] == (State.TRUSTED, Mode.FOREIGN_AGENT)


def test_no_reply_means_untrusted_and_the_gate_stays_shut():
    m, net = machine(), Net(ha_reachable=False)
    acts = net.run(m, m.handle(T1, T0), T0, T1.address.ip)
    now = T0
    while (t := m.get_timer()) is not None and now < T0 + 10:
        now = t
        acts += net.run(m, m.handle_timer(now), now, T1.address.ip)
    assert statuses(acts)[-1] == (State.UNTRUSTED, Mode.NONE)
    assert not opened(acts)
    sends = [a for a in acts if isinstance(a, Send)]
    assert len(sends) == 3  # the first request and 2 retransmissions, all straight to the HA


def test_home_link_is_mode_h():
    m, net = machine(), Net()
    net.run(m, m.handle(T1, T0), T0, T1.address.ip)
    acts = net.run(m, m.handle(HOME, T0 + 5), T0 + 5, HOME.address.ip)
    assert statuses(acts)[-1] == (State.TRUSTED, Mode.HOME)
    assert ConfigureDataPlane(Mode.HOME, "eth0", None) in acts
    assert ALICE not in net.ha.bindings


def test_denial_is_an_error_that_keeps_the_gate_shut():
    m, net = machine(), Net(ha=HomeAgent(config(reverse_tunnelling=False)))
    acts = net.run(m, m.handle(T1, T0), T0, T1.address.ip)
    assert m.phase is State.ERROR
    assert m.error == "denied by home agent: requested reverse tunnel unavailable (137)"
    assert not opened(acts)


def test_link_down_and_resume():
    m, net = machine(), Net()
    net.run(m, m.handle(T1, T0), T0, T1.address.ip)
    acts = m.handle(LinkDown("eth0"), T0 + 1)
    assert shut(acts) and m.phase is State.OFFLINE
    assert acts.index(Gate(None)) < acts.index(ConfigureDataPlane(Mode.NONE, None, None))
    net.run(m, m.handle(T1, T0 + 2), T0 + 2, T1.address.ip)
    assert m.phase is State.TRUSTED
    acts = m.handle(Resumed(), T0 + 100)
    assert acts[0] == Gate(None) and m.phase is State.PROBING
    assert [a for a in acts if isinstance(a, Send)]
    acts = net.run(m, acts, T0 + 100, T1.address.ip)
    assert m.phase is State.TRUSTED and opened(acts)


def test_fa_request_lifetime_is_capped_by_the_advertisement():
    m, net = machine(), Net()
    net.run(m, m.handle(FA1, T0), T0, FA1.address.ip)
    net.run(m, m.handle(AgentAdvert("eth0", FA, 120), T0 + 0.01), T0 + 0.01, FA1.address.ip)
    assert m.mode is Mode.FOREIGN_AGENT
    assert net.ha.bindings[ALICE].lifetime <= 120


def test_fa_denial_keeps_mode_c_and_is_not_retried_on_every_advert():
    m, net = machine(), Net()
    net.fa = ForeignAgent(ForeignAgentConfig(FA, "fa", max_lifetime=60))
    net.run(m, m.handle(FA1, T0), T0, FA1.address.ip)
    # The advert promises more than the FA grants: it denies (69) without an MHAE.
    acts = net.run(m, m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.01), T0 + 0.01,
                   FA1.address.ip)
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
    cfg = RegistrationConfig(ALICE, HA, 256, Algorithm.HMAC_MD5, b"\x42" * 16,
                             lifetime=300, initial_timeout=0.5, retries=1)
    m = AccessModeMachine(IPv4Network("10.20.1.0/24"), RegistrationClient(cfg))
    net = Net()
    acts = net.run(m, m.handle(T1, T0), T0, T1.address.ip)
    now = T0
    while (t := m.get_timer()) is not None and now < T0 + 10:
        now = t
        acts += net.run(m, m.handle_timer(now), now, T1.address.ip)
    assert statuses(acts)[-1] == (State.UNTRUSTED, Mode.NONE)
    assert "2 replies without a valid Mobile-Home authenticator" in (m.error or "")
    assert any(isinstance(a, Note) and a.kind == "replies-discarded" for a in acts)
    assert m.client.discarded == 2 and not opened(acts)


def test_rfc5944_3_6_1_1_requests_through_an_fa_go_to_the_advertisements_source():
    m, net = machine(), Net()
    net.run(m, m.handle(FA1, T0), T0, FA1.address.ip)
    agent = A("10.40.1.2")  # an agent address that is not the advertised care-of address
    acts = m.handle(AgentAdvert("eth0", FA, 600, agent=agent), T0 + 0.01)
    sends = [a for a in acts if isinstance(a, Send)]
    assert [s.datagram.destination for s in sends] == [(agent, 434)]
    assert sends[0].datagram.source == ALICE and sends[0].datagram.ttl == 255
    # The gate lets registrations to that agent out of this proven link.
    assert opened(acts)[-1].path.foreign_agent == agent


def test_rfc5944_2_1_1_a_busy_agent_gets_no_new_registration():
    m, net = machine(), Net()
    net.run(m, m.handle(FA1, T0), T0, FA1.address.ip)
    busy = m.handle(AgentAdvert("eth0", FA, 600, busy=True), T0 + 0.01)
    assert not [a for a in busy if isinstance(a, Send)]
    acts = net.run(m, m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.02), T0 + 0.02,
                   FA1.address.ip)
    assert m.mode is Mode.FOREIGN_AGENT, statuses(acts)


def test_a_renewal_through_a_dead_fa_falls_back_to_mode_c_before_the_binding_runs_out():
    m, net = machine(), Net()
    net.run(m, m.handle(FA1, T0), T0, FA1.address.ip)
    net.run(m, m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.01), T0 + 0.01, FA1.address.ip)
    assert m.mode is Mode.FOREIGN_AGENT
    expires = m.client.binding.expires_at
    net.fa_down = True
    now, acts = T0, []
    while m.mode is not Mode.COLOCATED and now < expires:
        now = m.get_timer()
        acts += net.run(m, m.handle_timer(now), now, FA1.address.ip)
    assert m.phase is State.TRUSTED and m.mode is Mode.COLOCATED, statuses(acts)
    assert now < expires
    assert net.ha.bindings[ALICE].care_of_address == FA1.address.ip
    assert any(isinstance(a, Note) and a.kind == "fa-timeout" for a in acts)
