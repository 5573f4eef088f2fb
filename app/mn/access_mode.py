"""The access-mode machine of RFC 5266 sections 3.1, 3.2 and 3.4 (trusted side), sans-I/O.

On every link change the gate closes and a registration request goes
straight to the home agent from the new address (co-located care-of
address), while the link is solicited for foreign agents.  A valid reply
means trusted: mode ``c``, or ``f`` when an FA advertised on this link (a
second registration, through the FA: only ever on a trusted network), or
``h`` on the home link.  A link in the home prefix is no proof of it (RFC 5266
3.1.1): it is probed from its own address too (lifetime 0 for that address
alone), and only the home agent's authenticated answer claims it: ARP for the
home address allowed there, ``ClaimHome`` (the address on the link, its
gratuitous ARP), then the deregistration from the home address, in RFC 5944
4.6's order; its reply is mode ``h``.  No reply within the configured retries
means untrusted.  A reply without a valid Mobile-Home authenticator is silently
discarded (RFC 5944 3.6.2.1 b): it changes nothing, whatever its code and the
state; a timeout is a timeout (the count is only a history note).

The untrusted side (RFC 5266 3.4, 3.4.2): with a VPN in the profile the IKE side
starts at the same moment as the direct probe (``StartVpn``; an IKE SA that
exists is moved by charon's MOBIKE).  As soon as the VPN is up its tunnel inner
address (TIA) is registered through it as a co-located care-of address with
reverse tunnelling, by a second registration client sharing the first one's
replay state; its reply opens mode ``mc`` (encrypted, so the rule against
traffic while undecided holds) while the direct probe keeps retransmitting.  A
direct reply, then or later, means trusted and wins: the path through the VPN
is cancelled, and registered again directly if a request through the VPN left
after the answered one (so the home agent's last binding is the one shown).
Moves behind the same gateway and TIA are MOBIKE only: the mc gate stays open
and the home agent is not asked again.  Policies: ``always-vpn`` skips the
direct probe, ``never-vpn`` never starts the VPN.

Denials and missing addresses are an error state that keeps the gate shut and
says why (Mullvad's tunnel state machine does the same); so is a VPN that went
down or a charon that vanished while in mc (a kill switch).

The gate is keyed to the decision (``app.mn.mode_state``, which holds what the
machine's parts share: the path, the gate, the data plane, the status).  A lost
link shuts the gate at once (``LinkLost``); only reporting the loss as a move
waits for the flap hold.

Like the registration client, it takes events with a time and returns actions.
This module is the machine's one entry and its trusted side: links, the direct
client's outcomes, the foreign agent, the home link's probe.  The VPN side (mc,
starting and retrying the VPN, charon's events) is ``app.mn.mode_vpn``'s
``VpnSide``, a part the machine owns and hands its state to (composition).
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from app.api import Mode, Policy, State
from app.mn.gateway_order import GatewayOrder
from app.mn.known_networks import KnownNetworks
from app.mn.mode_direct import DirectSide
from app.mn.mode_events import (
    Action,
    AgentAdvert,
    ClaimHome,
    ConfigureDataPlane,
    DropTia,
    Event,
    Gate,
    LinkDown,
    LinkLost,
    LinkUp,
    NatDetected,
    Note,
    PolicySet,
    PrepareLink,
    RememberGateway,
    RememberNetwork,
    Resumed,
    Send,
    Shutdown,
    Solicit,
    StartVpn,
    Status,
    Stopped,
    StopVpn,
    UseTia,
    VpnLost,
    VpnMoved,
    VpnNat,
    VpnReady,
    VpnRekeyed,
    VpnServiceBack,
    VpnServiceLost,
)
from app.mn.mode_state import (
    BINDING_RAN_OUT,
    NEVER_VPN_REASON,
    OUTCOME_LEAVES_TO,
    Link,
    ModeState,
)
from app.mn.mode_vpn import (
    DEFAULT_KEEPALIVE,
    MOBIKE_WAIT,
    VPN_RETRY_MAX,
    VPN_RETRY_MIN,
    VpnSide,
    VpnState,
)
from app.mn.registration import RegistrationClient
from app.net.gate_rules import ProvenPath

# The machine, and its vocabulary (app.mn.mode_events) re-exported: callers say ``am.LinkUp``.
__all__ = [
    "BINDING_RAN_OUT",
    "DEFAULT_KEEPALIVE",
    "MOBIKE_WAIT",
    "NEVER_VPN_REASON",
    "OUTCOME_LEAVES_TO",
    "VPN_RETRY_MAX",
    "VPN_RETRY_MIN",
    "AccessModeMachine",
    "Action",
    "AgentAdvert",
    "ClaimHome",
    "ConfigureDataPlane",
    "DropTia",
    "Event",
    "Gate",
    "LinkDown",
    "LinkLost",
    "LinkUp",
    "NatDetected",
    "Note",
    "PolicySet",
    "PrepareLink",
    "RememberGateway",
    "RememberNetwork",
    "Resumed",
    "Send",
    "Shutdown",
    "Solicit",
    "StartVpn",
    "Status",
    "StopVpn",
    "Stopped",
    "UseTia",
    "VpnLost",
    "VpnMoved",
    "VpnNat",
    "VpnReady",
    "VpnRekeyed",
    "VpnServiceBack",
    "VpnServiceLost",
]

class AccessModeMachine:
    """RFC 5266's access modes for one profile, sans-I/O (see the module docstring).

    Events in (:meth:`handle`, :meth:`receive`, :meth:`handle_timer`,
    :meth:`reregister`) with a monotonic ``now``; each returns the actions to
    execute in order (the gate's safety is that order).  :meth:`get_timer` says
    when to call :meth:`handle_timer` next.  Transitions: :meth:`handle` dispatches
    on the event's type to one ``_on_*`` handler (the VPN's to ``VpnSide.on_*``);
    the direct registration's outcomes go to ``_on_registered``,
    ``_on_deregistered``, ``_on_timed_out``, ``_on_denied`` and ``_on_binding_lost``
    (the VPN client's to ``VpnSide.events``), each branching on (phase, mode, via
    FA) with its RFC case; ``OUTCOME_LEAVES_TO`` is where an outcome that ends the
    path leaves it.

    ``vpn_client``: registrations through the VPN (mode mc), None without a VPN in
    the profile; it must share ``client``'s replay state (the same home agent).
    ``keep_alive_inside``: RFC 5266 3.4.2's MAY, keep the IKE SA on trusted
    networks where the gateway answers, so the next untrusted network needs only
    MOBIKE.  ``gateway_order``: the VPN's gateways to try first, per network, and
    the failover to the next one when the one in use dies (``app.mn.gateway_order``).
    """

    def __init__(self, home_network: IPv4Network, client: RegistrationClient, *,
                 use_foreign_agents: bool = True,
                 vpn_client: RegistrationClient | None = None,
                 policy: Policy = Policy.AUTO, keep_alive_inside: bool = False,
                 known: KnownNetworks | None = None,
                 to_wall: Callable[[float], float] = lambda now: now,
                 gateway_order: GatewayOrder | None = None,
                 jitter: Callable[[], float] | None = None) -> None:
        if vpn_client is not None and vpn_client.replay is not client.replay:
            raise ValueError("the VPN's registration client must share the direct one's "
                             "replay state")
        self.home_network = home_network
        self._s = ModeState(client, vpn_client, use_foreign_agents, policy, keep_alive_inside)
        if known is not None:
            self._s.known = known
        self._s.to_wall = to_wall
        # gateway_order None: charon's order, no failover; jitter: the retries' spread
        self._vpn = VpnSide(self._s, gateway_order, jitter)
        self._direct = DirectSide(self._s, self._vpn)
        self._stopping = False
        """A Shutdown came: ``Stopped`` once nothing of ours stands at the home agent."""

    # -- what callers read (the state is the parts' shared ModeState) ------------------

    @property
    def client(self) -> RegistrationClient:
        return self._s.client

    @property
    def vpn_client(self) -> RegistrationClient | None:
        return self._s.vpn_client

    @property
    def use_foreign_agents(self) -> bool:
        return self._s.use_foreign_agents

    @property
    def keep_alive_inside(self) -> bool:
        return self._s.keep_alive_inside

    @property
    def policy(self) -> Policy:
        return self._s.policy

    @property
    def phase(self) -> State:
        return self._s.phase

    @property
    def mode(self) -> Mode:
        return self._s.mode

    @property
    def error(self) -> str | None:
        return self._s.error

    @property
    def last_handover_ms(self) -> float | None:
        return self._s.last_handover_ms

    @property
    def open_path(self) -> ProvenPath | None:
        """What the last Gate action opened (None: shut)."""
        return self._s.open_path

    @property
    def home_probe(self) -> str | None:
        """The interface the last Gate action let answer ARP for the home address."""
        return self._s.home_probe

    @property
    def home_claimed(self) -> str | None:
        """Where a ClaimHome put the home address that no mode h has taken over yet."""
        return self._s.home_claimed

    @property
    def configured(self) -> Mode:
        """What the last ConfigureDataPlane action set up."""
        return self._s.configured

    @property
    def configured_tia(self) -> IPv4Address | None:
        return self._s.configured_tia

    @property
    def vpn(self) -> VpnState:
        """What the machine knows of the VPN."""
        return self._vpn.vpn

    @property
    def registering_via_fa(self) -> bool:
        """A registration through the link's FA is out (mode f may follow)."""
        return self._s.registering_via_fa

    @property
    def bound(self) -> bool:
        """Some registration of ours stands at the home agent."""
        return self.client.binding is not None or (
            self.vpn_client is not None and self.vpn_client.binding is not None)

    # -- events in -------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """One event in at ``now`` (monotonic seconds); the actions to execute, in order."""
        s, vpn = self._s, self._vpn
        match event:
            case LinkUp():
                s.handover_starts(now)
                self._link_up(event, now)
            case LinkLost():
                self._on_link_lost(event)
            case LinkDown():
                self._on_link_down(event)
            case AgentAdvert():
                self._direct.advert(event, now)
            case Resumed():
                s.handover_starts(now)
                self._reprobe(now)
            case Shutdown():
                self._stopping = True
                if event.can_send:  # else nothing of ours can be withdrawn from here
                    self._on_shutdown(now)
            case VpnNat():
                if event.ike_id == self.vpn.ike_id:  # of the SA in use only
                    s.actions.append(NatDetected(event.nat_detected))
            case PolicySet():
                s.handover_starts(now)  # a policy's handover counts from now
                self._policy(event.policy, now)
            case VpnReady():
                vpn.on_ready(event, now)
            case VpnMoved():
                vpn.on_moved(now)
            case VpnRekeyed():
                vpn.on_rekeyed(event)
            case VpnLost():
                vpn.on_lost(event, now)
                self._probe_skipped(now)
            case VpnServiceLost():
                vpn.on_service_lost(event)
                self._probe_skipped(now)
            case VpnServiceBack():
                vpn.on_service_back()
        self._drain(now)
        return self._take(now)

    def receive(self, data: bytes, now: float) -> list[Action]:
        """A datagram from the home agent or an FA (each client takes its own)."""
        self.client.receive(data, now)
        if self.vpn_client is not None:
            self.vpn_client.receive(data, now)
        self._drain(now)
        return self._take(now)

    def reregister(self, now: float) -> list[Action]:
        """Register the current binding again now (RFC 3519 4.10: the NAT mapping may
        have changed), through the same path as the binding."""
        vpn = self._s.vpn_client if self.mode is Mode.VPN else None
        if (self.client.reregister(now) if self.phase is State.TRUSTED else
                vpn is not None and vpn.reregister(now)):
            self._s.actions.append(Note("nat-rebind", "keepalives went unanswered: "
                                                      "registering again"))
        self._drain(now)
        return self._take(now)

    def handle_timer(self, now: float) -> list[Action]:
        """The time from :meth:`get_timer` came: retransmissions, renewals, VPN retries."""
        self.client.handle_timer(now)
        self._vpn.handle_timer(now)
        self._drain(now)
        return self._take(now)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next (monotonic seconds); None: never."""
        known = [t for t in [self.client.get_timer(), *self._vpn.timers()] if t is not None]
        return min(known) if known else None

    # -- the link and the policy ------------------------------------------------

    def _on_link_lost(self, ev: LinkLost) -> None:
        s = self._s
        link = s.link
        if link is None or ev.iface != link.iface or link.lost:
            return
        link.lost = True
        if link.claimed:  # its deregistration from the home address ends here
            self.client.cancel()
        if s.mode is not Mode.VPN:  # mc carries only ESP: it waits for MOBIKE
            s.shut()  # at once: the cable may be in another network already
            s.withdraw_home()
            if s.phase is not State.OFFLINE:
                s.enter(State.PROBING, Mode.NONE, None)
        elif link.claimed:
            s.unclaim_home(link)

    def _on_link_down(self, ev: LinkDown) -> None:
        s = self._s
        link = s.link
        if link is None or ev.iface != link.iface:
            return
        # Nothing more from this link's addresses (on the home link its own address
        # may be the home address): no deregistration from the home address elsewhere,
        # no probe retransmitted with no link.  The binding is not renewable from the
        # next link anyway (_on_link_up forgets it).
        self.client.cancel()
        s.link = None
        self._vpn.vpn.register_at = None
        s.leave(State.OFFLINE, None)

    def _on_shutdown(self, now: float) -> None:
        if self._vpn.shutdown(now):  # mc's binding: from the TIA, through the VPN
            return
        if self.client.binding is not None:
            self.client.deregister(now, at_home=self._s.mode is Mode.HOME)
        # else nothing of ours can be withdrawn from here: never from the home
        # address on a link that did not prove trusted.

    def _link_up(self, ev: LinkUp, now: float) -> None:
        s = self._s
        old = s.link
        if old is None or old.address != ev.address or old.iface != ev.iface:
            # A binding to an address of another link cannot be renewed from this one
            # (its renewal would leave from the old care-of address, in clear, on a
            # network not yet proven): the new link's decision makes a new one.
            self.client.forget_binding()
        # A home-prefix link may be the home link only if the home agent is on its own
        # subnet: an authenticated answer then came from the home agent on this link (a
        # network that merely reuses the prefix has no home agent there to answer).
        at_home = (ev.address.ip in self.home_network
                   and self.client.config.home_agent in ev.address.network)
        s.link = Link(ev.iface, ev.address, ev.gateway, home_prefix=at_home,
                      network=ev.network)
        s.via_fa = False
        in_mc = s.mode is Mode.VPN and s.open_path is not None
        if not in_mc:
            s.shut()  # nothing normal leaves while undecided
        # (mode mc stays open: what it lets out is encrypted, and MOBIKE moves it)
        back_to_tunnel = s.withdraw_home()
        if in_mc:
            s.open(s.link)  # the same rules, named for the new link
            if s.home_probe is not None:  # ARP for the home address: proven home only
                s.home_probe = None
                s.actions.append(Gate(s.open_path))
        s.actions.append(PrepareLink(ev.iface, ev.address, ev.gateway, mc_holds=in_mc))
        if back_to_tunnel:  # a claim of the old link moved mc's home address: back
            s.actions.append(s.vpn_plane(ev.iface))
        if not in_mc:
            s.enter(State.PROBING, Mode.NONE, None)
        if s.policy is Policy.ALWAYS_VPN and self._vpn.configured:
            # No direct probe: whatever answers, the traffic goes through the VPN.
            self.client.cancel()
        elif (s.policy is Policy.AUTO and self._vpn.configured
              and self._vpn.untrusted_reason() is None
              and s.known.skip_probe(ev.network, s.to_wall(now))):
            # RFC 5266 5: the probe would show this network, judged untrusted before,
            # the home agent, the NAI and the home address again.  Decided at once.
            # (charon not running: probed as usual, no VPN could come up here.)
            self.client.cancel()
            s.link.skipped = True
            s.actions.append(Note("known-untrusted", "this network was judged untrusted "
                                  "before: no direct probe, straight to the VPN"))
            if not in_mc:
                s.leave(State.UNTRUSTED, None)
        elif at_home:
            # RFC 5266 3.1.1: the prefix alone is no proof of the home link (any
            # network may reuse a private prefix), and away from home the home address
            # must not be answered for nor sent from (RFC 5944 4.6).  The probe leaves
            # from this link's own address like any other; only the home agent's
            # authenticated answer makes it home (ModeState.claim_home).
            self.client.deregister_care_of(ev.address.ip, now)
        else:
            self.client.register(ev.address.ip, now)
            if self.use_foreign_agents:
                s.actions.append(Solicit(ev.iface))
        self._vpn.link_up(now, in_mc=in_mc)

    def _probe_skipped(self, now: float) -> None:
        """The VPN failed on a network whose probe was skipped (RFC 5266 5): probe it
        after all, so a trusted network wrongly remembered is not cut off."""
        s = self._s
        link = s.link
        if link is not None and link.skipped and not link.lost and s.mode is not Mode.VPN:
            link.skipped = False
            s.actions.append(Note("known-untrusted-probe", "the VPN is not up on a network "
                                  "judged untrusted before: asking the home agent directly"))
            self.client.register(link.address.ip, now)

    def _reprobe(self, now: float) -> None:
        s = self._s
        if s.link is not None:  # same link, maybe stale binding: probe again
            link = s.link
            self._link_up(LinkUp(link.iface, link.address, link.gateway, link.network), now)

    def _policy(self, policy: Policy, now: float) -> None:
        s = self._s
        if policy is s.policy:
            return
        before, s.policy = s.policy, policy
        trusted = s.phase is State.TRUSTED
        if policy is Policy.NEVER_VPN:
            if s.mode is Mode.VPN:
                s.leave(State.UNTRUSTED, NEVER_VPN_REASON)
                self._vpn.withdraw(now)  # nothing replaces mc: its binding goes too
            elif s.phase is State.UNTRUSTED:
                s.enter(State.UNTRUSTED, Mode.NONE, NEVER_VPN_REASON)
            self._vpn.stop("the policy is never-vpn")
            if trusted or before is not Policy.ALWAYS_VPN:
                # Trusted needs no VPN; under auto the direct probe has answered or is
                # still going: nothing to decide again.  Only always-vpn had none.
                return
        elif policy is Policy.AUTO and trusted:
            return  # already what the RFC would choose here
        elif policy is Policy.ALWAYS_VPN and s.mode is Mode.VPN:
            self.client.cancel()  # mc stays; no direct probe may take it away
            return
        self._reprobe(now)

    def _take(self, now: float) -> list[Action]:
        if self._stopping and not self.bound:
            self._stopping = False
            self._s.actions.append(Stopped())
        return self._s.take(now)

    def _drain(self, now: float) -> None:
        # Events can start new registrations (c -> f): drain until quiet.
        s = self._s
        while True:
            link = s.link
            iface = link.iface if link else ""
            sent = list(self.client.datagrams_to_send())
            for d in sent:
                s.actions.append(Send(iface, d))
            through = self._vpn.sends(iface)
            seen = self._direct.events(now)
            seen = self._vpn.events(now) or seen
            if not seen and not sent and not through:
                return
