"""What the mobile node publishes, from the machine's actions and its clients'
answers: a new :class:`~app.api.Snapshot` and history entries (kind, details).

Pure: no clock of its own (the caller gives wall times), no I/O; the driver stamps
the entries and hands them on.  Bindings and answers are told apart by identity
(each answer is a new object), so one seen again publishes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from app.api import NAT_IPSEC, NAT_MOBILE_IP, Mode, Probe, Snapshot, State
from app.mn import mode_events as ev
from app.mn.registration import Registered

Entry = tuple[str, dict[str, str]]
"""A history entry without its time: (kind, details)."""


def status(snap: Snapshot, s: ev.Status, executed_ms: float = 0.0
           ) -> tuple[Snapshot, list[Entry]]:
    """The machine's phase, mode, care-of address, error and handover time (the
    machine's, to the step that opens the path, plus ``executed_ms``: that step's
    actions carried out, so the path is open when the time is taken)."""
    new = replace(snap, state=s.phase, mode=s.mode, error=s.error or "")
    if s.handover and s.handover_ms is not None:  # only the Status that ends one
        new = replace(new, last_handover_ms=handover_ms(s.handover_ms, executed_ms))
    if s.mode is Mode.HOME:
        new = replace(new, care_of_address="")  # at home there is no care-of address
    elif s.care_of_address is not None and s.mode is not Mode.NONE:
        new = replace(new, care_of_address=str(s.care_of_address))
    if s.mode is Mode.NONE:  # the link left: its binding is not the one in use
        new = replace(new, binding_expires=0.0)
    if s.phase is State.UNTRUSTED:
        new = replace(new, home_agent_probe=replace(snap.home_agent_probe, reachable=False))
    entries: list[Entry] = []
    # A Status may only end a handover: no new mode then.
    if (snap.state, snap.mode, snap.error) != (s.phase, s.mode, s.error or ""):
        details = {"state": s.phase.value, "mode": s.mode.value}
        if s.error:
            details["reason"] = s.error
        entries.append(("error" if s.phase is State.ERROR else "mode", details))
    return new, entries


def gate(a: ev.Gate, at: float) -> Entry:
    """The gate's decision, ``at`` the wall time just before its rules changed."""
    p = a.path
    return "gate", {"blocked": str(p is None).lower(), "at": f"{at:.6f}",
                    **({"interface": p.iface, "address": str(p.link_address),
                        "mode": p.mode.value} if p else {"names": NAMES_REFUSED})}


NAMES_REFUSED = "refused until the network is decided"
"""Why lookups fail at once while the gate is shut (app.net.gate_rules.dns_refusal_rules)."""


def handover_ms(machine_ms: float, executed_ms: float) -> float:
    """Link up -> path open: the machine's time to the deciding step, and the time
    that step's actions (routes, gate) took to carry out."""
    return round(machine_ms + executed_ms, 2)


def published(snap: Snapshot, actions: list[ev.Action], gate_at: float,
              executed_ms: float = 0.0) -> tuple[Snapshot, list[Entry]]:
    """One step's publishing, after its other actions were executed (they took
    ``executed_ms``): statuses, notes, home claims and gate decisions in order, then
    the handover time (the number the user sees)."""
    entries: list[Entry] = []
    for a in actions:
        if isinstance(a, ev.Status):
            snap, more = status(snap, a, executed_ms)
            entries += more
        elif isinstance(a, ev.Note):
            entries.append((a.kind, {"text": a.text}))
        elif isinstance(a, ev.ClaimHome):
            entries.append(("home-claim", {"interface": a.iface}))
        elif isinstance(a, ev.Gate):
            entries.append(gate(a, gate_at))
    for a in actions:
        if isinstance(a, ev.Status) and a.handover and a.handover_ms is not None:
            ms = handover_ms(a.handover_ms, executed_ms)
            entries.append(("handover", {"mode": a.mode.value, "ms": f"{ms:.1f}"}))
    return snap, entries


