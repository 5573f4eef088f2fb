"""The gate holds on every path of the access-mode machine (RFC 5266 section 3.4).

A hypothesis rule-based machine drives the real access-mode machine, with the
real home agent and foreign agent cores behind a network whose replies can be
late, lost or arrive after a move, a home agent that restarts denying or with
another key, through random link changes (an untrusted network in the home
prefix among them), losses, adverts, resumes, timeouts, renewals, bindings
running out and shutdowns, and the VPN side: charon bringing the VPN up (with
one TIA or another, through one gateway or another), MOBIKE moves, the VPN or
charon lost and back, and the user's policy changing.  It checks what RFC 5266
3.4 asks of the gate: normal traffic is blocked unless the machine holds a
registered path: on a trusted link, answered by the home agent since that link
came up and not lost since; or mode mc, only through the VPN that is up, with
the home agent's binding to its TIA live (never under never-vpn).  As each action
is applied in order, a path is configured before the gate opens on it and the
gate is shut before any path is withdrawn; and the home address is never
exposed (ARP permission, gratuitous ARP, a request from it) on an untrusted
link, even one that reuses the home prefix (RFC 5944 4.6).
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
from app.api import Mode, Policy, State
from app.mip.auth import Algorithm
from app.mn.access_mode import (
    AccessModeMachine,
    AgentAdvert,
    ClaimHome,
    ConfigureDataPlane,
    Gate,
    LinkDown,
    LinkLost,
    LinkUp,
    PolicySet,
    PrepareLink,
    Resumed,
    Send,
    Shutdown,
    StartVpn,
    StopVpn,
    VpnLost,
    VpnMoved,
    VpnReady,
    VpnServiceBack,
    VpnServiceLost,
)
from app.mn.registration import RegistrationClient, RegistrationConfig
from tests.mipclient import KEY_A
from tests.support.identities import ALICE, HA, T0, config

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
    "nat": LinkUp("eth0", IPv4Interface("192.168.50.120/24"), A("192.168.50.1")),
    # an untrusted network that reuses the home prefix (RFC 5944 4.6: away from home)
    "evil": LinkUp("eth0", IPv4Interface("10.20.1.150/24"), A("10.20.1.254")),
    "wlan": LinkUp("wlan0", IPv4Interface("10.30.2.60/24"), A("10.30.2.1")),
}
UNTRUSTED = {"pub", "nat", "evil"}
TIAS = (A("10.99.1.7"), A("10.99.2.9"))


class GateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        cfg = RegistrationConfig(ALICE, HA, 256, Algorithm.HMAC_MD5, KEY_A, lifetime=20,
                                 initial_timeout=0.5, retries=2)
        direct = RegistrationClient(cfg)
        self.m = AccessModeMachine(HOME_NET, direct,
                                   vpn_client=RegistrationClient(cfg, replay=direct.replay))
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
        self.vpn_wanted = False
        """A StartVpn since the last StopVpn: charon is bringing it up or keeps it."""
        self.tia: IPv4Address | None = None
        """The VPN's TIA while its CHILD SA is up (charon's view)."""
        self.charon_up = True

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
                if not a.through_vpn and a.datagram.source == ALICE:
                    # RFC 5944 4.6, RFC 5266 3.4: from the home address only to a
                    # foreign agent of a trusted link (3.6.1.1), or on the home link
                    # proven by the home agent's answer from it.
                    if a.datagram.destination[0] == HA:
                        assert self.at == "home" and (self.m.home_claimed == "eth0"
                                                      or self.m.mode is Mode.HOME), self.at
                    assert self.at not in UNTRUSTED, self.at
                self.outbox.append(a)
            elif isinstance(a, ClaimHome):
                assert self.at == "home", f"home address claimed on {self.at}"
                answer = self.m.client.last_answer
                assert answer is not None and answer[1] >= self.up_at, "claimed unproven"
            elif isinstance(a, StartVpn):
                assert self.m.policy is not Policy.NEVER_VPN, "VPN started under never-vpn"
                self.vpn_wanted = True
            elif isinstance(a, StopVpn):
                self.vpn_wanted, self.tia = False, None
            if isinstance(a, Gate) and a.home_probe is not None:
                assert self.at == "home" and a.home_probe == "eth0", (self.at, a)

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
        t = self.m.vpn_client
        bindings = [b for b in (self.m.client.binding, t.binding if t else None) if b]
        if not bindings:
            return
        b = max(bindings, key=lambda b: b.expires_at)
        self.ha_down = True
        while (t := self.m.get_timer()) is not None and t <= b.expires_at:
            self.now = max(self.now, t)
            self.apply(self.m.handle_timer(self.now))

    # -- the VPN side (charon's events) and the user's policy -------------------------

    @rule(tia=st.sampled_from(TIAS), gateway=st.sampled_from(["gw1", "gw2"]))
    def vpn_ready(self, tia: IPv4Address, gateway: str) -> None:
        """charon's CHILD SA is up (or up again with another TIA or gateway)."""
        if self.vpn_wanted and self.charon_up and self.at is not None:
            self.now += 0.01
            self.tia = tia
            self.apply(self.m.handle(VpnReady(tia, gateway), self.now))

    @rule()
    def vpn_moved(self) -> None:
        if self.tia is not None and self.at is not None:
            self.now += 0.01
            self.apply(self.m.handle(VpnMoved(LINKS[self.at].address.ip), self.now))

    @rule()
    def vpn_lost(self) -> None:
        if self.vpn_wanted:
            self.now += 0.01
            self.vpn_wanted, self.tia = False, None
            self.apply(self.m.handle(VpnLost("DPD: the gateway stopped answering"), self.now))

    @rule()
    def vpn_service_lost(self) -> None:
        self.now += 0.01
        self.charon_up, self.vpn_wanted, self.tia = False, False, None
        self.apply(self.m.handle(VpnServiceLost("charon gone"), self.now))

    @rule()
    def vpn_service_back(self) -> None:
        if not self.charon_up:
            self.now += 0.01
            self.charon_up = True
            self.apply(self.m.handle(VpnServiceBack(), self.now))

    @rule(policy=st.sampled_from(list(Policy)))
    def policy_set(self, policy: Policy) -> None:
        self.now += 0.01
        actions = self.m.handle(PolicySet(policy), self.now)
        if any(isinstance(a, PrepareLink) for a in actions):
            self.up_at = self.now  # the change probed the link again
            self.lost = False
        self.apply(actions)

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
            if a.through_vpn:
                tia = a.datagram.source
                if tia == self.tia and not self.ha_down:
                    out = self.ha.handle_request(a.datagram.data, (tia, 434), self.now)
                    if out.reply:
                        self.inflight.append((out.reply, tia))
                continue
            if dst == HA and self.at not in UNTRUSTED and not self.ha_down:
                out = self.ha.handle_request(a.datagram.data, (src, 434), self.now)
                if out.reply:
                    self.inflight.append((out.reply, None))
            elif dst == FA and self.at == "fa1":
                res = self.fa.from_mobile_node(a.datagram.data, (src, 434), self.now)
                for act in res.actions:
                    if isinstance(act, ToHomeAgent) and not self.ha_down:
                        o = self.ha.handle_request(act.data, (A("10.0.0.11"), 434), self.now)
                        if o.reply:
                            back = self.fa.from_home_agent(o.reply, (HA, 434), self.now)
                            self.inflight += [(x.data, None) for x in back.actions
                                              if isinstance(x, ToMobileNode)]
                    elif isinstance(act, ToMobileNode):
                        self.inflight.append((act.data, None))

    def deliver(self, i: int) -> None:
        data, tia = self.inflight.pop(i)
        if tia is not None and tia != self.tia:
            return  # through a VPN that is gone (or another TIA now): lost
        self.now += 0.001
        self.apply(self.m.receive(data, self.now))

    @rule()
    def round_trip(self) -> None:
        """The common case: everything out now, every reply back in order."""
        self.network_carries(lose=False)
        while self.inflight:
            self.deliver(0)

    @rule()
    def settle_on_the_fa_link(self) -> None:
        """Link up where an FA advertises, answered at once: mode f (a common path)."""
        self.link_up("fa1")
        self.round_trip()
        self.advert(600)
        self.round_trip()

    @rule()
    def settle_at_home(self) -> None:
        """The home link, answered at once: its probe, then the claim's deregistration."""
        self.link_up("home")
        self.round_trip()
        self.round_trip()

    @rule(net=st.sampled_from(sorted(UNTRUSTED)), tia=st.sampled_from(TIAS))
    def settle_in_mc(self, net: str, tia: IPv4Address) -> None:
        """An untrusted link where the VPN comes up and registers at once: mode mc."""
        self.link_up(net)
        self.vpn_ready(tia, "gw1")
        self.round_trip()

    @rule(data=st.data())
    def reply_arrives(self, data: st.DataObject) -> None:
        if self.inflight:
            self.deliver(data.draw(st.integers(0, len(self.inflight) - 1)))

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
        assert g == self.m.open_path
        if g is None:
            return
        assert self.at is not None, "gate open with no link"
        link = LINKS[self.at]
        assert (g.iface, g.link_address) == (link.iface, link.address.ip), (g, link)
        assert self.configured is g.mode
        assert self.m.mode is g.mode, (self.m.mode, g)
        if g.mode is Mode.VPN:
            # mc: only into the VPN, which is up, to the home agent's live binding of a
            # TIA (a new TIA is registered while the gate still names the old one:
            # RFC 5266 3.3); the link may be lost (MOBIKE moves it); never under
            # never-vpn.
            assert self.m.phase is State.UNTRUSTED, self.m.phase
            assert self.m.policy is not Policy.NEVER_VPN
            assert self.tia is not None, "mc open with no VPN"
            assert g.tunnel_inner_address is not None and g.foreign_agent is None
            t = self.m.vpn_client
            assert t is not None and t.binding is not None, "mc without a binding"
            assert t.binding.care_of_address == g.tunnel_inner_address, (t.binding, g)
            assert self.now < t.binding.expires_at, "mc open on a binding that ran out"
            return
        assert g.tunnel_inner_address is None
        assert self.m.phase is State.TRUSTED, self.m.phase
        assert self.m.policy is not Policy.ALWAYS_VPN, "a direct path under always-vpn"
        assert self.at not in UNTRUSTED, f"a trusted path open on {self.at}"
        assert not self.lost, "gate open on a link that is lost"
        answer = self.m.client.last_answer
        assert answer is not None and answer[1] >= self.up_at, (
            "gate open with no answer from the home agent since the link came up")
        b = self.m.client.binding
        if g.mode is Mode.HOME:
            assert link.address.ip in HOME_NET
        else:
            assert b is not None and self.now < b.expires_at, "open without a live binding"
            want = FA if g.mode is Mode.FOREIGN_AGENT else link.address.ip
            assert b.care_of_address == want, (b, g)

    @invariant()
    def not_trusted_means_shut(self) -> None:
        if self.m.phase is not State.TRUSTED and self.m.mode is not Mode.VPN:
            assert self.gate is None, self.m.phase

    @invariant()
    def the_home_address_only_on_the_proven_home_link(self) -> None:
        """RFC 5944 4.6: away from home (an untrusted link in the home prefix too) the
        home address is neither answered for nor claimed."""
        if self.at in UNTRUSTED or self.at is None:
            assert self.m.home_probe is None and self.m.home_claimed is None, self.at
        if self.m.home_probe is not None or self.m.home_claimed is not None:
            assert self.at == "home"


GateMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_rfc5266_3_4_gate_blocks_unless_a_registered_path = GateMachine.TestCase
