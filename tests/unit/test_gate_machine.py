"""The gate holds on every path of the access-mode machine (RFC 5266 section 3.4).

A hypothesis rule-based machine drives the real access-mode machine in the
shared world (``tests/support/world.py``, holding replies for the rules: they
can be late, lost, reordered or arrive after a move), with the real home agent
and foreign agent cores, a home agent that restarts denying or with another
key, through random link changes (an untrusted network in the home prefix among
them), losses, adverts, resumes, timeouts, renewals, bindings running out and
shutdowns, and the VPN side: a profile starting under any policy, with or
without keeping the IKE SA inside (RFC 5266 3.4.2); charon bringing the VPN up
(with one TIA or another, through one gateway or another), reporting the same
SA again or one nobody asked for, MOBIKE moves (mc to another untrusted network
among them), the VPN or charon lost and back, and the user's policy changing.
It checks what RFC 5266 3.4 asks of the gate: normal traffic is blocked unless
the machine holds a registered path: on a trusted link, answered by the home
agent since that link came up and not lost since; or mode mc, opened only on a
TIA registered through the VPN that is up, with the home agent's binding to it
live, never under never-vpn (which never starts the VPN nor registers through
one).  As each action is applied in order, a path is configured before the gate
opens on it and the gate is shut before any path is withdrawn; nothing is open
while undecided; the home address is never exposed (ARP permission, gratuitous
ARP, a request from it) on an untrusted link, even one that reuses the home
prefix (RFC 5944 4.6).  Behind one gateway a move of mc is MOBIKE only: the gate
stays open and the home agent is not asked again (RFC 5266 3.3); the same SA
reported again leaves mc open.
"""
from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from app.agents.ha_core import HomeAgent
from app.api import Mode, Policy, State
from app.mip.messages import RegistrationRequest
from app.mn.access_mode import (
    AccessModeMachine,
    AgentAdvert,
    ClaimHome,
    Gate,
    LinkDown,
    LinkLost,
    PolicySet,
    PrepareLink,
    Resumed,
    Send,
    Shutdown,
    StopVpn,
)
from tests.support.identities import config
from tests.support.world import (
    FA,
    HOME_NET,
    NETS,
    TIA,
    TIA2,
    UNTRUSTED,
    World,
    machine,
    registration,
)

TIAS = (TIA, TIA2)


class GateMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._build(Policy.AUTO, keep_alive_inside=False)

    def _build(self, policy: Policy, *, keep_alive_inside: bool) -> None:
        m = machine(registration(lifetime=20, initial_timeout=0.5, retries=2), vpn=True,
                    policy=policy, keep_alive_inside=keep_alive_inside)
        # Replies wait for the rules below (late, lost, reordered, after a move);
        # charon reports what the rules say, when they say it.
        self.w = World(m=m, direct=0.0, through=0.0, hold=True, stale_replies=True,
                       auto_vpn=False, check=self.check)
        self.lost = False
        self.up_at = float("-inf")
        self.to_never: set[IPv4Address] | None = None
        """In the step that switched to never-vpn: the care-of addresses withdrawn."""
        self.to_never_closed = False
        """When the current link came up (or was re-probed)."""
        self.gateway = "gw1"

    @property
    def m(self) -> AccessModeMachine:
        return self.w.m

    def apply(self, actions: list) -> None:
        self.w.apply(actions)

    # -- what each action must respect (World.apply checks the order of the gate,
    # -- the paths, the home address and never-vpn's StartVpn) -------------------------

    def check(self, a: object) -> None:
        w = self.w
        if isinstance(a, StopVpn) and self.to_never is not None:
            self.to_never_closed = True  # the VPN stops: nothing through it after this
        if isinstance(a, ClaimHome):
            answer = self.m.client.last_answer
            assert answer is not None and answer[1] >= self.up_at, "claimed unproven"
        elif isinstance(a, Send) and a.through_vpn:
            assert not self.to_never_closed, "through the VPN after its StopVpn"
            # mc's registration only through a VPN charon has up, never under
            # never-vpn (but the withdrawal of mc's binding in the step that switches
            # to never-vpn, the gate shut, before the VPN stops, each care-of address
            # once: RFC 5944 3.6.1.1), and from its current TIA (RFC 5266 3.3).
            if self.m.policy is Policy.NEVER_VPN:
                req = RegistrationRequest.decode(a.datagram.data)
                assert self.to_never is not None and req.lifetime == 0, (
                    "through the VPN under never-vpn")
                assert w.gate is None, "withdrawal with the gate open"
                assert req.care_of_address not in self.to_never, "withdrawn twice"
                self.to_never.add(req.care_of_address)
            assert w.vpn_tia is not None and a.datagram.source == w.vpn_tia, (
                a.datagram.source, w.vpn_tia)
        elif isinstance(a, Gate) and a.path is not None and a.path.mode is Mode.VPN:
            # mc opens only on a TIA registered at the home agent through the VPN
            # (RFC 5266 3.4): the SA's that is up, or, moved to a new link, the one it
            # was open on while a new TIA is being registered (RFC 5266 3.3).
            tia = a.path.tunnel_inner_address
            t = self.m.vpn_client
            assert t is not None and t.binding is not None, "mc opened without a binding"
            assert t.binding.care_of_address == tia, (t.binding, tia)
            old = w.gate
            assert tia == w.vpn_tia or (old is not None and old.tunnel_inner_address == tia), (
                a.path, w.vpn_tia)

    # -- rules ----------------------------------------------------------------------

    @initialize(policy=st.sampled_from(list(Policy)), keep_alive_inside=st.booleans())
    def profile(self, policy: Policy, keep_alive_inside: bool) -> None:
        """The user's policy at start, and RFC 5266 3.4.2's keep-the-SA-inside."""
        self._build(policy, keep_alive_inside=keep_alive_inside)

    @rule(net=st.sampled_from(sorted(NETS)))
    def link_up(self, net: str) -> None:
        self.w.now += 0.01
        self.lost = False
        self.up_at = self.w.now
        self.w.move(net)  # what was not sent yet leaves on the new link, if at all

    @rule()
    def link_lost(self) -> None:
        if self.w.net is not None:
            self.w.now += 0.01
            self.lost = True
            self.apply(self.m.handle(LinkLost(NETS[self.w.net].up.iface), self.w.now))

    @rule()
    def link_down(self) -> None:
        if self.w.net is not None:
            self.w.now += 1.0
            self.apply(self.m.handle(LinkDown(NETS[self.w.net].up.iface), self.w.now))
            self.w.net = None

    @rule(lifetime=st.sampled_from([600, 30, 1]))
    def advert(self, lifetime: int) -> None:
        if self.w.net == "fa1":
            self.w.now += 0.01
            self.apply(self.m.handle(AgentAdvert("eth0", FA, lifetime), self.w.now))

    @rule()
    def resume(self) -> None:
        self.w.now += 0.01
        if self.w.net is not None:
            self.lost = False  # the machine probes the link again, as after a flap
            self.up_at = self.w.now
        self.apply(self.m.handle(Resumed(), self.w.now))

    @rule(kind=st.sampled_from(["answers", "denies", "wrong key"]))
    def home_agent_changes(self, kind: str) -> None:
        """The home agent restarts: as configured, denying (137), or with another key."""
        if kind == "answers":
            self.w.ha = HomeAgent(config())
        elif kind == "denies":
            self.w.ha = HomeAgent(config(reverse_tunnelling=False))
        else:
            node = replace(config().mobile_nodes[0], key=b"\x42" * 16)
            self.w.ha = HomeAgent(config(mobile_nodes=(node,)))

    @rule()
    def renewal(self) -> None:
        """A renewal now (as at 0.75 of the lifetime, or after a NAT rebinding)."""
        self.w.now += 0.01
        self.apply(self.m.reregister(self.w.now))

    @rule()
    def binding_runs_out(self) -> None:
        """The home agent goes quiet and every timer up to the binding's end fires."""
        t = self.m.vpn_client
        bindings = [b for b in (self.m.client.binding, t.binding if t else None) if b]
        if not bindings:
            return
        b = max(bindings, key=lambda b: b.expires_at)
        self.w.ha_down = True
        while (t := self.m.get_timer()) is not None and t <= b.expires_at:
            self.w.now = max(self.w.now, t)
            self.apply(self.m.handle_timer(self.w.now))

    # -- the VPN side (charon's events) and the user's policy -------------------------

    @rule(tia=st.sampled_from(TIAS), gateway=st.sampled_from(["gw1", "gw2"]))
    def vpn_ready(self, tia: IPv4Address, gateway: str) -> None:
        """charon's CHILD SA is up (or up again with another TIA or gateway)."""
        if self.w.vpn_wanted and self.w.charon_up and self.w.net is not None:
            self.w.now += 0.01
            self.gateway = gateway
            self.w.vpn_ready(tia, gateway)

    @rule(tia=st.sampled_from(TIAS))
    def vpn_ready_unasked(self, tia: IPv4Address) -> None:
        """charon reports an SA nobody wants now (an initiation from before a StopVpn
        or a policy change): it must not open anything it should not."""
        if not self.w.vpn_wanted and self.w.charon_up and self.w.net is not None:
            self.w.now += 0.01
            self.w.vpn_ready(tia, "gw1")

    @rule()
    def vpn_same_sa_again(self) -> None:
        """charon reports the SA that is up once more (the same TIA and gateway): mc,
        if open, stays open on it."""
        if self.w.vpn_tia is not None and self.w.net is not None:
            before = self.w.gate
            n = len(self.w.gates)
            self.w.now += 0.01
            self.w.vpn_ready(self.w.vpn_tia, self.gateway)
            if before is not None and before.mode is Mode.VPN:
                assert all(g.path is not None for _, g in self.w.gates[n:]), (
                    "mc shut by the same SA reported again")

    @rule()
    def vpn_moved(self) -> None:
        if self.w.vpn_tia is not None and self.w.net is not None:
            self.w.now += 0.01
            self.w.vpn_moved()

    @rule(net=st.sampled_from(sorted(UNTRUSTED)))
    def mobike_in_mc(self, net: str) -> None:
        """mc moves to another untrusted network and MOBIKE moves the SA: the gate
        stays open throughout (RFC 5266 3.3: only MOBIKE, the home agent not asked)."""
        g = self.w.gate
        if g is None or g.mode is not Mode.VPN or self.w.vpn_tia is None:
            return
        n, asked = len(self.w.gates), len([s for _, s in self.w.sent if s.through_vpn])
        self.link_up(net)
        self.w.now += 0.01
        self.w.vpn_moved()
        assert all(g.path is not None for _, g in self.w.gates[n:]), "mc shut on the move"
        assert self.m.mode is Mode.VPN
        assert len([s for _, s in self.w.sent if s.through_vpn]) == asked, (
            "the home agent asked again on a MOBIKE move")

    @rule()
    def vpn_lost(self) -> None:
        if self.w.vpn_wanted:
            self.w.now += 0.01
            self.w.vpn_lost("DPD: the gateway stopped answering")

    @rule()
    def vpn_service_lost(self) -> None:
        self.w.now += 0.01
        self.w.charon_lost("charon gone")

    @rule()
    def vpn_service_back(self) -> None:
        if not self.w.charon_up:
            self.w.now += 0.01
            self.w.charon_back()

    @rule(policy=st.sampled_from(list(Policy)))
    def policy_set(self, policy: Policy) -> None:
        self.w.now += 0.01
        switches = policy is Policy.NEVER_VPN and self.m.policy is not Policy.NEVER_VPN
        actions = self.m.handle(PolicySet(policy), self.w.now)
        if any(isinstance(a, PrepareLink) for a in actions):
            self.up_at = self.w.now  # the change probed the link again
            self.lost = False
        # Withdrawals through the VPN are allowed in this step only (see check).
        self.to_never, self.to_never_closed = (set() if switches else None), False
        try:
            self.apply(actions)
        finally:
            self.to_never, self.to_never_closed = None, False

    @rule()
    def shutdown(self) -> None:
        self.w.now += 0.01
        self.apply(self.m.handle(Shutdown(), self.w.now))

    @rule(down=st.booleans())
    def home_agent_reachability(self, down: bool) -> None:
        self.w.ha_down = down

    @rule(lose=st.booleans())
    def network_carries(self, lose: bool) -> None:
        """The outbox goes out on the current link; replies come back later."""
        self.w.carry(lose)

    @rule()
    def round_trip(self) -> None:
        """The common case: everything out now, every reply back in order."""
        self.w.carry()
        while self.w.inflight:
            self.w.deliver(0)

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
        if self.w.inflight:
            self.w.deliver(data.draw(st.integers(0, len(self.w.inflight) - 1)))

    @rule()
    def timer_fires(self) -> None:
        """Retransmissions, timeouts, renewals and expiry: the next timer, whatever it is."""
        t = self.m.get_timer()
        if t is not None:
            self.w.now = max(self.w.now, t)
            self.apply(self.m.handle_timer(self.w.now))

    # -- what must hold ------------------------------------------------------------------

    @invariant()
    def blocked_unless_a_registered_path(self) -> None:
        w = self.w
        g = w.gate
        assert g == self.m.open_path
        if g is None:
            return
        assert w.net is not None, "gate open with no link"
        link = NETS[w.net].up
        assert (g.iface, g.link_address) == (link.iface, link.address.ip), (g, link)
        assert w.configured is g.mode
        assert self.m.mode is g.mode, (self.m.mode, g)
        if g.mode is Mode.VPN:
            # mc: only into the VPN, which is up, to the home agent's live binding of a
            # TIA (a new TIA is registered while the gate still names the old one:
            # RFC 5266 3.3); the link may be lost (MOBIKE moves it); never under
            # never-vpn.
            assert self.m.phase is State.UNTRUSTED, self.m.phase
            assert self.m.policy is not Policy.NEVER_VPN
            assert w.vpn_tia is not None, "mc open with no VPN"
            assert g.tunnel_inner_address is not None and g.foreign_agent is None
            t = self.m.vpn_client
            assert t is not None and t.binding is not None, "mc without a binding"
            assert t.binding.care_of_address == g.tunnel_inner_address, (t.binding, g)
            assert w.now < t.binding.expires_at, "mc open on a binding that ran out"
            return
        assert g.tunnel_inner_address is None
        assert self.m.phase is State.TRUSTED, self.m.phase
        assert self.m.policy is not Policy.ALWAYS_VPN, "a direct path under always-vpn"
        assert w.net not in UNTRUSTED, f"a trusted path open on {w.net}"
        assert not self.lost, "gate open on a link that is lost"
        answer = self.m.client.last_answer
        assert answer is not None and answer[1] >= self.up_at, (
            "gate open with no answer from the home agent since the link came up")
        b = self.m.client.binding
        if g.mode is Mode.HOME:
            assert link.address.ip in HOME_NET
        else:
            assert b is not None and w.now < b.expires_at, "open without a live binding"
            want = FA if g.mode is Mode.FOREIGN_AGENT else link.address.ip
            assert b.care_of_address == want, (b, g)

    @invariant()
    def not_trusted_means_shut(self) -> None:
        if self.m.phase is not State.TRUSTED and self.m.mode is not Mode.VPN:
            assert self.w.gate is None, self.m.phase

    @invariant()
    def the_home_address_only_on_the_proven_home_link(self) -> None:
        """RFC 5944 4.6: away from home (an untrusted link in the home prefix too) the
        home address is neither answered for nor claimed."""
        net = self.w.net
        if net in UNTRUSTED or net is None:
            assert self.m.home_probe is None and self.m.home_claimed is None, net
        if self.m.home_probe is not None or self.m.home_claimed is not None:
            assert net is not None and NETS[net].home, net

    @invariant()
    def never_vpn_never_wants_the_vpn(self) -> None:
        """never-vpn: no VPN kept, none registered through (RFC 5266 3.4's choice)."""
        if self.m.policy is Policy.NEVER_VPN:
            t = self.m.vpn_client
            assert self.m.mode is not Mode.VPN and (t is None or t.binding is None or
                                                    self.w.gate is None)


GateMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_rfc5266_3_4_gate_blocks_unless_a_registered_path = GateMachine.TestCase
