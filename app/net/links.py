"""What a link looks like to the helper, as both link adapters report it.

``app.net.rtnl_links`` (rtnetlink, when NetworkManager is absent) and
``app.net.nm_links`` (NetworkManager over D-Bus) reduce what they see to a
:class:`LinkSnapshot` of the managed interface; ``app.mn.link_tracker`` turns
snapshots into the access-mode machine's LinkUp/LinkDown.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface


@dataclass(frozen=True, slots=True)
class LinkSnapshot:
    iface: str
    carrier: bool
    addresses: tuple[IPv4Interface, ...]
    gateway: IPv4Address | None
    leased: frozenset[IPv4Address] = frozenset()
    """Addresses the network gave with a lease: a finite lifetime (rtnetlink), or
    NetworkManager's DHCP lease."""
    installed: frozenset[IPv4Address] = frozenset()
    """Addresses charon installed, as its routes (table 220) name them as source."""


def pick_address(addresses: Sequence[IPv4Interface], exclude: IPv4Address | None, *,
                 not_ours: Collection[IPv4Address] = (),
                 leased: Collection[IPv4Address] = ()) -> IPv4Interface | None:
    """The link's own address, a leased one first; never:

    - ``exclude``, the home address we add ourselves;
    - ``not_ours``: what charon installed.  With kernel ESP its kernel-netlink
      plugin puts the virtual IP (the TIA) on the physical interface; a "direct"
      request from it matches charon's policy and goes through the VPN, and its
      answer would prove nothing (RFC 5266 3.4: "without any VPN encapsulation");
    - as a belt, a host address (/32) the network did not lease: what a virtual
      IP looks like when its SA is not known (yet, or any more).
    """
    own = [a for a in addresses
           if a.ip != exclude and not a.ip.is_link_local and a.ip not in not_ours
           and (a.network.prefixlen < 32 or a.ip in leased)]
    return next((a for a in own if a.ip in leased), own[0] if own else None)
