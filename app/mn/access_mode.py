"""The access-mode machine of RFC 5266 sections 3.1, 3.2 and 3.4 (trusted side), sans-I/O.

On every link change the gate closes and a registration request goes
straight to the home agent from the new address (co-located care-of
address), while the link is solicited for foreign agents.  A valid reply
means trusted: mode ``c``, or ``f`` when an FA advertised on this link (a
second registration, through the FA: only ever on a trusted network), or
``h`` on the home link (deregistration, home address on the interface).  No
reply within the configured retries means untrusted: that is the VPN side's
job (mode ``mc``, next issue); until then the machine reports it and keeps the
gate shut.  Denials and missing addresses are an error state that keeps the
gate shut and says why (Mullvad's tunnel state machine does the same).

The gate is keyed to the decision: ``Gate(path)`` opens exactly the proven
path (interface, care-of address, mode) and ``Gate(None)`` shuts it.  Every
way out of a registered path shuts the gate before the mode's routes are
withdrawn (``ConfigureDataPlane(NONE)``), and a trusted path is configured
before the gate opens on it.  A lost link shuts the gate at once
(``LinkLost``); only reporting the loss as a move waits for the flap hold.

Like the registration client, it takes events with a time and returns actions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from app.api import Mode, State
from app.mip.codes import describe
from app.mn.registration import (
    BindingLost,
    Datagram,
    Denied,
    Deregistered,
    Registered,
    RegistrationClient,
    TimedOut,
)
from app.net.gate_rules import ProvenPath

BINDING_RAN_OUT = ("the home agent stopped answering: the binding ran out with no renewal "
                   "accepted")

# -- events -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LinkUp:
    """An interface has an address (from DHCP, or NetworkManager's IP4Config)."""

    iface: str
    address: IPv4Interface
    gateway: IPv4Address | None


@dataclass(frozen=True, slots=True)
class LinkDown:
    """The link stayed lost for the flap hold: it is gone."""

    iface: str


@dataclass(frozen=True, slots=True)
class LinkLost:
    """Carrier or address gone this instant (it may come back: a flap)."""

    iface: str


@dataclass(frozen=True, slots=True)
class AgentAdvert:
    """A foreign agent advertised on ``iface`` (already decoded and checked)."""

    iface: str
    care_of_address: IPv4Address
    registration_lifetime: int
    agent: IPv4Address | None = None
    """The advertisement's IP source: where registrations go (RFC 5944 3.6.1.1);
    None means the care-of address."""
    busy: bool = False
    """The B bit: the agent takes no new registrations now (RFC 5944 2.1.1)."""

    @property
    def address(self) -> IPv4Address:
        return self.agent or self.care_of_address


@dataclass(frozen=True, slots=True)
class Resumed:
    """The machine woke from suspend: whatever binding exists may be stale."""


@dataclass(frozen=True, slots=True)
class Shutdown:
    pass


# -- actions ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Gate:
    """Open exactly ``path`` to normal traffic; None: undecided, nothing normal leaves.

    Registration, DHCP and solicitation always pass (``app.net.gate_rules``).
    """

    path: ProvenPath | None
    home_probe: str | None = None
    """Undecided, probing this interface as the home link: ARP for the home address
    is answered there (RFC 5944 4.6: before the request when returning home)."""


@dataclass(frozen=True, slots=True)
class PrepareLink:
    """Bind the registration and ICMP sockets to this link and route its own traffic."""

    iface: str
    address: IPv4Interface
    gateway: IPv4Address | None


@dataclass(frozen=True, slots=True)
class Send:
    """A registration message to send, bound to the physical interface (never the VPN)."""

    iface: str
    datagram: Datagram


@dataclass(frozen=True, slots=True)
class Solicit:
    iface: str


@dataclass(frozen=True, slots=True)
class ConfigureDataPlane:
    mode: Mode
    iface: str | None
    care_of_address: IPv4Address | None
    udp_tunnel: bool = False


@dataclass(frozen=True, slots=True)
class Status:
    phase: State
    mode: Mode
    iface: str | None
    care_of_address: IPv4Address | None
    error: str | None
    handover_ms: float | None


@dataclass(frozen=True, slots=True)
class Note:
    """Something for the event history that changes neither phase nor mode."""

    kind: str
    text: str


Action = Gate | PrepareLink | Send | Solicit | ConfigureDataPlane | Status | Note


@dataclass
class _Link:
    iface: str
    address: IPv4Interface
    gateway: IPv4Address | None
    since: float
    fa: AgentAdvert | None = None
    fa_failed: bool = False
    """The FA on this link refused or did not answer: stay in mode c here."""
    lost: bool = False
    """Carrier or address gone: no reply opens the gate until the link is back."""


@dataclass
class AccessModeMachine:
    home_network: IPv4Network
    client: RegistrationClient
    use_foreign_agents: bool = True
    phase: State = State.OFFLINE
    mode: Mode = Mode.NONE
    error: str | None = None
    last_handover_ms: float | None = None
    _link: _Link | None = None
    _via_fa: bool = False
    gate: ProvenPath | None = None
    """What the last Gate action opened (None: shut)."""
    home_probe: str | None = None
    """The interface the last Gate action let answer ARP for the home address."""
    configured: Mode = Mode.NONE
    """What the last ConfigureDataPlane action set up."""
    _actions: list[Action] = field(default_factory=list)

    # -- events in -------------------------------------------------------------

    def handle(self, event: LinkUp | LinkDown | LinkLost | AgentAdvert | Resumed | Shutdown,
               now: float) -> list[Action]:
        if isinstance(event, LinkUp):
            self._link_up(event, now)
        elif isinstance(event, LinkLost):
            link = self._link
            if link is not None and event.iface == link.iface and not link.lost:
                link.lost = True
                self._shut()  # at once: the cable may be in another network already
                self._withdraw_home()
                if self.phase is not State.OFFLINE:
                    self._enter(State.PROBING, Mode.NONE, None)
        elif isinstance(event, LinkDown):
            if self._link is not None and event.iface == self._link.iface:
                self._link = None
                self._leave(State.OFFLINE, None)
        elif isinstance(event, AgentAdvert):
            self._advert(event, now)
        elif isinstance(event, Resumed):
            if self._link is not None:  # same link, maybe stale binding: probe again
                link = self._link
                self._link_up(LinkUp(link.iface, link.address, link.gateway), now)
        elif isinstance(event, Shutdown):
            self.client.deregister(now, at_home=self.mode is Mode.HOME)
        self._drain(now)
        return self._take()

    def receive(self, data: bytes, now: float) -> list[Action]:
        self.client.receive(data, now)
        self._drain(now)
        return self._take()

    def reregister(self, now: float) -> list[Action]:
        """Register the current binding again now (RFC 3519 4.10: the NAT mapping may
        have changed), through the same path as the binding."""
        if self.phase is State.TRUSTED and self.client.reregister(now):
            self._actions.append(Note("nat-rebind", "keepalives went unanswered: "
                                                    "registering again"))
        self._drain(now)
        return self._take()

    def handle_timer(self, now: float) -> list[Action]:
        self.client.handle_timer(now)
        self._drain(now)
        return self._take()

    def get_timer(self) -> float | None:
        return self.client.get_timer()

    @property
    def registering_via_fa(self) -> bool:
        """A registration through the link's FA is out (mode f may follow)."""
        return self._via_fa and self.mode is not Mode.FOREIGN_AGENT

    # -- logic -----------------------------------------------------------------

    def _link_up(self, ev: LinkUp, now: float) -> None:
        self._link = _Link(ev.iface, ev.address, ev.gateway, now)
        self._via_fa = False
        self._shut()  # nothing normal leaves while undecided
        self._withdraw_home()
        if ev.address.ip in self.home_network:
            self.home_probe = ev.iface
            self._actions.append(Gate(None, home_probe=ev.iface))
        self._actions.append(PrepareLink(ev.iface, ev.address, ev.gateway))
        self._enter(State.PROBING, Mode.NONE, None)
        if ev.address.ip in self.home_network:
            # The home link: deregister so the home agent stops proxying us.
            self.client.deregister(now, at_home=True)
        else:
            self.client.register(ev.address.ip, now)
            if self.use_foreign_agents:
                self._actions.append(Solicit(ev.iface))

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
            sent = self.client.datagrams_to_send()
            for d in sent:
                self._actions.append(Send(link.iface if link else "", d))
            if not self._events(now) and not sent:
                return

    def _events(self, now: float) -> bool:
        link = self._link
        seen = False
        while (ev := self.client.next_event()) is not None:
            seen = True
            if isinstance(ev, Registered) and link is not None and not link.lost:
                # The mode is what the home agent bound, not what we meant to ask:
                # a late renewal of an older binding must not open this link.
                if ev.care_of_address == link.address.ip:
                    mode = Mode.COLOCATED
                elif link.fa is not None and ev.care_of_address == link.fa.care_of_address:
                    mode = Mode.FOREIGN_AGENT
                else:
                    self._actions.append(Note("stale-binding",
                                              f"the home agent bound {ev.care_of_address}, "
                                              "not an address of this link"))
                    continue
                first = self.phase is not State.TRUSTED or self.mode is not mode
                self.last_handover_ms = (now - link.since) * 1000 if first else (
                    self.last_handover_ms)
                self._enter(State.TRUSTED, mode, None)
                if first:
                    self._actions.append(ConfigureDataPlane(mode, link.iface,
                                                            ev.care_of_address, ev.udp_tunnel))
                    self.configured = mode
                if (mode is Mode.COLOCATED and link.fa is not None
                        and self.use_foreign_agents and not link.fa_failed):
                    self._register_via_fa(link, now)
                self._open(link)
            elif isinstance(ev, Deregistered) and link is not None:
                if link.address.ip in self.home_network and not link.lost:
                    self.last_handover_ms = (now - link.since) * 1000
                    self._enter(State.TRUSTED, Mode.HOME, None)
                    self._actions.append(ConfigureDataPlane(Mode.HOME, link.iface, None))
                    self.configured = Mode.HOME
                    self._open(link)
                elif not link.lost:
                    self._leave(State.OFFLINE, None)
            elif isinstance(ev, TimedOut) and ev.unverified_code is not None and (
                    not self._via_fa):
                # Not "untrusted": something answered for the home agent but the
                # replies do not authenticate.  Never trust them; say what to check.
                self._leave(State.ERROR,
                            f"the home agent's replies do not authenticate "
                            f"({describe(ev.unverified_code)}): is this profile's key right?")
            elif isinstance(ev, TimedOut):
                if self._via_fa and self.phase is State.TRUSTED and link is not None:
                    # The FA failed us: back to a direct registration (mode c) while
                    # the binding through the FA still stands.
                    self._via_fa = False
                    link.fa_failed = True
                    self._actions.append(Note("fa-timeout", "no reply through the foreign "
                                                            "agent; registering directly"))
                    self.client.register(link.address.ip, now)
                elif (self.phase is State.TRUSTED and link is not None and not link.lost
                      and self.client.binding is not None):
                    # A renewal went unanswered but the binding still stands: keep the
                    # path and keep asking until it runs out (then BindingLost).
                    self._actions.append(Note("renewal-timeout",
                                              "the home agent did not answer the renewal; "
                                              "trying again until the binding runs out"))
                    self.client.register(self.client.binding.care_of_address, now)
                elif self.phase is State.TRUSTED and link is not None and not link.lost:
                    self._leave(State.UNTRUSTED, BINDING_RAN_OUT)  # ran out this same step
                elif link is not None and self.phase is not State.UNTRUSTED:
                    self._leave(State.UNTRUSTED, None)  # (keeps the reason it had)
            elif isinstance(ev, Denied) and self._via_fa and self.phase is State.TRUSTED and (
                    link is not None):
                # The FA path was refused but the co-located binding still stands:
                # stay in mode c (renewed directly) rather than cut the user off.
                self._via_fa = False
                link.fa_failed = True
                self._actions.append(Note("fa-denied", ev.text + "; staying in mode c"))
                self.client.register(link.address.ip, now)
            elif isinstance(ev, Denied):
                self._leave(State.ERROR, ev.text)
            elif isinstance(ev, BindingLost):
                self._leave(State.UNTRUSTED, BINDING_RAN_OUT)
        return seen

    # -- the gate and the paths --------------------------------------------------

    def _open(self, link: _Link) -> None:
        """Open the gate on the path just configured (after ConfigureDataPlane)."""
        fa = link.fa.address if (
            link.fa is not None and self.use_foreign_agents and not link.fa_failed) else None
        path = ProvenPath(link.iface, link.address.ip, self.mode, fa)
        if path != self.gate:
            self.gate, self.home_probe = path, None
            self._actions.append(Gate(path))

    def _shut(self) -> None:
        if self.gate is not None or self.home_probe is not None:
            self.gate = self.home_probe = None
            self._actions.append(Gate(None))

    def _withdraw_home(self) -> None:
        """Mode h's paths go as soon as the home link may be gone (the gate is shut
        already): its on-link home prefix would send the next probe for the home
        agent to the new link's ARP, and its address would be answered for there."""
        if self.configured is Mode.HOME:
            self.configured = Mode.NONE
            self._actions.append(ConfigureDataPlane(Mode.NONE, None, None))

    def _leave(self, phase: State, error: str | None) -> None:
        """Into untrusted, error or offline: shut first, then withdraw the paths."""
        self._shut()
        self._via_fa = False
        self._enter(phase, Mode.NONE, error)
        if self.configured is not Mode.NONE:
            self.configured = Mode.NONE
            self._actions.append(ConfigureDataPlane(Mode.NONE, None, None))

    def _enter(self, phase: State, mode: Mode, error: str | None) -> None:
        changed = (phase, mode, error) != (self.phase, self.mode, self.error)
        self.phase, self.mode, self.error = phase, mode, error
        if changed:
            link = self._link
            self._actions.append(Status(phase, mode, link.iface if link else None,
                                        self.client.binding.care_of_address
                                        if self.client.binding else None,
                                        error, self.last_handover_ms))

    def _take(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out
