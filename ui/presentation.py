"""What the tray says and shows for a helper snapshot: pure functions, no Qt, no I/O.

Kept apart so the wording, the icon choice and the notification coalescing are
tested without a display, and so the icon can never claim more security than
the snapshot carries.  Every text that came over the bus goes through ``shown``
(control characters escaped, length bounded).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from app.api import NAT_IPSEC, NAT_MOBILE_IP, Mode, Policy, Probe, Snapshot, State
from app.client_bus import shown

MODE_WORDS = {
    Mode.HOME: "at home (mode h)",
    Mode.COLOCATED: "away, own care-of address (mode c)",
    Mode.FOREIGN_AGENT: "away, through a foreign agent (mode f)",
    Mode.VPN: "through the VPN (mode mc)",
    Mode.NONE: "",
}

NOT_RUNNING = "not-running"
POLICY_WORDS = {Policy.AUTO: "Automatic", Policy.ALWAYS_VPN: "Always use VPN",
                Policy.NEVER_VPN: "Never use VPN"}

NAT_NAMES = {NAT_IPSEC: "IPsec", NAT_MOBILE_IP: "Mobile IP"}
"""The layers that found a NAT (RFC 5266 4), as the tooltip names them."""


def icon_name(snap: Snapshot | None) -> str:
    """The icon file's stem (resources/icons/<stem>.svg); None means no helper."""
    if snap is None:
        return "trustroam-" + NOT_RUNNING
    if snap.state in (State.TRUSTED, State.UNTRUSTED) and snap.mode is Mode.VPN:
        return "trustroam-vpn"
    if snap.state is State.TRUSTED:
        return {Mode.HOME: "trustroam-trusted-home",
                Mode.FOREIGN_AGENT: "trustroam-trusted-fa"}.get(snap.mode,
                                                               "trustroam-trusted-colocated")
    if snap.state is State.UNTRUSTED:
        # Only a VPN path (mode mc) is secure on an untrusted network.
        return "trustroam-untrusted"
    return {State.PROBING: "trustroam-probing", State.ERROR: "trustroam-error"}.get(
        snap.state, "trustroam-offline")


SECURE_ICONS = frozenset({"trustroam-trusted-home", "trustroam-trusted-colocated",
                          "trustroam-trusted-fa", "trustroam-vpn"})


def headline(snap: Snapshot | None) -> str:
    """State and mode in words: the tooltip's first line and the notifications' text."""
    if snap is None:
        return "TrustRoam service not running"
    s = snap.state
    if s is State.TRUSTED:
        return "Trusted network, " + MODE_WORDS[snap.mode]
    if s is State.UNTRUSTED:
        if snap.mode is Mode.VPN:
            return "Untrusted network, protected by the VPN (mode mc)"
        reason = blocked_reason(snap)
        return "Untrusted network, NOT protected" + (f": {reason}" if reason else "")
    if s is State.PROBING:
        return "Checking the network…"
    if s is State.ERROR:
        return "Error: " + (friendly_error(snap.error) or "unknown")
    return "Offline"


ERROR_CHARS = 200
_CODE = re.compile(r"\((\d{2,3})\)")
_CODE_WORDS = {
    131: "The home agent refused the key (131): check the profile's key",
    67: "The foreign agent refused the key (67): check the profile's key",
    133: "The home agent rejected the registration's identification (133): "
         "check this computer's clock",
    129: "The home agent refused this node (129): ask the administrator",
    136: "The home agent does not know this home address (136): check the profile",
}


def friendly_error(error: str) -> str:
    """The helper's error in words a user can act on (never more than one line)."""
    m = _CODE.search(error)
    if m and int(m.group(1)) in _CODE_WORDS:
        return _CODE_WORDS[int(m.group(1))]
    return shown(error.splitlines()[0], ERROR_CHARS) if error.strip() else ""


def blocked_reason(snap: Snapshot) -> str:
    """Why an untrusted network has no protected path (the gate keeps traffic shut):
    the helper's Error, else the policy that forbids the VPN; "" when neither says."""
    if snap.error:
        return friendly_error(snap.error)
    if snap.policy is Policy.NEVER_VPN:
        return "the policy is Never use VPN, so traffic stays blocked"
    return ""


def probe_text(p: Probe) -> str:
    """A probe's last result in words: "reachable, last RTT 2.0 ms", "no answer yet"."""
    if p.answered_at <= 0:
        return "no answer yet"
    rtt = f"{p.rtt_ms:.1f} ms" if p.rtt_ms >= 0 else "?"
    return f"{'reachable' if p.reachable else 'NOT reachable'}, last RTT {rtt}"


