"""Which addresses of a VPN gateway the gate's model has room for, pure.

The gate lets IKE, NAT-T and ESP reach the profile's gateways by address (its
allowed peer set: the addresses given, or what the names resolved to when the
profile connected, ``app.net.gate_rules.GatePolicy.gateways``).  An IKE SA whose
peer is another address -- MOBIKE's additional addresses of a gateway (RFC 4555
3.6: charon may move the SA to one when the path to the current one fails), a
redirect (RFC 5685), a gateway answering from another address -- is outside
that model: its packets would be dropped by the gate in one direction or both,
and the tunnel would only look up.  Such an SA is refused with the reason
(``peer_refusal``) and the next gateway is tried; listing the address among the
profile's ``gateways`` puts it inside the model.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Collection, Sequence
from ipaddress import IPv4Address, IPv6Address


def peer_refusal(peer: IPv4Address | IPv6Address, allowed: Collection[IPv4Address] | None,
                 why: str) -> str | None:
    """Why an IKE SA with ``peer`` is refused (``why``: how the SA got there, e.g.
    "MOBIKE moved the IKE SA (RFC 4555 3.6)"), or None when the gate lets it through
    (``allowed`` None: no gate, nothing to keep consistent with)."""
    if allowed is None or peer in allowed:
        return None
    listed = ", ".join(str(a) for a in sorted(allowed)) or "none"
    return (f"{why} to {peer}, which is not one of the profile's gateway addresses "
            f"({listed}): the gate would drop its packets; list it in vpn.gateways to "
            "allow it")


def gateway_of(peer: IPv4Address | IPv6Address, gateways: Sequence[str], fallback: str,
               addresses_of: Callable[[str], Collection[IPv4Address]] | None = None) -> str:
    """The profile's gateway an SA with ``peer`` belongs to: the one that names that
    address, or resolved to it (``addresses_of``: a name's last addresses), else
    ``fallback`` (the gateway charon was given).  An SA that comes up late (charon
    reauthenticating to the first gateway, an initiate given up) must not be
    credited to the gateway loaded since."""
    for g in gateways:
        try:
            if ipaddress.ip_address(g) == peer:
                return g
        except ValueError:
            continue
    if addresses_of is not None:
        for g in gateways:
            if peer in addresses_of(g):
                return g
    return fallback
