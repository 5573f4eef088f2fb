"""What a link looks like to the helper, as both link adapters report it.

``app.net.rtnl_links`` (rtnetlink, when NetworkManager is absent) and
``app.net.nm_links`` (NetworkManager over D-Bus) reduce what they see to a
:class:`LinkSnapshot` of the managed interface; ``app.mn.link_tracker`` turns
snapshots into the access-mode machine's LinkUp/LinkDown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface


@dataclass(frozen=True, slots=True)
class LinkSnapshot:
    iface: str
    carrier: bool
    addresses: tuple[IPv4Interface, ...]
    gateway: IPv4Address | None


def pick_address(addresses: Sequence[IPv4Interface], exclude: IPv4Address | None
                 ) -> IPv4Interface | None:
    """The link's own address: the first that is not the home address we add ourselves."""
    for a in addresses:
        if a.ip != exclude and not a.ip.is_link_local:
            return a
    return None
