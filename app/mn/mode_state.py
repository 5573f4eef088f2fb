"""What the parts of the access-mode machine share: the decided path, sans-I/O.

``app.mn.access_mode`` is the machine (its module docstring says what it decides);
``app.mn.mode_vpn`` is its VPN side.  Both read and change one :class:`ModeState`:
the phase, mode and error shown, the link, the gate and the data plane as the
last actions left them, the actions of the step under way, and the handover
clock.  Composition, not mixins: the state is one object handed to each part
explicitly, so what a part may touch is what it is given, and each part is
tested through the machine (``tests/unit/test_access_mode.py``, ``test_mode_mc.py``,
``test_gate_machine.py``) without a class hierarchy to read through.

The gate is keyed to the decision: ``Gate(path)`` opens exactly the proven path
(interface, care-of address, mode) and ``Gate(None)`` shuts it.  Every way out of
a registered path shuts the gate before the mode's routes are withdrawn
(``ConfigureDataPlane(NONE)``), and a trusted path is configured before the gate
opens on it (:meth:`ModeState.open`, :meth:`ModeState.leave`).  The home link's
claim (RFC 5944 4.6) and its undoing are here too: they move the same gate and
data plane.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface

from app.api import Mode, Policy, State
from app.mn.known_networks import KnownNetworks, KnownNetworksConfig
from app.mn.mode_events import Action, AgentAdvert, ClaimHome, ConfigureDataPlane, Gate, Status
from app.mn.registration import BindingLost, Denied, Deregistered, RegistrationClient
from app.net.gate_rules import ProvenPath

NEVER_VPN_REASON = "untrusted network: the policy is never-vpn, so nothing leaves"
BINDING_RAN_OUT = ("the home agent stopped answering: the binding ran out with no renewal "
                   "accepted")

HA_UNREACHABLE = ("the VPN is up but the home agent does not answer through it: "
                  "nothing leaves until it does")
"""The home agent down (or unreachable behind the gateway) while the VPN stands: not
an error of ours, the gate stays shut, and the registration through the VPN keeps
asking so mc comes back by itself."""

OUTCOME_LEAVES_TO = {
    Deregistered: State.OFFLINE,   # no binding left: shutting down
    Denied: State.ERROR,           # RFC 5944 3.6.2.3: refused; the error says why
    BindingLost: State.UNTRUSTED,  # RFC 5944 3.6.2.2: the lifetime ran out unrenewed
}
"""Where a registration's outcome leaves the path, when it ends it (an h11-style
table: the next phase, with mode none and the gate shut, ``ModeState.leave``)."""


def discarded_hint(n: int) -> str:
    """A history line for ``n`` replies discarded unauthenticated (empty for none)."""
    if n == 0:
        return ""
    return (f"{n} {'reply' if n == 1 else 'replies'} without a valid Mobile-Home "
            f"authenticator {'was' if n == 1 else 'were'} discarded (RFC 5944 3.6.2.1): "
            "forged, or this profile's key is not the home agent's")


@dataclass
class Link:
    """The link the machine is deciding on (or decided)."""

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
    network: str | None = None
    """The network's identity (RFC 5266 5: app.mn.known_networks), if known."""
    probe_failed: bool = False
    """The direct probe from this link went unanswered: remembered as untrusted only
    once mc proves the home agent up (a trusted network whose home agent was down or
    whose datagrams were lost must not be skipped for ``recheck_after``)."""
    skipped: bool = False
    """No direct probe here: the network was judged untrusted before (RFC 5266 5)."""