def home_agent_text(snap: Snapshot) -> str:
    """The home agent in words.  In mc the direct probe is expected to fail (that is
    why the VPN is up) and the registration through the VPN is the proof the home
    agent is reached (RFC 5266 3.1.4, 3.4.1): "NOT reachable" there would alarm for
    nothing."""
    if snap.mode is Mode.VPN:
        return ("reached through the VPN (registered through it)" if snap.binding_expires > 0
                else "through the VPN, not registered yet")
    return probe_text(snap.home_agent_probe)


def tooltip(snap: Snapshot | None, network: str) -> str:
    """Every line a user asks about at a glance, one fact per line."""
    lines = ["TrustRoam: " + headline(snap)]
    if network:
        lines.append(f"Network: {shown(network, 80)}")
    if snap is None:
        return "\n".join(lines)
    if snap.profile:
        lines.append(f"Profile: {shown(snap.profile, 60)}")
    if snap.captive_portal:
        # Why the VPN cannot come up, and what to do about it (the menu's item).
        lines.append(f"Captive portal: sign in at {shown(snap.captive_portal, 80)} "
                     "(Sign in to this network…)")
    if snap.home_address:
        lines.append(f"Home address: {shown(snap.home_address, 60)}")
    if snap.mode is Mode.VPN:
        # Inside the VPN the home agent knows us by the TIA (our care-of address there).
        lines.append(f"Tunnel inner address: {shown(snap.tunnel_inner_address, 60) or '?'}")
    elif snap.care_of_address:
        lines.append(f"Care-of address: {shown(snap.care_of_address, 60)}")
    if snap.state is not State.OFFLINE or snap.home_agent_probe.answered_at > 0:
        lines.append(f"Home agent: {home_agent_text(snap)}")
    if snap.mode is Mode.VPN or snap.vpn_probe.answered_at > 0 or snap.vpn_gateway:
        lines.append(f"{vpn_label(snap)}: {probe_text(snap.vpn_probe)}")
    if snap.binding_expires > 0:
        # An absolute time stays true without the tray waking up to count down
        # ("n min left" would go stale between two changes).
        at = time.strftime("%H:%M:%S", time.localtime(snap.binding_expires))
        lines.append(f"Binding: until {at}")
    if snap.nat_detected:
        layers = [NAT_NAMES[n] for n in snap.nat_layers if n in NAT_NAMES]
        lines.append(f"NAT detected ({', '.join(layers)})" if layers else "NAT detected")
    if snap.policy is not Policy.AUTO:
        lines.append(f"Policy: {POLICY_WORDS[snap.policy]}")
    if gate_shut(snap):
        lines.append(NAMES_REFUSED)
    return "\n".join(lines)


NAMES_REFUSED = "Names: refused until the network is decided"


def gate_shut(snap: Snapshot) -> bool:
    """The helper's gate holds normal traffic (and refuses DNS at once): probing, an
    error, or an untrusted network without the VPN."""
    return snap.state in (State.PROBING, State.ERROR) or (
        snap.state is State.UNTRUSTED and snap.mode is not Mode.VPN)


def vpn_label(snap: Snapshot) -> str:
    return f"VPN gateway {shown(snap.vpn_gateway, 80)}" if snap.vpn_gateway else "VPN gateway"


@dataclass(frozen=True)
class Notice:
    title: str
    text: str
    urgent: bool = False


class Coalescer:
    """One notification per settled change, not one per step.

    ``observe`` is called on every snapshot; it returns how long to wait before
    ``settle`` should be called (the caller runs one single-shot timer).  A change
    that returns to where the user last heard about is not announced.
    """

    SETTLE_S = 1.5

    def __init__(self) -> None:
        self.announced: tuple[str, str, str] | None = None
        self.pending: Snapshot | None = None
        self.pending_present = True
        self.network = ""

    @staticmethod
    def _key(snap: Snapshot | None) -> tuple[str, str, str]:
        if snap is None:
            return (NOT_RUNNING, "", "")
        return (snap.state.value, snap.mode.value, snap.error)

    def observe(self, snap: Snapshot | None, network: str = "") -> float | None:
        self.network = network
        if self.announced is None:
            self.announced = self._key(snap)  # the state at start is not news
            return None
        self.pending = snap
        self.pending_present = snap is not None
        if snap is not None and snap.state is State.PROBING:
            return None  # a step, not a settled state: wait for what follows
        return self.SETTLE_S

    def settle(self) -> Notice | None:
        snap = self.pending if self.pending_present else None
        if snap is not None and snap.state is State.PROBING:
            return None
        key = self._key(snap)
        if key == self.announced:
            return None
        self.announced = key
        text = headline(snap)
        if self.network:
            text += f" — {shown(self.network, 80)}"
        urgent = snap is None or snap.state is State.ERROR or (
            snap.state is State.UNTRUSTED and snap.mode is not Mode.VPN)
        return Notice("TrustRoam", text, urgent)
