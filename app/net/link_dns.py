"""A link's own resolvers, as systemd-resolved knows them (review-portal finding 11).

The captive-portal probe and the sign-in hole need the resolvers of the link they
are bound to.  The resolv.conf files list the machine's resolvers (all links',
or only resolved's stub); resolved's per-link ``DNS`` property is what
NetworkManager (or networkd) set from that link's DHCP.  Where resolved is not
on the bus, or does not know the link, the caller falls back to the files
(:func:`app.net.portal_probe.link_resolvers`).
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address

from app.dbus import BUS_TIMEOUT, Message, MessageBus, PeerError, Variant, call

RESOLVE1 = "org.freedesktop.resolve1"
MANAGER = "org.freedesktop.resolve1.Manager"
LINK = "org.freedesktop.resolve1.Link"
MAX_SERVERS = 8


def parse_link_dns(value: object) -> list[IPv4Address]:
    """The IPv4 servers of a ``DNS`` property (``a(iay)``: family, address bytes),
    in order, at most MAX_SERVERS, loopback left out; anything malformed skipped."""
    found: list[IPv4Address] = []
    for entry in value if isinstance(value, list | tuple) else ():
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            continue
        family, raw = entry
        if family != socket.AF_INET or not isinstance(raw, bytes | bytearray | list) \
                or len(raw) != 4:
            continue
        addr = IPv4Address(bytes(raw))
        if not addr.is_loopback and not addr.is_unspecified and addr not in found:
            found.append(addr)
        if len(found) == MAX_SERVERS:
            break
    return found


async def link_dns(bus: MessageBus, iface: str) -> list[IPv4Address] | None:
    """``iface``'s IPv4 resolvers from systemd-resolved; None if it cannot say (no
    resolved on the bus, no such link): then the caller uses the files."""
    try:
        ifindex = socket.if_nametoindex(iface)
    except OSError:
        return None
    try:
        reply = await call(bus, Message(
            destination=RESOLVE1, path="/org/freedesktop/resolve1", interface=MANAGER,
            member="GetLink", signature="i", body=[ifindex]), BUS_TIMEOUT, "systemd-resolved")
        got = await call(bus, Message(
            destination=RESOLVE1, path=str(reply.body[0]),
            interface="org.freedesktop.DBus.Properties", member="Get", signature="ss",
            body=[LINK, "DNS"]), BUS_TIMEOUT, "systemd-resolved")
    except (PeerError, OSError):
        return None
    value = got.body[0] if got.body else None
    return parse_link_dns(value.value if isinstance(value, Variant) else value)
