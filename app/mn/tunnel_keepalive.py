"""RFC 3519 keepalives on the link's registration socket: the I/O side of
``app.mn.nat_keepalive``.

Runs while the binding is UDP-tunnelled (mode c behind a NAT, or mode mc with the
TIA translated on its way to the home agent, RFC 5266 4: then from the TIA's
socket, through the VPN, ``via_vpn``): tunnel data that is
the home agent's Echo Reply to our keepalive is taken here, the rest goes on to
the tunnel; the tick sends Echo Requests from the registration socket and says
when the mapping seems lost (4.10: register again).
"""

from __future__ import annotations

import logging
import socket
from ipaddress import IPv4Address

from app.mip.messages import MIP_PORT
from app.mn.nat_keepalive import Action, NatKeepalive, echo_request, parse_echo_reply
from app.net.ipip import TUNNEL_DATA_HEADER

log = logging.getLogger("trustroam.mn")


class TunnelKeepalive:
    def __init__(self, home_address: IPv4Address, home_agent: IPv4Address) -> None:
        self.home_address = home_address
        self.home_agent = home_agent
        self.keepalive: NatKeepalive | None = None
        self.via_vpn = False
        """The tunnel is the TIA's socket's (mode mc), not the link's."""

    @property
    def running(self) -> bool:
        return self.keepalive is not None

    def start(self, interval: float, now: float) -> None:
        self.keepalive = NatKeepalive.start(interval, now)

    def configure(self, udp_tunnel: bool, interval: int, now: float, *,
                  via_vpn: bool = False) -> list[tuple[str, dict[str, str]]]:
        """A data plane configured: keepalives at ``interval`` (RFC 3519 4.9) while it
        is UDP-tunnelled, none otherwise; the history entries to say so."""
        if not udp_tunnel:
            self.stop()
            return []
        self.start(interval, now)
        self.via_vpn = via_vpn
        return [("udp-tunnel", {"keepalive_s": str(interval),
                                **({"path": "vpn"} if via_vpn else {})})]

    def stop(self) -> None:
        """Not UDP-tunnelled (any more), or another link: its mapping is no mapping here."""
        self.keepalive = None
        self.via_vpn = False

    def get_timer(self) -> float | None:
        return self.keepalive.get_timer() if self.keepalive is not None else None

    def reply(self, inner: bytes, now: float) -> bool:
        """True if ``inner`` (a tunnelled packet) answers our keepalive: it is ours."""
        k = self.keepalive
        echo = parse_echo_reply(inner, self.home_agent) if k is not None else None
        return k is not None and echo is not None and k.echo_reply(*echo, now)

    def tick(self, now: float, reg: socket.socket | None) -> bool:
        """The timer came: send what is due from ``reg``; True: register again (4.10)."""
        k = self.keepalive
        if k is None or reg is None:
            return False
        reregister = False
        for action in k.handle_timer(now):
            if action is Action.SEND_ECHO:
                packet = echo_request(self.home_address, self.home_agent, k.identifier,
                                      k.sequence)
                try:
                    reg.sendto(TUNNEL_DATA_HEADER + packet, (str(self.home_agent), MIP_PORT))
                except OSError as exc:
                    log.info("keepalive to the home agent not sent: %s", exc.strerror)
            else:
                reregister = True
        return reregister
