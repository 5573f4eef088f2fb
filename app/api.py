"""Names and types shared by the helper, the tray and trustroamctl (docs/ARCHITECTURE.md section 5).

Nothing here does I/O: the D-Bus names, the enums the properties carry as
strings, and the status snapshot with its conversion to and from the D-Bus
property dictionary, so both ends agree on one spelling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

BUS_NAME = "org.trustroam.Helper1"
OBJECT_PATH = "/org/trustroam/Helper1"
INTERFACE = "org.trustroam.Helper1"
SECRET_AGENT_INTERFACE = "org.trustroam.SecretAgent1"  # noqa: S105 (a name, not a secret)

ACTION_CONNECT = "org.trustroam.connect"
"""Connect, Disconnect, Reprobe, SetPolicy: allowed for the active local user (every
policy keeps traffic protected, so choosing one is a user's action)."""
ACTION_CONFIGURE = "org.trustroam.configure"
"""SaveProfile, ReleaseGate: administrator, remembered for a while."""

ERROR_NOT_AUTHORIZED = "org.trustroam.Error.NotAuthorized"
ERROR_INVALID = "org.trustroam.Error.InvalidArgument"
ERROR_FAILED = "org.trustroam.Error.Failed"

SECRET_MN_HA_KEY = "mn_ha_key"  # noqa: S105 (the key's name)
"""The Mobile-Home security association's key, as ``hex:...``."""


class State(Enum):
    OFFLINE = "offline"
    PROBING = "probing"
    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"
    ERROR = "error"


class Mode(Enum):
    NONE = "none"
    HOME = "h"
    COLOCATED = "c"
    FOREIGN_AGENT = "f"
    VPN = "mc"


class Policy(Enum):
    AUTO = "auto"
    ALWAYS_VPN = "always-vpn"
    NEVER_VPN = "never-vpn"


@dataclass(frozen=True, slots=True)
class Probe:
    """One reachability probe (the home agent's, or the VPN gateway's)."""

    reachable: bool = False
    rtt_ms: float = -1.0
    """Round trip of the last answered probe; -1 before the first answer."""
    answered_at: float = 0.0
    """Unix time of the last answer; 0 before the first."""

    def to_dbus(self) -> tuple[bool, float, float]:
        return (self.reachable, self.rtt_ms, self.answered_at)

    @classmethod
    def from_dbus(cls, value: list[object] | tuple[object, ...]) -> Probe:
        reachable, rtt, at = value
        return cls(bool(reachable), float(rtt), float(at))  # type: ignore[arg-type]


NAT_IPSEC = "ipsec"
"""IPsec NAT-T (RFC 3947, charon's detection) found a NAT between this node and
the VPN gateway (mode mc's outer path)."""
NAT_MOBILE_IP = "mobile-ip"
"""The home agent UDP-tunnels the binding in use (RFC 3519): the care-of address
was translated on its way to it; in mode mc, the TIA (the gateway NATs its pool:
Mobile IP NAT traversal inside IPsec NAT-T, RFC 5266 4)."""
NAT_LAYERS = (NAT_IPSEC, NAT_MOBILE_IP)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the helper publishes as properties."""

    state: State = State.OFFLINE
    mode: Mode = Mode.NONE
    profile: str = ""
    interface: str = ""
    home_address: str = ""
    care_of_address: str = ""
    tunnel_inner_address: str = ""
    home_agent_probe: Probe = field(default_factory=Probe)
    vpn_probe: Probe = field(default_factory=Probe)
    nat_detected: bool = False
    """A NAT on the path: some layer of ``nat_layers`` found one."""
    binding_expires: float = 0.0
    """Unix time the binding runs out; 0 without a binding."""
    last_handover_ms: float = -1.0
    error: str = ""
    policy: Policy = Policy.AUTO
    vpn_gateway: str = ""
    """The VPN gateway in use, as the profile names it; "" without a VPN."""
    captive_portal: str = ""
    """A captive portal found on the link (its sign-in address); "" for none."""
    nat_layers: tuple[str, ...] = ()
    """Which layers found a NAT (RFC 5266 4), of :data:`NAT_LAYERS` in that order."""

    def to_dbus(self) -> dict[str, object]:
        """Property name -> plain value in its D-Bus signature's Python form."""
        return {
            "State": self.state.value, "Mode": self.mode.value, "Profile": self.profile,
            "Interface": self.interface, "HomeAddress": self.home_address,
            "CareOfAddress": self.care_of_address,
            "TunnelInnerAddress": self.tunnel_inner_address,
            "HomeAgentProbe": list(self.home_agent_probe.to_dbus()),
            "VpnProbe": list(self.vpn_probe.to_dbus()), "VpnGateway": self.vpn_gateway,
            "NatDetected": self.nat_detected, "BindingExpires": self.binding_expires,
            "LastHandoverMs": self.last_handover_ms, "Error": self.error,
            "Policy": self.policy.value, "CaptivePortal": self.captive_portal,
            "NatLayers": list(self.nat_layers),
        }

    @classmethod
    def from_dbus(cls, props: dict[str, object]) -> Snapshot:
        def s(name: str) -> str:
            return str(props.get(name, ""))

        def f(name: str, default: float) -> float:
            v = props.get(name, default)
            return float(v) if isinstance(v, int | float) else default

        def probe(name: str) -> Probe:
            v = props.get(name)
            return Probe.from_dbus(v) if isinstance(v, list | tuple) and len(v) == 3 else Probe()

        return cls(State(s("State") or "offline"), Mode(s("Mode") or "none"), s("Profile"),
                   s("Interface"), s("HomeAddress"), s("CareOfAddress"),
                   s("TunnelInnerAddress"), probe("HomeAgentProbe"), probe("VpnProbe"),
                   bool(props.get("NatDetected", False)),
                   f("BindingExpires", 0.0), f("LastHandoverMs", -1.0), s("Error"),
                   Policy(s("Policy") or "auto"), s("VpnGateway"), s("CaptivePortal"),
                   tuple(str(x) for x in layers if x in NAT_LAYERS)
                   if isinstance(layers := props.get("NatLayers"), list | tuple) else ())


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of the event history (also sent as the ``Event`` signal)."""

    time: float
    kind: str
    """link-up, link-down, probe-sent, probe-answered, probe-timeout, mode, registered,
    denied, deregistered, error, connect, disconnect, policy, gate."""
    details: dict[str, str]
