"""The gate holds on every path of the access-mode machine (RFC 5266 section 3.4).

A hypothesis rule-based machine drives the real access-mode machine, with the
real home agent and foreign agent cores behind a network whose replies can be
late, lost or arrive after a move, a home agent that restarts denying or with
another key, through random link changes, losses, adverts, resumes, timeouts,
renewals, bindings running out and shutdowns.  It checks what RFC 5266 3.4 asks of the
gate: normal traffic is blocked unless the machine holds a registered path on
the link it is on, answered by the home agent since that link came up and not
lost since; and, as each action is applied in order, a path is configured
before the gate opens on it and the gate is shut before any path is withdrawn.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

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
    LinkLost,
    LinkUp,
    Resumed,
    Send,
    Shutdown,
)
from app.mn.registration import RegistrationClient, RegistrationConfig
from tests.mipclient import KEY_A
from tests.unit.test_ha_core import ALICE, HA, T0, config

A = IPv4Address
FA = A("10.40.1.1")
HOME_NET = IPv4Network("10.20.1.0/24")
LINKS = {
    "t1": LinkUp("eth0", IPv4Interface("10.30.1.50/24"), A("10.30.1.1")),
    "t1b": LinkUp("eth0", IPv4Interface("10.30.1.51/24"), A("10.30.1.1")),  # new lease
    "t2": LinkUp("eth0", IPv4Interface("10.30.2.50/24"), A("10.30.2.1")),
    "fa1": LinkUp("eth0", IPv4Interface("10.40.1.150/24"), FA),
    "home": LinkUp("eth0", IPv4Interface("10.20.1.77/24"), A("10.20.1.254")),
    "pub": LinkUp("eth0", IPv4Interface("203.0.113.50/24"), A("203.0.113.1")),
    "wlan": LinkUp("wlan0", IPv4Interface("10.30.2.60/24"), A("10.30.2.1")),
}
UNTRUSTED = {"pub"}


class GateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        cfg = RegistrationConfig(ALICE, HA, 256, Algorithm.HMAC_MD5, KEY_A, lifetime=20,
                                 initial_timeout=0.5, retries=2)
        self.m = AccessModeMachine(HOME_NET, RegistrationClient(cfg))
        self.ha = HomeAgent(config())
        self.fa = ForeignAgent(ForeignAgentConfig(FA, "fa", max_lifetime=600))
        self.now = T0
        self.at: str | None = None
        self.ha_down = False
        self.outbox: list[Send] = []
        self.inflight: list[bytes] = []
        self.gate = None  # the gate as the actions left it
        self.configured = Mode.NONE
        self.lost = False
        self.up_at = float("-inf")
        """When the current link came up (or was re-probed)."""

    # -- applying actions, checking their order -----------------------------------

    def apply(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, Gate):
                if a.path is not None:
                    assert self.configured is a.path.mode, (
                        f"gate opened for {a.path.mode} with {self.configured} configured")
                self.gate = a.path
            elif isinstance(a, ConfigureDataPlane):
                # One trusted mode may follow another on the same proven link (c -> f)
                # with the gate still open on the old one: it lets nothing new out.
                if a.mode is Mode.NONE:
                    assert self.gate is None, "a path withdrawn with the gate open"
                self.configured = a.mode
            elif isinstance(a, Send):
                self.outbox.append(a)

    # -- rules ----------------------------------------------------------------------

    @rule(net=st.sampled_from(sorted(LINKS)))
    def link_up(self, net: str) -> None:
        self.at = net
        self.now += 0.01
        self.lost = False
        self.up_at = self.now
        self.outbox.clear()  # what was not sent yet leaves on the new link, if at all
        self.apply(self.m.handle(LINKS[net], self.now))

    @rule()
    def link_lost(self) -> None:
        if self.at is not None:
            self.now += 0.01
            self.lost = True
            self.apply(self.m.handle(LinkLost(LINKS[self.at].iface), self.now))

    @rule()
    def link_down(self) -> None:
        if self.at is not None:
            self.now += 1.0
            self.apply(self.m.handle(LinkDown(LINKS[self.at].iface), self.now))
            self.at = None

    @rule(lifetime=st.sampled_from([600, 30, 1]))
    def advert(self, lifetime: int) -> None:
        if self.at == "fa1":
            self.now += 0.01
            self.apply(self.m.handle(AgentAdvert("eth0", FA, lifetime), self.now))

    @rule()
    def resume(self) -> None:
        self.now += 0.01
        if self.at is not None:
            self.lost = False  # the machine probes the link again, as after a flap
            self.up_at = self.now
        self.apply(self.m.handle(Resumed(), self.now))

    @rule(kind=st.sampled_from(["answers", "denies", "wrong key"]))
    def home_agent_changes(self, kind: str) -> None:
        """The home agent restarts: as configured, denying (137), or with another key."""
        if kind == "answers":
            self.ha = HomeAgent(config())
        elif kind == "denies":
            self.ha = HomeAgent(config(reverse_tunnelling=False))
        else:
            node = replace(config().mobile_nodes[0], key=b"\x42" * 16)
            self.ha = HomeAgent(config(mobile_nodes=(node,)))

    @rule()
    def renewal(self) -> None:
        """A renewal now (as at 0.75 of the lifetime, or after a NAT rebinding)."""
        self.now += 0.01
        self.apply(self.m.reregister(self.now))

    @rule()
    def binding_runs_out(self) -> None:
        """The home agent goes quiet and every timer up to the binding's end fires."""
        b = self.m.client.binding
        if b is None:
            return
        self.ha_down = True
        while (t := self.m.get_timer()) is not None and t <= b.expires_at:
            self.now = max(self.now, t)
            self.apply(self.m.handle_timer(self.now))

    @rule()
    def shutdown(self) -> None:
        self.now += 0.01
        self.apply(self.m.handle(Shutdown(), self.now))

    @rule(down=st.booleans())
    def home_agent_reachability(self, down: bool) -> None:
        self.ha_down = down

    @rule(lose=st.booleans())
    def network_carries(self, lose: bool) -> None:
        """The outbox goes out on the current link; replies come back later."""
        sends, self.outbox = self.outbox, []
        if lose or self.at is None:
            return
        src = LINKS[self.at].address.ip
        for a in sends:
            dst = a.datagram.destination[0]
            if dst == HA and self.at not in UNTRUSTED and not self.ha_down:
                out = self.ha.handle_request(a.datagram.data, (src, 434), self.now)
                if out.reply:
                    self.inflight.append(out.reply)
            elif dst == FA and self.at == "fa1":
                res = self.fa.from_mobile_node(a.datagram.data, (src, 434), self.now)
                for act in res.actions:
                    if isinstance(act, ToHomeAgent) and not self.ha_down:
                        o = self.ha.handle_request(act.data, (A("10.0.0.11"), 434), self.now)
                        if o.reply:
                            back = self.fa.from_home_agent(o.reply, (HA, 434), self.now)
                            self.inflight += [x.data for x in back.actions
                                              if isinstance(x, ToMobileNode)]
                    elif isinstance(act, ToMobileNode):
                        self.inflight.append(act.data)

    @rule()
    def round_trip(self) -> None:
        """The common case: everything out now, every reply back in order."""
        self.network_carries(lose=False)
        while self.inflight:
            self.now += 0.001
            self.apply(self.m.receive(self.inflight.pop(0), self.now))

    @rule()
    def settle_on_the_fa_link(self) -> None:
        """Link up where an FA advertises, answered at once: mode f (a common path)."""
        self.link_up("fa1")
        self.round_trip()
        self.advert(600)
        self.round_trip()

    @rule(data=st.data())
    def reply_arrives(self, data: st.DataObject) -> None:
        if self.inflight:
            i = data.draw(st.integers(0, len(self.inflight) - 1))
            self.now += 0.001
            self.apply(self.m.receive(self.inflight.pop(i), self.now))

    @rule()
    def timer_fires(self) -> None:
        """Retransmissions, timeouts, renewals and expiry: the next timer, whatever it is."""
        t = self.m.get_timer()
        if t is not None:
            self.now = max(self.now, t)
            self.apply(self.m.handle_timer(self.now))

    # -- what must hold ------------------------------------------------------------------

    @invariant()
    def blocked_unless_a_registered_path(self) -> None:
        g = self.gate
        assert g == self.m.gate
        if g is None:
            return
        assert self.m.phase is State.TRUSTED, self.m.phase
        assert self.m.mode is g.mode, (self.m.mode, g)
        assert self.at is not None, "gate open with no link"
        assert not self.lost, "gate open on a link that is lost"
        answer = self.m.client.last_answer
        assert answer is not None and answer[1] >= self.up_at, (
            "gate open with no answer from the home agent since the link came up")
        link = LINKS[self.at]
        assert (g.iface, g.link_address) == (link.iface, link.address.ip), (g, link)
        assert self.configured is g.mode
        b = self.m.client.binding
        if g.mode is Mode.HOME:
            assert link.address.ip in HOME_NET
        else:
            assert b is not None and self.now < b.expires_at, "open without a live binding"
            want = FA if g.mode is Mode.FOREIGN_AGENT else link.address.ip
            assert b.care_of_address == want, (b, g)

    @invariant()
    def not_trusted_means_shut(self) -> None:
        if self.m.phase is not State.TRUSTED:
            assert self.gate is None, self.m.phase


GateMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_rfc5266_3_4_gate_blocks_unless_a_registered_path = GateMachine.TestCase
