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

The gate is keyed to the decision: ``Gate(path)`` opens exactly the proven
path (interface, care-of address, mode) and ``Gate(None)`` shuts it.  Every
way out of a registered path shuts the gate before the mode's routes are
withdrawn (``ConfigureDataPlane(NONE)``), and a trusted path is configured
before the gate opens on it.  A lost link shuts the gate at once
(``LinkLost``); only reporting the loss as a move waits for the flap hold.

Like the registration client, it takes events with a time and returns actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from app.api import Mode, Policy, State
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
from app.mn.registration import (
    BindingLost,
    Denied,
    Deregistered,
    Registered,
    RegistrationClient,
    TimedOut,
)
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
    "Note",
    "PolicySet",
    "PrepareLink",
    "Resumed",
    "Send",
    "Shutdown",
    "Solicit",
    "StartVpn",
    "Status",
    "StopVpn",
    "UseTia",
    "VpnLost",
    "VpnMoved",
    "VpnReady",
    "VpnRekeyed",
    "VpnServiceBack",
    "VpnServiceLost",
]

VPN_RETRY_MIN = 2.0
VPN_RETRY_MAX = 30.0
"""Seconds before bringing a failed VPN up again, doubling between the two."""
DEFAULT_KEEPALIVE = 110
"""RFC 3519 4.9's K when the home agent's reply names none."""
MOBIKE_WAIT = 1.0
"""With an IKE SA kept from an earlier link, how long to wait for MOBIKE to move
it before registering through it anyway."""
NEVER_VPN_REASON = "untrusted network: the policy is never-vpn, so nothing leaves"
BINDING_RAN_OUT = ("the home agent stopped answering: the binding ran out with no renewal "
                   "accepted")

OUTCOME_LEAVES_TO = {
    Deregistered: State.OFFLINE,   # no binding left: shutting down
    Denied: State.ERROR,           # RFC 5944 3.6.2.3: refused; the error says why
    BindingLost: State.UNTRUSTED,  # RFC 5944 3.6.2.2: the lifetime ran out unrenewed
}
"""Where a registration's outcome leaves the path, when it ends it (an h11-style
table: the next phase, with mode none and the gate shut, ``_leave``)."""


def _discarded_hint(n: int) -> str:
    if n == 0:
        return ""
    return (f"{n} {'reply' if n == 1 else 'replies'} without a valid Mobile-Home "
            f"authenticator {'was' if n == 1 else 'were'} discarded (RFC 5944 3.6.2.1): "
            "forged, or this profile's key is not the home agent's")


@dataclass
class _Link:
    iface: str
    address: IPv4Interface
    gateway: IPv4Address | None
    fa: AgentAdvert | None = None
    fa_failed: bool = False
    """The FA on this link refused or did not answer: stay in mode c here."""
    lost: bool = False
    """Carrier or address gone: no reply opens the gate until the link is back."""
    home_prefix: bool = False
    """The address is in the home prefix: a candidate home link, not yet proof."""
    claimed: bool = False
    """The home agent answered the probe from this link: the home address is
    claimed here and the deregistration from it is out."""
    home_failed: bool = False
    """The deregistration from the home address went unanswered: mode c here."""


@dataclass
class _Vpn:
    """What the machine knows of the VPN (charon does the work)."""

    starting: bool = False
    tia: IPv4Address | None = None
    """Set while the CHILD SA is up."""
    gateway: str = ""
    ike_id: int | None = None
    """The IKE SA in use (its rekeyed id after a rekey); None: not known."""
    retry_at: float | None = None
    retry_delay: float = VPN_RETRY_MIN
    service_ok: bool = True
    """charon answers on its socket."""
    service_error: str | None = None
    register_at: float | None = None
    """An SA kept from the last link: register through it when MOBIKE moved it, or then."""

    @property
    def up(self) -> bool:
        return self.tia is not None


