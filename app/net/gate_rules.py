"""The traffic gate's rules as data and as nftables text: pure, no I/O.

The gate is keyed to the decision, not a switch (DESIGN.md section 2): its
allow rules name what was proven -- the interface, the care-of address the
decision was made on, the mode's tunnel, the home agent and the foreign
agent -- so a new address, a new link or an interface nobody decided on
matches none of them and is blocked from its first packet, whatever the helper
has or has not read yet.

While undecided (probing, untrusted, error, offline) only this leaves any
interface but loopback: DHCP from the client port to the server port, the
registration request to the configured home agent's port 434, agent
solicitation to all-routers or the limited broadcast, and IKE/NAT-T/ESP to
the configured VPN gateways.  IPv6 never leaves a managed link: RFC 5266 is an
IPv4 design, and an IPv6 path would bypass both Mobile IP and the VPN.
Forwarded traffic (containers, virtual machines, a shared connection) leaves
only by a proven path.

Rendered as one ``inet`` table that :mod:`app.net.gate` replaces whole in one
nftables transaction, so there is never a moment with half a rule set.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from app.api import Mode

TABLE = "trustroam_gate"
COUNTER = "blocked"
MIP_PORT = 434
ALL_ROUTERS = IPv4Address("224.0.0.2")
LIMITED_BROADCAST = IPv4Address("255.255.255.255")
LOCAL_INTERFACES = ("lo", "docker*", "br-*", "virbr*", "lxcbr*", "podman*", "cni*")
"""Interfaces that never leave the machine: loopback and the usual container and
virtual-machine bridges (nft wildcards).  Traffic to them is local, so it is not
gated; what they forward out of a physical link is."""


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """What the profile says: the fixed addresses the undecided state lets through."""

    home_agent: IPv4Address
    home_address: IPv4Address
    tunnel: str
    """The mode c tunnel device (``trmn0``): traffic into it is encapsulated to the HA."""
    gateways: tuple[IPv4Address, ...] = ()
    """VPN gateways: IKE, NAT-T and ESP to them pass while undecided (RFC 5266 3.4)."""


@dataclass(frozen=True, slots=True)
class ProvenPath:
    """A trusted decision: what the access-mode machine proved, and on what."""

    iface: str
    link_address: IPv4Address
    """The address the direct probe was answered on (the co-located care-of address)."""
    mode: Mode
    foreign_agent: IPv4Address | None = None
    """An FA advertising on this trusted link: registrations to it may leave."""

    def __post_init__(self) -> None:
        if self.mode not in (Mode.HOME, Mode.COLOCATED, Mode.FOREIGN_AGENT):
            raise ValueError(f"no proven path for mode {self.mode.value}")


def _q(name: str) -> str:
    """An interface name as an nft string (names come from the kernel: no quotes)."""
    if '"' in name or "\\" in name or not name:
        raise ValueError(f"interface name {name!r} cannot be put in a rule")
    return f'"{name}"'


def undecided_rules(policy: GatePolicy) -> list[str]:
    rules = [
        "udp sport 68 udp dport 67 accept",  # DHCP, client to server only
        f"ip daddr {policy.home_agent} udp dport {MIP_PORT} accept",  # the direct probe
        f"ip daddr {{ {ALL_ROUTERS}, {LIMITED_BROADCAST} }} icmp type router-solicitation "
        "accept",  # agent solicitation (RFC 5944 2.2)
    ]
    if policy.gateways:
        gws = ", ".join(str(g) for g in policy.gateways)
        rules += [f"ip daddr {{ {gws} }} udp dport {{ 500, 4500 }} accept",
                  f"ip daddr {{ {gws} }} ip protocol esp accept"]
    return rules


def proven_rules(policy: GatePolicy, path: ProvenPath | None) -> tuple[list[str], list[str]]:
    """(output rules, forward rules) that open exactly the proven path."""
    if path is None:
        return [], []
    i = _q(path.iface)
    out = [f"oifname {i} ip saddr {path.link_address} accept"]
    fwd = [f"oifname {i} meta nfproto ipv4 accept"]
    if path.mode in (Mode.HOME, Mode.FOREIGN_AGENT):
        out.append(f"oifname {i} ip saddr {policy.home_address} accept")
    if path.mode is Mode.COLOCATED:
        t = _q(policy.tunnel)
        out.append(f"oifname {t} accept")
        fwd.append(f"oifname {t} accept")
    if path.foreign_agent is not None:
        out.append(f"oifname {i} ip daddr {path.foreign_agent} udp dport {MIP_PORT} accept")
    # No IPv6 on a managed link, even a proven one: nothing in it is keyed to the
    # decision (link-local addresses and old prefixes survive a move), so its first
    # packets on a new network would leave before the helper shuts the gate.
    return out, fwd


def render(policy: GatePolicy, path: ProvenPath | None) -> str:
    """The whole table for one decision (None: undecided), replacing any older one."""
    local = [f"oifname {_q(n)} accept" for n in LOCAL_INTERFACES]
    out, fwd = proven_rules(policy, path)

    def chain(name: str, rules: list[str]) -> str:
        body = "".join(f"    {r}\n" for r in rules)
        return f"  chain {name} {{\n{body}  }}\n"

    return (
        f"table inet {TABLE}\ndelete table inet {TABLE}\n"
        f"table inet {TABLE} {{\n"
        f"  counter {COUNTER} {{ }}\n"
        + chain("undecided", undecided_rules(policy))
        + chain("proven", out)
        + chain("proven_forward", fwd)
        + chain("output", ["type filter hook output priority 0; policy accept;", *local,
                           "jump undecided", "jump proven", f"counter name {COUNTER} drop"])
        + chain("forward", ["type filter hook forward priority 0; policy accept;", *local,
                            "jump proven_forward", f"counter name {COUNTER} drop"])
        + "}\n"
    )


def render_decision(policy: GatePolicy, path: ProvenPath | None) -> str:
    """Only the proven chains, refilled in one transaction (the counter keeps counting)."""
    out, fwd = proven_rules(policy, path)
    script = [f"flush chain inet {TABLE} proven", f"flush chain inet {TABLE} proven_forward"]
    script += [f"add rule inet {TABLE} proven {r}" for r in out]
    script += [f"add rule inet {TABLE} proven_forward {r}" for r in fwd]
    return "\n".join(script) + "\n"


def removal() -> str:
    """Delete the table whether or not it exists (one transaction)."""
    return f"table inet {TABLE}\ndelete table inet {TABLE}\n"