def vpn_up(snap: Snapshot, a: ev.UseTia) -> tuple[Snapshot, list[Entry]]:
    """The machine's new SA or TIA, in use."""
    return replace(snap, tunnel_inner_address=str(a.tia), vpn_gateway=a.gateway,
                   vpn_probe=replace(snap.vpn_probe, reachable=True)), [
        ("vpn-up", {"tia": str(a.tia), "gateway": a.gateway, "ike": str(a.ike_id),
                    "local": a.local, "remote": a.remote,
                    "nat": str(a.nat_detected).lower()})]


def vpn_gone(snap: Snapshot) -> Snapshot:
    """The TIA is no longer ours."""
    return replace(snap, tunnel_inner_address="", vpn_gateway="",
                   vpn_probe=replace(snap.vpn_probe, reachable=False))


class VpnNatView:
    """Which layer found a NAT (RFC 5266 4), as the snapshot shows it: IPsec NAT-T
    (charon's detection for the SA in use: mode mc's outer path, shown while no
    direct mode carries the traffic) and Mobile IP's (the home agent UDP-tunnels
    the binding in use, RFC 3519: in mode c or, the TIA translated, in mc)."""

    def __init__(self) -> None:
        self.vpn_nat = False
        self.udp_tunnel = False
        self.mode = Mode.NONE

    def vpn(self, snap: Snapshot, nat: bool) -> tuple[Snapshot, list[Entry]]:
        """charon said (again) whether the SA in use crosses a NAT."""
        entries: list[Entry] = []
        if nat != self.vpn_nat:
            entries.append(("vpn-nat", {"detected": str(nat).lower()}))
        self.vpn_nat = nat
        return self.shown(snap), entries

    def vpn_gone(self, snap: Snapshot) -> Snapshot:
        """No SA in use any more: its NAT is no NAT of ours."""
        self.vpn_nat = False
        return self.shown(snap)

    def configured(self, snap: Snapshot, mode: Mode, udp_tunnel: bool) -> Snapshot:
        """A data plane configured: its binding UDP-tunnelled or not."""
        self.mode, self.udp_tunnel = mode, udp_tunnel and mode is not Mode.NONE
        return self.shown(snap)

    def shown(self, snap: Snapshot) -> Snapshot:
        ipsec = self.vpn_nat and self.mode in (Mode.VPN, Mode.NONE)
        layers = tuple(name for name, found in ((NAT_IPSEC, ipsec),
                                                (NAT_MOBILE_IP, self.udp_tunnel)) if found)
        return replace(snap, nat_detected=bool(layers), nat_layers=layers)


Answer = tuple[float, float]
"""A registration client's last answer: (RTT s, when it came on the machines' clock)."""


class BindingView:
    """The binding and the home agent's last answer, published once each."""

    def __init__(self) -> None:
        self._binding: object = None
        self._answer: object = None

    def update(self, snap: Snapshot, answer: Answer | None, binding: Registered | None,
               to_wall: Callable[[float], float]) -> tuple[Snapshot, list[Entry]]:
        """``to_wall``: a time of the machines' clock as published (Unix time)."""
        entries: list[Entry] = []
        if answer is not None and answer is not self._answer:
            self._answer = answer
            snap = replace(snap, home_agent_probe=Probe(True, round(answer[0] * 1000, 3),
                                                        to_wall(answer[1])))
            entries.append(("probe-answered", {"rtt_ms": f"{answer[0] * 1000:.2f}"}))
        if binding is self._binding:
            return snap, entries
        self._binding = binding
        if binding is None:
            return replace(snap, binding_expires=0.0), entries
        entries.append(("registered", {"care_of": str(binding.care_of_address),
                                       "lifetime": str(binding.lifetime),
                                       "rtt_ms": f"{binding.rtt * 1000:.2f}",
                                       "renewal": str(binding.renewal).lower()}))
        return replace(snap, binding_expires=to_wall(binding.expires_at)), entries
