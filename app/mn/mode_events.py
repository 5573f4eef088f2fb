"""The access-mode machine's vocabulary: the events it takes and the actions it returns.

Pure data (``app.mn.access_mode`` decides; the driver executes).  Every action
carries what its executor needs, so executing one is a pass-through.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from app.api import Mode, Policy, State
from app.mn.registration import Datagram
from app.net.gate_rules import ProvenPath

# -- events -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LinkUp:
    """An interface has an address (from DHCP, or NetworkManager's IP4Config)."""

    iface: str
    address: IPv4Interface
    gateway: IPv4Address | None
    network: str | None = None
    """The network's identity (app.net.network_identity), when known networks are
    remembered (RFC 5266 5, app.mn.known_networks); None: not asked or not found."""


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
    """The node stops: withdraw the binding of ours that stands (if ``can_send``: a
    socket on the link or the TIA), then say ``Stopped`` once none stands."""

    can_send: bool = True


@dataclass(frozen=True, slots=True)
class VpnNat:
    """charon's NAT detection for IKE SA ``ike_id`` (read again after a move): the
    machine says whether it is the SA in use (``NatDetected``)."""

    ike_id: int
    nat_detected: bool


@dataclass(frozen=True, slots=True)
class VpnReady:
    """The VPN's CHILD SA is up: traffic to the intranet can flow from ``tia``.

    The same (``ike_id``, ``tia``) reported again is nothing new (charon reports an
    SA both as initiate's answer and as its event); None: not known, always new."""

    tia: IPv4Address
    gateway: str
    """The gateway as the profile names it."""
    ike_id: int | None = None
    gateway_address: IPv4Address | None = None
    """The gateway's IPv4 address (its route stays on the physical link)."""
    nat_detected: bool = False
    """charon's NAT-T detection for this SA."""
    local: str = ""
    remote: str = ""
    """The SA's endpoints, for the history only."""


@dataclass(frozen=True, slots=True)
class VpnRekeyed:
    """charon rekeyed the IKE SA: ``new_ike_id`` is the same SA from now on."""

    old_ike_id: int
    new_ike_id: int


@dataclass(frozen=True, slots=True)
class VpnMoved:
    """MOBIKE moved the IKE SA to ``local`` (the TIA stays)."""

    local: IPv4Address | None


@dataclass(frozen=True, slots=True)
class VpnLost:
    """The VPN went down (the SA was deleted, DPD gave up, the gateway refused).

    ``ike_id``: the SA that went; one the machine does not use is history only."""

    reason: str
    ike_id: int | None = None
    gateway_gone: bool = False
    """The IKE SA itself went (DPD gave up, the gateway deleted it, its peer address
    was refused): the next gateway is tried at once.  Not for a CHILD SA alone."""
    gateway: str = ""
    """The gateway of an SA refused before it was in use (the one in use is known)."""


@dataclass(frozen=True, slots=True)
class VpnServiceLost:
    """charon cannot be talked to: the sentence says where it was looked for."""

    message: str


@dataclass(frozen=True, slots=True)
class VpnServiceBack:
    pass


@dataclass(frozen=True, slots=True)
class PolicySet:
    policy: Policy


Event = (LinkUp | LinkDown | LinkLost | AgentAdvert | Resumed | Shutdown | VpnReady | VpnMoved
         | VpnRekeyed | VpnLost | VpnServiceLost | VpnServiceBack | PolicySet | VpnNat)


# -- actions ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Gate:
    """Open exactly ``path`` to normal traffic; None: undecided, nothing normal leaves.

    Registration, DHCP and solicitation always pass (``app.net.gate_rules``).  A
    path in mode h is also where ARP for the home address may go (RFC 5944 4.6);
    any other path ends that (a claim, ``ClaimHome``, lasts until the next
    ``ConfigureDataPlane`` of another mode).
    """

    path: ProvenPath | None
    home_probe: str | None = None
    """The home link, proven by the home agent's answer and being claimed: ARP for
    the home address is answered there and the deregistration may leave from it
    (RFC 5944 4.6: before the request when returning home)."""


@dataclass(frozen=True, slots=True)
class ClaimHome:
    """The link answered as the home link: put the home address on ``iface`` and send
    the gratuitous ARP for it now, before the deregistration that follows (RFC 5944
    4.6 when returning home).  Never before the home agent's authenticated answer."""

    iface: str


@dataclass(frozen=True, slots=True)
class PrepareLink:
    """Bind the registration and ICMP sockets to this link and route its own traffic."""

    iface: str
    address: IPv4Interface
    gateway: IPv4Address | None
    mc_holds: bool = False
    """Mode mc stays over the move: the care-of address shown stays the TIA."""


@dataclass(frozen=True, slots=True)
class Send:
    """A registration message to send: bound to the physical interface (the direct
    probe, never the VPN), or from the TIA through the VPN (``through_vpn``)."""

    iface: str
    datagram: Datagram
    through_vpn: bool = False


@dataclass(frozen=True, slots=True)
class StartVpn:
    """Bring the VPN up from this link (an IKE SA that exists moves by MOBIKE),
    trying ``gateways`` in this order (empty: the profile's)."""

    iface: str
    gateways: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StopVpn:
    reason: str


@dataclass(frozen=True, slots=True)
class UseTia:
    """A new VPN SA (or TIA) is the one in use: its address is charon's (never the
    link's), registrations leave from it through the VPN (its socket and source
    route, before any ``Send`` through the VPN), the gateway's route stays on the
    physical link; publish it.  Never twice for the same SA."""

    tia: IPv4Address
    gateway: str
    gateway_address: IPv4Address | None = None
    ike_id: int | None = None
    nat_detected: bool = False
    local: str = ""
    remote: str = ""


@dataclass(frozen=True, slots=True)
class RememberGateway:
    """``gateway`` brought mode mc up on ``network`` (``app.mn.gateway_order``'s key):
    try it first there next time, after a restart too."""

    network: str
    gateway: str


@dataclass(frozen=True, slots=True)
class DropTia:
    """The VPN's SA is no longer ours: its TIA's socket, source route and status go
    (``tia`` None: it was still starting)."""

    tia: IPv4Address | None


@dataclass(frozen=True, slots=True)
class Solicit:
    iface: str


@dataclass(frozen=True, slots=True)
class ConfigureDataPlane:
    """Set up ``mode``'s routes and tunnel (``app.net.mn_routes``), or withdraw them
    (NONE).  A mode other than h also ends a claim of the home link (the home
    address leaves the link): no ARP for the home address from then on."""

    mode: Mode
    iface: str | None
    foreign_agent: IPv4Address | None = None
    """Mode f: the foreign agent's care-of address (the tunnel's far end)."""
    tia: IPv4Address | None = None
    """Mode mc: the TIA, the tunnel's outer source through the VPN."""
    udp_tunnel: bool = False
    """The binding's registration socket carries the RFC 3519 tunnel: the link's in
    mode c, the TIA's in mc (RFC 5266 4)."""
    keepalive_s: int = 0
    """With ``udp_tunnel``: the RFC 3519 4.9 keepalive interval (the home agent's, or
    ``DEFAULT_KEEPALIVE``)."""


@dataclass(frozen=True, slots=True)
class Status:
    """What to publish: the phase and mode, and the last handover's time."""

    phase: State
    mode: Mode
    iface: str | None
    care_of_address: IPv4Address | None
    error: str | None
    handover_ms: float | None
    """The last handover, in ms: from the link-up (or a re-probe, or a policy change)
    until the new path was configured and open; on a link with a foreign agent until
    mode f, or mode c if the FA failed or refused."""
    handover: bool = False
    """A handover ended in this step: ``handover_ms`` is its time (one history entry)."""


@dataclass(frozen=True, slots=True)
class Note:
    """Something for the event history that changes neither phase nor mode."""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class NatDetected:
    """The VPN's NAT (IPsec NAT-T) as charon detected it for the SA in use."""

    nat_detected: bool


@dataclass(frozen=True, slots=True)
class Stopped:
    """After ``Shutdown``: no binding of ours stands any more (once)."""


@dataclass(frozen=True, slots=True)
class RememberNetwork:
    """Keep (or, ``untrusted`` False, forget) a network's verdict (RFC 5266 5)."""

    network: str
    untrusted: bool
    at: float
    """Wall-clock time of the verdict."""


Action = (Gate | PrepareLink | ClaimHome | Send | Solicit | ConfigureDataPlane | Status | Note
          | StartVpn | StopVpn | UseTia | DropTia | NatDetected | Stopped | RememberNetwork
          | RememberGateway)