@dataclass
class AccessModeMachine:
    """RFC 5266's access modes for one profile, sans-I/O (see the module docstring).

    Events in (:meth:`handle`, :meth:`receive`, :meth:`handle_timer`,
    :meth:`reregister`) with a monotonic ``now``; each returns the actions to
    execute in order (the gate's safety is that order).  :meth:`get_timer` says
    when to call :meth:`handle_timer` next.  Transitions: :meth:`handle` dispatches
    on the event's type to one ``_on_*`` handler; the registrations' outcomes go to
    ``_on_registered``, ``_on_deregistered``, ``_on_timed_out``, ``_on_denied`` and
    ``_on_binding_lost`` (the VPN's to ``_on_vpn_*``), each branching on (phase,
    mode, via FA) with its RFC case; ``OUTCOME_LEAVES_TO`` is where an outcome that
    ends the path leaves it.
    """

    home_network: IPv4Network
    client: RegistrationClient
    use_foreign_agents: bool = True
    vpn_client: RegistrationClient | None = None
    """Registrations through the VPN (mode mc): None without a VPN in the profile.
    It must share ``client``'s replay state (the same home agent)."""
    policy: Policy = Policy.AUTO
    keep_alive_inside: bool = False
    """RFC 5266 3.4.2's MAY: keep the IKE SA on trusted networks where the gateway
    answers, so the next untrusted network needs only MOBIKE."""
    # -- state: the machine's own, never given --------------------------------------
    phase: State = field(init=False, default=State.OFFLINE)
    mode: Mode = field(init=False, default=Mode.NONE)
    error: str | None = field(init=False, default=None)
    last_handover_ms: float | None = field(init=False, default=None)
    _handover_from: float | None = field(init=False, default=None)
    """When the handover under way began (link-up, re-probe, policy change)."""
    _handover_via_fa: float | None = field(init=False, default=None)
    """Mode c reached on an FA link while the registration through it is out: its
    time is the handover's if the FA fails us."""
    _reached: bool = field(init=False, default=False)
    """A trusted (or mc) Status went out since the last handover ended."""
    _link: _Link | None = field(init=False, default=None)
    _via_fa: bool = field(init=False, default=False)
    open_path: ProvenPath | None = field(init=False, default=None)
    """What the last Gate action opened (None: shut)."""
    home_probe: str | None = field(init=False, default=None)
    """The interface the last Gate action let answer ARP for the home address."""
    home_claimed: str | None = field(init=False, default=None)
    """Where a ClaimHome put the home address that no mode h has taken over yet."""
    configured: Mode = field(init=False, default=Mode.NONE)
    """What the last ConfigureDataPlane action set up."""
    configured_tia: IPv4Address | None = field(init=False, default=None)
    vpn: _Vpn = field(init=False, default_factory=_Vpn)
    _actions: list[Action] = field(init=False, default_factory=list)
    _stopping: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.vpn_client is not None and self.vpn_client.replay is not self.client.replay:
            raise ValueError("the VPN's registration client must share the direct one's "
                             "replay state")

    # -- events in -------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """One event in at ``now`` (monotonic seconds); the actions to execute, in order."""
        match event:
            case LinkUp():
                self._handover_starts(now)
                self._link_up(event, now)
            case LinkLost():
                self._on_link_lost(event)
            case LinkDown():
                self._on_link_down(event)
            case AgentAdvert():
                self._advert(event, now)
            case Resumed():
                self._handover_starts(now)
                self._reprobe(now)
            case Shutdown():
                self._stopping = True
                if event.can_send:
                    self._on_shutdown(now)
            case VpnNat():
                if event.ike_id == self.vpn.ike_id:  # of the SA in use only
                    self._actions.append(NatDetected(event.nat_detected))
            case PolicySet():
                self._handover_starts(now)  # a policy's handover counts from now
                self._policy(event.policy, now)
            case VpnReady():
                self._on_vpn_ready(event, now)
            case VpnMoved():
                self._on_vpn_moved(now)
            case VpnRekeyed():
                self._on_vpn_rekeyed(event)
            case VpnLost():
                self._on_vpn_lost(event, now)
            case VpnServiceLost():
                self._on_vpn_service_lost(event)
            case VpnServiceBack():
                self._on_vpn_service_back()
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
        if self.phase is State.TRUSTED and self.client.reregister(now):
            self._actions.append(Note("nat-rebind", "keepalives went unanswered: "
                                                    "registering again"))
        self._drain(now)
        return self._take(now)

    def handle_timer(self, now: float) -> list[Action]:
        """The time from :meth:`get_timer` came: retransmissions, renewals, VPN retries."""
        self.client.handle_timer(now)
        if self.vpn_client is not None:
            self.vpn_client.handle_timer(now)
        v = self.vpn
        if v.retry_at is not None and now >= v.retry_at:
            v.retry_at = None
            self._start_vpn()
        if v.register_at is not None and now >= v.register_at:
            v.register_at = None
            self._register_through_vpn(now)
        self._drain(now)
        return self._take(now)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` is due next (monotonic seconds); None: never."""
        times = [self.client.get_timer(), self.vpn.retry_at, self.vpn.register_at,
                 self.vpn_client.get_timer() if self.vpn_client is not None else None]
        known = [t for t in times if t is not None]
        return min(known) if known else None

    @property
    def registering_via_fa(self) -> bool:
        """A registration through the link's FA is out (mode f may follow)."""
        return self._via_fa and self.mode is not Mode.FOREIGN_AGENT

    @property
    def bound(self) -> bool:
        """Some registration of ours stands at the home agent."""
        return self.client.binding is not None or (
            self.vpn_client is not None and self.vpn_client.binding is not None)

    # -- logic -----------------------------------------------------------------

    def _on_link_lost(self, ev: LinkLost) -> None:
        link = self._link
        if link is None or ev.iface != link.iface or link.lost:
            return
        link.lost = True
        if link.claimed:  # its deregistration from the home address ends here
            self.client.cancel()
        if self.mode is not Mode.VPN:  # mc carries only ESP: it waits for MOBIKE
            self._shut()  # at once: the cable may be in another network already
            self._withdraw_home()
            if self.phase is not State.OFFLINE:
                self._enter(State.PROBING, Mode.NONE, None)
        elif link.claimed:
            self._unclaim_home(link)

    def _on_link_down(self, ev: LinkDown) -> None:
        link = self._link
        if link is None or ev.iface != link.iface:
            return
        # Nothing more from this link's addresses (on the home link its own address
        # may be the home address): no deregistration from the home address elsewhere,
        # no probe retransmitted with no link.  The binding is not renewable from the
        # next link anyway (_on_link_up forgets it).
        self.client.cancel()
        self._link = None
        self.vpn.register_at = None
        self._leave(State.OFFLINE, None)

    def _on_shutdown(self, now: float) -> None:
        t = self.vpn_client
        if t is not None and t.binding is not None and self.vpn.up:
            t.deregister(now, at_home=False)  # from the TIA, through the VPN
        elif self.client.binding is not None:
            self.client.deregister(now, at_home=self.mode is Mode.HOME)
        # else nothing of ours can be withdrawn from here: never from the home
        # address on a link that did not prove trusted.

    def _link_up(self, ev: LinkUp, now: float) -> None:
        old = self._link
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
        self._link = _Link(ev.iface, ev.address, ev.gateway, home_prefix=at_home)
        self._via_fa = False
        in_mc = self.mode is Mode.VPN and self.open_path is not None
        if not in_mc:
            self._shut()  # nothing normal leaves while undecided
        # (mode mc stays open: what it lets out is encrypted, and MOBIKE moves it)
        back_to_tunnel = self._withdraw_home()
        if in_mc:
            self._open(self._link)  # the same rules, named for the new link
            if self.home_probe is not None:  # ARP for the home address: proven home only
                self.home_probe = None
                self._actions.append(Gate(self.open_path))
        self._actions.append(PrepareLink(ev.iface, ev.address, ev.gateway, mc_holds=in_mc))
        if back_to_tunnel:  # a claim of the old link moved mc's home address: back
            self._actions.append(ConfigureDataPlane(Mode.VPN, ev.iface, tia=self.configured_tia))
        if not in_mc:
            self._enter(State.PROBING, Mode.NONE, None)
        if self.policy is Policy.ALWAYS_VPN and self._vpn_configured:
            # No direct probe: whatever answers, the traffic goes through the VPN.
            self.client.cancel()
        elif at_home:
            # RFC 5266 3.1.1: the prefix alone is no proof of the home link (any
            # network may reuse a private prefix), and away from home the home address
            # must not be answered for nor sent from (RFC 5944 4.6).  The probe leaves
            # from this link's own address like any other; only the home agent's
            # authenticated answer makes it home (_claim_home).
            self.client.deregister_care_of(ev.address.ip, now)
        else:
            self.client.register(ev.address.ip, now)
            if self.use_foreign_agents:
                self._actions.append(Solicit(ev.iface))
        # RFC 5266 3.4.2 step 1: the IKE side at the same moment as the direct probe.
        if self.vpn.up and not in_mc and self._want_vpn:
            self.vpn.register_at = now + MOBIKE_WAIT  # or as soon as MOBIKE moved it
        else:
            self._start_vpn()

    def _reprobe(self, now: float) -> None:
        if self._link is not None:  # same link, maybe stale binding: probe again
            link = self._link
            self._link_up(LinkUp(link.iface, link.address, link.gateway), now)

    def _policy(self, policy: Policy, now: float) -> None:
        if policy is self.policy:
            return
        before, self.policy = self.policy, policy
        trusted = self.phase is State.TRUSTED
        if policy is Policy.NEVER_VPN:
            if self.mode is Mode.VPN:
                self._leave(State.UNTRUSTED, NEVER_VPN_REASON)
            elif self.phase is State.UNTRUSTED:
                self._enter(State.UNTRUSTED, Mode.NONE, NEVER_VPN_REASON)
            self._stop_vpn("the policy is never-vpn")
            if trusted or before is not Policy.ALWAYS_VPN:
                # Trusted needs no VPN; under auto the direct probe has answered or is
                # still going: nothing to decide again.  Only always-vpn had none.
                return
        elif policy is Policy.AUTO and trusted:
            return  # already what the RFC would choose here
        elif policy is Policy.ALWAYS_VPN and self.mode is Mode.VPN:
            self.client.cancel()  # mc stays; no direct probe may take it away
            return
        self._reprobe(now)

    @property
    def _waiting_for_vpn(self) -> bool:
        """Untrusted (or always-vpn), no mc yet: what the VPN does is the status."""
        return self.mode is not Mode.VPN and self.policy is not Policy.NEVER_VPN and (
            self.phase is State.UNTRUSTED or (
                self.policy is Policy.ALWAYS_VPN and self.phase is State.PROBING))

    @property
    def _vpn_configured(self) -> bool:
        return self.vpn_client is not None

    @property
    def _want_vpn(self) -> bool:
        return (self.vpn_client is not None and self.policy is not Policy.NEVER_VPN
                and self.vpn.service_ok and self._link is not None)

    def _start_vpn(self) -> None:
        v = self.vpn
        link = self._link
        if not self._want_vpn or link is None or v.starting or v.up:
            return
        if self.phase is State.TRUSTED and not self.keep_alive_inside and (
                self.policy is not Policy.ALWAYS_VPN):
            return
        v.starting = True
        v.retry_at = None
        self._actions.append(StartVpn(link.iface))

    def _stop_vpn(self, reason: str) -> None:
        v = self.vpn
        if self.vpn_client is not None:
            self.vpn_client.cancel()
        v.register_at = v.retry_at = None
        if v.starting or v.up:
            self._drop_tia()
            self._actions.append(StopVpn(reason))

    def _drop_tia(self) -> None:
        v = self.vpn
        self._actions.append(DropTia(v.tia))
        v.starting, v.tia, v.gateway, v.ike_id = False, None, "", None

    def _retry_vpn_later(self, now: float) -> None:
        v = self.vpn
        v.retry_at = now + v.retry_delay
        v.retry_delay = min(v.retry_delay * 2, VPN_RETRY_MAX)

    def _register_through_vpn(self, now: float, *, again: bool = False) -> None:
        """``again``: a new TIA or gateway, registered even where mc holds."""
        v = self.vpn
        t = self.vpn_client
        trusted = self.phase is State.TRUSTED and self.policy is not Policy.ALWAYS_VPN
        if t is None or v.tia is None or not self._want_vpn or trusted:
            return
        v.register_at = None
        if t.pending and t.binding is None and not again:
            return  # one is out already; its own timers resend it
        if not again and self.mode is Mode.VPN and t.binding is not None and (
                t.binding.care_of_address == v.tia):
            return  # MOBIKE only (RFC 5266 3.3): the home agent keeps its binding
        t.register(v.tia, now)

    # -- the VPN's events (charon's, through the driver) ---------------------------

    def _on_vpn_ready(self, ev: VpnReady, now: float) -> None:
        v = self.vpn
        if ev.ike_id is not None and v.up and (ev.ike_id, ev.tia) == (v.ike_id, v.tia):
            return  # the same SA reported again (initiate's answer and the event)
        v.ike_id = ev.ike_id
        self._actions.append(UseTia(ev.tia, ev.gateway, ev.gateway_address, ev.ike_id,
                                    ev.nat_detected, ev.local, ev.remote))
        v.starting, v.retry_delay = False, VPN_RETRY_MIN
        # RFC 5266 3.3: a new TIA or another gateway is a new registration.
        new_tia = v.tia != ev.tia or v.gateway != ev.gateway
        v.tia, v.gateway = ev.tia, ev.gateway
        if self.policy is Policy.NEVER_VPN or self.vpn_client is None:
            self._stop_vpn("the policy is never-vpn")  # came up from an older start
        elif self.phase is State.TRUSTED and self.policy is not Policy.ALWAYS_VPN:
            if not self.keep_alive_inside:  # RFC 5266 3.4.2: no longer needed
                self._stop_vpn("the network is trusted")
        elif self.mode is not Mode.VPN or new_tia:  # (else: MOBIKE kept mc's SA)
            self._register_through_vpn(now, again=new_tia)

    def _on_vpn_moved(self, now: float) -> None:
        if self.vpn.up and self.vpn.register_at is not None:
            self._register_through_vpn(now)  # RFC 5266 3.3: the SA kept, now moved

    def _on_vpn_rekeyed(self, ev: VpnRekeyed) -> None:
        v = self.vpn
        if v.ike_id is not None and v.ike_id == ev.old_ike_id:
            v.ike_id = ev.new_ike_id

    def _on_vpn_lost(self, ev: VpnLost, now: float) -> None:
        v = self.vpn
        if ev.ike_id is not None and v.ike_id is not None and ev.ike_id != v.ike_id:
            return  # an SA we no longer use (rekeyed, or an older attempt)
        was_up = v.up
        self._drop_tia()
        v.register_at = None
        if self.vpn_client is not None:
            self.vpn_client.cancel()
        if self.mode is Mode.VPN:  # a kill switch: shut, say why
            self._leave(State.UNTRUSTED, f"the VPN went down: {ev.reason}")
        elif self._waiting_for_vpn and not was_up:
            self._enter(State.UNTRUSTED, Mode.NONE, f"the VPN did not come up: {ev.reason}")
        if self._want_vpn and self.phase is not State.TRUSTED:
            self._retry_vpn_later(now)

    def _on_vpn_service_lost(self, ev: VpnServiceLost) -> None:
        v = self.vpn
        v.service_ok, v.service_error = False, ev.message
        self._drop_tia()
        v.register_at = v.retry_at = None
        if self.vpn_client is not None:
            self.vpn_client.cancel()
        if self.mode is Mode.VPN:
            self._leave(State.UNTRUSTED, ev.message)  # a kill switch: shut, say why
        elif self._waiting_for_vpn:
            self._enter(State.UNTRUSTED, Mode.NONE, ev.message)

    def _on_vpn_service_back(self) -> None:
        v = self.vpn
        gone, v.service_ok, v.service_error = v.service_error, True, None
        if self.phase is State.UNTRUSTED and gone is not None and self.error == gone:
            self._enter(State.UNTRUSTED, Mode.NONE, None)
        self._start_vpn()

    def _advert(self, ev: AgentAdvert, now: float) -> None:
        link = self._link
        if link is None or ev.iface != link.iface:
            return
        link.fa = ev
        # RFC 5266 3.1.3: an FA care-of address only once the network proved trusted.
        # Periodic adverts repeat: one attempt per link, none after the FA failed us.
        if self.use_foreign_agents and self.phase is State.TRUSTED and (
                self.mode is Mode.COLOCATED) and not self._via_fa and not link.fa_failed:
            self._open(link)  # the FA's registration port, on this proven link only
            self._register_via_fa(link, now)

    def _register_via_fa(self, link: _Link, now: float) -> None:
        assert link.fa is not None
        if link.fa.busy:  # B: no new registration through it until it advertises again
            return
        self._via_fa = True
        self.client.register(link.fa.care_of_address, now, via=link.fa.address,
                             lifetime=link.fa.registration_lifetime)

    def _drain(self, now: float) -> None:
        # Events can start new registrations (c -> f): drain until quiet.
        while True:
            link = self._link
            iface = link.iface if link else ""
            sent = list(self.client.datagrams_to_send())
            for d in sent:
                self._actions.append(Send(iface, d))
            if self.vpn_client is not None:
                through = self.vpn_client.datagrams_to_send()
                for d in through:
                    self._actions.append(Send(iface, d, through_vpn=True))
                sent += through
            seen = self._events(now)
            seen = self._vpn_client_events(now) or seen
            if not seen and not sent:
                return

    def _direct_won(self, now: float) -> bool:
        """A direct reply makes the network trusted: the path through the VPN ends.
        True if a request through the VPN left after the one answered, so the home
        agent may bind the TIA after this: then register directly once more."""
        t = self.vpn_client
        if t is None or self.policy is Policy.ALWAYS_VPN:
            return False
        answered = self.client.accepted_sent_at
        # Whatever became of it since (answered, cancelled with the VPN), a request
        # that left after the answered one may still reach the home agent after it.
        later = t.last_sent_at is not None and answered is not None and (
            t.last_sent_at >= answered)
        t.cancel()
        self.vpn.register_at = None
        if not self.keep_alive_inside:
            self._stop_vpn("the network is trusted")
        return later

    # -- the registrations' outcomes: one handler per event ----------------------------

    def _events(self, now: float) -> bool:
        """The direct client's outcomes, in order; True if there were any."""
        seen = False
        while (ev := self.client.next_event()) is not None:
            seen = True
            match ev:
                case Registered():
                    self._on_registered(ev, now)
                case Deregistered():
                    self._on_deregistered(now)
                case TimedOut():
                    self._on_timed_out(ev, now)
                case Denied():
                    self._on_denied(ev, now)
                case BindingLost():
                    self._on_binding_lost()
        return seen

    def _on_registered(self, ev: Registered, now: float) -> None:
        link = self._link
        if link is None or link.lost:
            return  # no link to open (RFC 5266 3.4: only the link that was answered)
        # The mode is what the home agent bound, not what we meant to ask: a late
        # renewal of an older binding must not open this link.
        if ev.care_of_address == link.address.ip:
            mode = Mode.COLOCATED  # RFC 5266 3.1.2: trusted, co-located care-of address
        elif link.fa is not None and ev.care_of_address == link.fa.care_of_address:
            mode = Mode.FOREIGN_AGENT  # RFC 5266 3.1.3: trusted, through the FA
        else:
            self._actions.append(Note("stale-binding",
                                      f"the home agent bound {ev.care_of_address}, "
                                      "not an address of this link"))
            return
        first = self.phase is not State.TRUSTED or self.mode is not mode
        again = self._direct_won(now)  # RFC 5266 3.4: a direct answer means trusted
        self._enter(State.TRUSTED, mode, None)
        if first:
            fa = ev.care_of_address if mode is Mode.FOREIGN_AGENT else None
            udp = ev.udp_tunnel and mode is Mode.COLOCATED  # RFC 3519: mode c only
            self._actions.append(ConfigureDataPlane(
                mode, link.iface, foreign_agent=fa, udp_tunnel=udp,
                keepalive_s=(ev.keepalive_interval or DEFAULT_KEEPALIVE) if udp else 0))
            self.configured = mode
        if again:
            # A request through the VPN may reach the home agent after the one
            # answered: ours must be the last it sees (mode shown == binding).
            self._actions.append(Note("direct-again", "registering directly once "
                                                      "more after the VPN's request"))
            self.client.reregister(now)  # (the FA's turn comes with its advert)
        elif (mode is Mode.COLOCATED and link.fa is not None
                and self.use_foreign_agents and not link.fa_failed):
            self._register_via_fa(link, now)  # RFC 5266 3.1.3: c, then f through the FA
        self._open(link)

    def _on_deregistered(self, now: float) -> None:
        link = self._link
        if link is None or link.lost:
            return
        if link.home_prefix and not link.claimed and not link.home_failed:
            # RFC 5266 3.1.1: the probe from this home-prefix link was answered: the
            # home link; RFC 5944 4.6's claim, then the deregistration from home.
            self._claim_home(link, now)
        elif link.claimed:
            # RFC 5944 2.4.3: the deregistration from the home address answered: mode h.
            if self._direct_won(now):
                self._actions.append(Note("direct-again", "deregistering once more "
                                                          "after the VPN's request"))
                self.client.deregister(now, at_home=True)
            self._enter(State.TRUSTED, Mode.HOME, None)
            self._actions.append(ConfigureDataPlane(Mode.HOME, link.iface))
            self.configured, self.home_claimed = Mode.HOME, None
            self._open(link)
        else:
            self._leave(OUTCOME_LEAVES_TO[Deregistered], None)  # shutting down

    def _on_timed_out(self, ev: TimedOut, now: float) -> None:
        # Replies that did not authenticate were discarded (RFC 5944 3.6.2.1 b): they
        # change nothing, this is the outcome of any timeout.  Anyone who saw the
        # request in clear can echo it, so they only earn a history line.
        hint = _discarded_hint(ev.discarded)
        if hint:
            self._actions.append(Note("replies-discarded", hint))
        link = self._link
        here = link is not None and not link.lost
        trusted = self.phase is State.TRUSTED
        if link is not None and here and link.claimed:
            # RFC 5266 3.1.1: trusted (the probe was answered) but the home agent did
            # not answer from the home address: not its home link after all (a network
            # reusing the prefix).  A co-located registration from here: mode c.
            self._unclaim_home(link)
            self._actions.append(Note("home-timeout", "no reply to the deregistration "
                                                      "from the home address; "
                                                      "registering from this link"))
            self.client.register(link.address.ip, now)
        elif link is not None and trusted and self._via_fa:
            # RFC 5944 3.6.3: the FA failed us: back to a direct registration (mode c)
            # while the binding through the FA still stands.
            self._via_fa = False
            link.fa_failed = True
            self._actions.append(Note("fa-timeout", "no reply through the foreign "
                                                    "agent; registering directly"))
            self.client.register(link.address.ip, now)
        elif here and trusted and (b := self.client.binding) is not None:
            # RFC 5944 3.6.3: a renewal went unanswered but the binding still stands:
            # keep the path and keep asking until it runs out (then BindingLost).
            self._actions.append(Note("renewal-timeout",
                                      "the home agent did not answer the renewal; "
                                      "trying again until the binding runs out"))
            self.client.register(b.care_of_address, now)
        elif here and trusted:
            self._leave(State.UNTRUSTED, BINDING_RAN_OUT)  # ran out this same step
        elif self.mode is Mode.VPN:
            # RFC 5266 3.4: no direct answer: untrusted, and mc carries on.
            self._actions.append(Note("direct-timeout", "no direct reply: the network "
                                                        "is untrusted, staying in mc"))
        elif link is not None and self.phase is not State.UNTRUSTED:
            # RFC 5266 3.4: no direct answer: untrusted; the gate stays shut.
            reason = self._untrusted_reason()
            if reason is None and self.vpn_client is None:
                reason = hint or None  # nothing else to say: the history's hint
            self._leave(State.UNTRUSTED, reason)

    def _on_denied(self, ev: Denied, now: float) -> None:
        link = self._link
        if link is not None and self._via_fa and self.phase is State.TRUSTED:
            # RFC 5944 3.6.2.3: the FA path was refused but the co-located binding still
            # stands: stay in mode c (renewed directly) rather than cut the user off.
            self._via_fa = False
            link.fa_failed = True
            self._actions.append(Note("fa-denied", ev.text + "; staying in mode c"))
            self.client.register(link.address.ip, now)
        else:
            # RFC 5944 3.6.2.3: the home agent refused: an error that says why.
            self._leave(OUTCOME_LEAVES_TO[Denied], ev.text)

    def _on_binding_lost(self) -> None:
        # RFC 5944 3.6.2.2: the lifetime ran out with no renewal accepted.
        self._leave(OUTCOME_LEAVES_TO[BindingLost], BINDING_RAN_OUT)

    def _claim_home(self, link: _Link, now: float) -> None:
        """RFC 5944 4.6, returning home, in its order: ARP for the home address is
        answered again, the gratuitous ARP, then the deregistration (2.4.3).  Only
        after the home agent's authenticated answer from this home-prefix link."""
        link.claimed = True
        self.home_probe = self.home_claimed = link.iface
        self._actions.append(Gate(self.open_path, home_probe=link.iface))
        self._actions.append(ClaimHome(link.iface))
        self.client.deregister(now, at_home=True)

    def _unclaim_home(self, link: _Link) -> None:
        """The claim failed on a link still up: ARP for the home address shut again,
        the address off the link (mc's back on its tunnel device)."""
        link.claimed, link.home_failed = False, True
        if self.home_probe is not None:
            self.home_probe = None
            self._actions.append(Gate(self.open_path))
        if self._withdraw_home():
            self._actions.append(ConfigureDataPlane(Mode.VPN, link.iface, tia=self.configured_tia))

    def _untrusted_reason(self) -> str | None:
        if self.vpn_client is None:
            return None  # no VPN in the profile: untrusted says it all
        if self.policy is Policy.NEVER_VPN:
            return NEVER_VPN_REASON
        return self.vpn.service_error

    def _vpn_client_events(self, now: float) -> bool:
        """The outcomes of the registrations through the VPN (mode mc)."""
        t = self.vpn_client
        if t is None:
            return False
        seen = False
        while (ev := t.next_event()) is not None:
            seen = True
            match ev:
                case Registered():
                    self._on_vpn_registered(ev)
                case TimedOut():
                    self._on_vpn_timed_out(t, ev, now)
                case Denied():
                    self._leave(OUTCOME_LEAVES_TO[Denied],
                                f"{ev.text} (registering through the VPN)")
                case Deregistered():
                    if self.mode is Mode.VPN:  # shutting down: mc's binding is gone
                        self._leave(OUTCOME_LEAVES_TO[Deregistered], None)
                case BindingLost():
                    if self.mode is Mode.VPN:
                        self._leave(OUTCOME_LEAVES_TO[BindingLost], BINDING_RAN_OUT)
                    self._register_through_vpn(now)
        return seen

    def _on_vpn_registered(self, ev: Registered) -> None:
        v = self.vpn
        link = self._link
        if ev.care_of_address != v.tia or link is None:
            self._actions.append(Note("stale-binding",
                                      f"the home agent bound {ev.care_of_address} "
                                      "through the VPN, not its current address"))
            return
        # RFC 5266 3.4: the TIA registered through the VPN: mode mc.
        if self.mode is not Mode.VPN:
            # The binding through the VPN replaced the direct one: renewing that
            # would take the home agent away from the tunnel.
            self.client.forget_binding()
        self._enter(State.UNTRUSTED, Mode.VPN, None)
        if self.configured is not Mode.VPN or self.configured_tia != v.tia:
            self._actions.append(ConfigureDataPlane(Mode.VPN, link.iface, tia=v.tia))
            self.configured, self.configured_tia = Mode.VPN, v.tia
        self._open(link)

    def _on_vpn_timed_out(self, t: RegistrationClient, ev: TimedOut, now: float) -> None:
        if hint := _discarded_hint(ev.discarded):  # through the VPN: no effect either
            self._actions.append(Note("replies-discarded", hint + " (through the VPN)"))
        if self.mode is Mode.VPN and t.binding is not None:
            self._actions.append(Note("renewal-timeout",
                                      "the home agent did not answer the renewal "
                                      "through the VPN; trying again"))
            t.register(t.binding.care_of_address, now)
        elif self.vpn.tia is not None and self._want_vpn:
            self._actions.append(Note("vpn-registration-timeout",
                                      "no reply through the VPN from the home "
                                      "agent; trying again"))
            t.register(self.vpn.tia, now)

    # -- the gate and the paths --------------------------------------------------

    def _open(self, link: _Link) -> None:
        """Open the gate on the path just configured (after ConfigureDataPlane)."""
        if self.mode is Mode.VPN:
            # The TIA the data plane was configured with (and the home agent bound): a
            # new one from charon opens nothing until it is registered too.
            path = ProvenPath(link.iface, link.address.ip, Mode.VPN, None, self.configured_tia)
        else:
            fa = link.fa.address if (
                link.fa is not None and self.use_foreign_agents and not link.fa_failed) else (
                None)
            path = ProvenPath(link.iface, link.address.ip, self.mode, fa)
        if path != self.open_path:
            self.open_path, self.home_probe = path, None
            self._actions.append(Gate(path))

    def _shut(self) -> None:
        if self.open_path is not None or self.home_probe is not None:
            self.open_path = self.home_probe = None
            self._actions.append(Gate(None))

    def _withdraw_home(self) -> bool:
        """Mode h's paths go as soon as the home link may be gone (the gate is shut
        already): its on-link home prefix would send the next probe for the home
        agent to the new link's ARP, and its address would be answered for there.
        So does the home address a claim put on a link.  True when mc holds and a
        claim had moved its home address off the tunnel device: the caller puts it
        back (ConfigureDataPlane(VPN))."""
        claimed, self.home_claimed = self.home_claimed, None
        if self.configured is Mode.HOME or (claimed is not None
                                            and self.configured is Mode.NONE):
            self.configured = Mode.NONE
            self._actions.append(ConfigureDataPlane(Mode.NONE, None))
        return claimed is not None and self.configured is Mode.VPN

    def _leave(self, phase: State, error: str | None) -> None:
        """Into untrusted, error or offline: shut first, then withdraw the paths."""
        self._shut()
        self._via_fa = False
        self._enter(phase, Mode.NONE, error)
        if self.configured is not Mode.NONE or self.home_claimed is not None:
            self.configured, self.configured_tia, self.home_claimed = Mode.NONE, None, None
            self._actions.append(ConfigureDataPlane(Mode.NONE, None))
        link = self._link
        if phase is State.UNTRUSTED and link is not None and link.claimed and not link.lost:
            # mc ended (the VPN lost, never-vpn) while the home link, already proven,
            # is being claimed: the claim and its deregistration go on.
            self.home_probe = self.home_claimed = link.iface
            self._actions += [Gate(None, home_probe=link.iface), ClaimHome(link.iface)]

    def _enter(self, phase: State, mode: Mode, error: str | None) -> None:
        changed = (phase, mode, error) != (self.phase, self.mode, self.error)
        self.phase, self.mode, self.error = phase, mode, error
        if changed:
            self._status()

    def _status(self) -> None:
        link = self._link
        t = self.vpn_client
        b = t.binding if self.mode is Mode.VPN and t is not None else self.client.binding
        self._reached = self.phase is State.TRUSTED or self.mode is Mode.VPN
        self._actions.append(Status(self.phase, self.mode, link.iface if link else None,
                                    b.care_of_address if b else None, self.error,
                                    self.last_handover_ms))

    def _handover_starts(self, now: float) -> None:
        self._handover_from, self._handover_via_fa = now, None

    def _handover(self, now: float) -> None:
        """At the end of a step: did the handover under way end in it?"""
        if self._reached and self._handover_from is not None:
            ms = round((now - self._handover_from) * 1000, 2)
            self._reached = False
            if self.registering_via_fa:
                self._handover_via_fa = ms  # mode f may follow: that is its end
            else:
                self._handover_ended(ms)
        elif self._handover_via_fa is not None and not self.registering_via_fa:
            self._handover_ended(self._handover_via_fa)  # the FA failed us: mode c

    def _handover_ended(self, ms: float) -> None:
        self._handover_from = self._handover_via_fa = None
        self.last_handover_ms = ms
        # The step's last Status (the mode reached) carries it; if the mode did not
        # change in this step (mode c kept after the FA failed), a Status of its own.
        for i in range(len(self._actions) - 1, -1, -1):
            a = self._actions[i]
            if isinstance(a, Status):
                self._actions[i] = replace(a, handover_ms=ms, handover=True)
                return
        self._status()
        self._reached = False
        last = self._actions[-1]
        assert isinstance(last, Status)
        self._actions[-1] = replace(last, handover=True)

    def _take(self, now: float) -> list[Action]:
        self._handover(now)
        if self._stopping and not self.bound:
            self._stopping = False
            self._actions.append(Stopped())
        out, self._actions = self._actions, []
        return out