@dataclass
class ModeState:
    """The machine's state, shared by its parts (see the module docstring)."""

    client: RegistrationClient
    vpn_client: RegistrationClient | None
    use_foreign_agents: bool
    policy: Policy
    keep_alive_inside: bool
    phase: State = State.OFFLINE
    mode: Mode = Mode.NONE
    error: str | None = None
    last_handover_ms: float | None = None
    handover_from: float | None = None
    """When the handover under way began (link-up, re-probe, policy change)."""
    handover_via_fa: float | None = None
    """Mode c reached on an FA link while the registration through it is out: its
    time is the handover's if the FA fails us."""
    reached: bool = False
    """A trusted (or mc) Status went out since the last handover ended."""
    link: Link | None = None
    via_fa: bool = False
    open_path: ProvenPath | None = None
    """What the last Gate action opened (None: shut)."""
    home_probe: str | None = None
    """The interface the last Gate action let answer ARP for the home address."""
    home_claimed: str | None = None
    """Where a ClaimHome put the home address that no mode h has taken over yet."""
    configured: Mode = Mode.NONE
    """What the last ConfigureDataPlane action set up."""
    configured_tia: IPv4Address | None = None
    configured_keepalive_s: int = 0
    """mc's RFC 3519 UDP tunnel as configured: its keepalive interval (0: IP-in-IP)."""
    actions: list[Action] = field(default_factory=list)
    """The actions of the step under way, in order."""
    known: KnownNetworks = field(default_factory=lambda: KnownNetworks(KnownNetworksConfig()))
    """Networks judged untrusted before (RFC 5266 5): no direct probe there."""
    to_wall: Callable[[float], float] = field(default=lambda now: now)
    """The machine's monotonic ``now`` as wall-clock time (the verdicts outlive boots)."""

    def judge_network(self, untrusted: bool, now: float) -> None:
        """The link's network was judged: remember (or forget) it, RFC 5266 5."""
        link = self.link
        if link is not None:
            a = self.known.judged(link.network, untrusted, self.to_wall(now))
            if a is not None:
                self.actions.append(a)

    @property
    def registering_via_fa(self) -> bool:
        """A registration through the link's FA is out (mode f may follow)."""
        return self.via_fa and self.mode is not Mode.FOREIGN_AGENT

    # -- the gate and the paths --------------------------------------------------

    def open(self, link: Link) -> None:
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
            self.actions.append(Gate(path))

    def shut(self) -> None:
        if self.open_path is not None or self.home_probe is not None:
            self.open_path = self.home_probe = None
            self.actions.append(Gate(None))

    def withdraw_home(self) -> bool:
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
            self.actions.append(ConfigureDataPlane(Mode.NONE, None))
        return claimed is not None and self.configured is Mode.VPN

    def leave(self, phase: State, error: str | None) -> None:
        """Into untrusted, error or offline: shut first, then withdraw the paths."""
        self.shut()
        self.via_fa = False
        self.enter(phase, Mode.NONE, error)
        if self.configured is not Mode.NONE or self.home_claimed is not None:
            self.configured, self.configured_tia, self.home_claimed = Mode.NONE, None, None
            self.configured_keepalive_s = 0
            self.actions.append(ConfigureDataPlane(Mode.NONE, None))
        link = self.link
        if phase is State.UNTRUSTED and link is not None and link.claimed and not link.lost:
            # mc ended (the VPN lost, never-vpn) while the home link, already proven,
            # is being claimed: the claim and its deregistration go on.
            self.home_probe = self.home_claimed = link.iface
            self.actions += [Gate(None, home_probe=link.iface), ClaimHome(link.iface)]

    # -- the home link (RFC 5266 3.1.1, RFC 5944 4.6) -----------------------------

    def claim_home(self, link: Link, now: float) -> None:
        """RFC 5944 4.6, returning home, in its order: ARP for the home address is
        answered again, the gratuitous ARP, then the deregistration (2.4.3).  Only
        after the home agent's authenticated answer from this home-prefix link."""
        link.claimed = True
        self.home_probe = self.home_claimed = link.iface
        self.actions.append(Gate(self.open_path, home_probe=link.iface))
        self.actions.append(ClaimHome(link.iface))
        self.client.deregister(now, at_home=True)

    def unclaim_home(self, link: Link) -> None:
        """The claim failed on a link still up: ARP for the home address shut again,
        the address off the link (mc's back on its tunnel device)."""
        link.claimed, link.home_failed = False, True
        if self.home_probe is not None:
            self.home_probe = None
            self.actions.append(Gate(self.open_path))
        if self.withdraw_home():
            self.actions.append(self.vpn_plane(link.iface))

    def vpn_plane(self, iface: str) -> ConfigureDataPlane:
        """mc's data plane again as configured, its RFC 3519 UDP tunnel included (the
        home agent keeps UDP-tunnelling: IP-in-IP here would lose its packets)."""
        k = self.configured_keepalive_s
        return ConfigureDataPlane(Mode.VPN, iface, tia=self.configured_tia,
                                  udp_tunnel=k > 0, keepalive_s=k)

    # -- what the user sees: the status and the handover time ------------------------

    def enter(self, phase: State, mode: Mode, error: str | None) -> None:
        changed = (phase, mode, error) != (self.phase, self.mode, self.error)
        self.phase, self.mode, self.error = phase, mode, error
        if changed:
            self.status()

    def status(self) -> None:
        link = self.link
        t = self.vpn_client
        b = t.binding if self.mode is Mode.VPN and t is not None else self.client.binding
        self.reached = self.phase is State.TRUSTED or self.mode is Mode.VPN
        self.actions.append(Status(self.phase, self.mode, link.iface if link else None,
                                   b.care_of_address if b else None, self.error,
                                   self.last_handover_ms))

    def handover_starts(self, now: float) -> None:
        self.handover_from, self.handover_via_fa = now, None

    def take(self, now: float) -> list[Action]:
        """The step's actions, its handover time stamped on them (``Status.handover_ms``:
        link up -> path open; on an FA link, mode f)."""
        link = self.link
        if (link is not None and link.probe_failed and self.phase is State.UNTRUSTED
                and self.mode is Mode.VPN):
            # RFC 5266 5: unanswered directly while the home agent answers through the
            # VPN: this network is untrusted (after the step's own actions: no disk
            # write before the gate opens).
            link.probe_failed = False
            self.judge_network(True, now)
        self._handover(now)
        out, self.actions = self.actions, []
        return out

    def _handover(self, now: float) -> None:
        """At the end of a step: did the handover under way end in it?"""
        if self.reached and self.handover_from is not None:
            ms = round((now - self.handover_from) * 1000, 2)
            self.reached = False
            if self.registering_via_fa:
                self.handover_via_fa = ms  # mode f may follow: that is its end
            else:
                self._handover_ended(ms)
        elif self.handover_via_fa is not None and not self.registering_via_fa:
            self._handover_ended(self.handover_via_fa)  # the FA failed us: mode c

    def _handover_ended(self, ms: float) -> None:
        self.handover_from = self.handover_via_fa = None
        self.last_handover_ms = ms
        # The step's last Status (the mode reached) carries it; if the mode did not
        # change in this step (mode c kept after the FA failed), a Status of its own.
        for i in range(len(self.actions) - 1, -1, -1):
            a = self.actions[i]
            if isinstance(a, Status):
                self.actions[i] = replace(a, handover_ms=ms, handover=True)
                return
        self.status()
        self.reached = False
        last = self.actions[-1]
        assert isinstance(last, Status)
        self.actions[-1] = replace(last, handover=True)
