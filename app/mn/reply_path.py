"""Which path a registration reply came by, and which client may take it.

RFC 5266 3.4: the direct request goes "without any VPN encapsulation", and only
its direct answer proves a trusted network.  In mode mc two registration
clients share the home agent (the direct probe, and the TIA's registration
through the VPN), and each reply is matched by identification alone: a reply
to the direct request that came in through the VPN would count as direct.  The
driver says which socket each datagram arrived on; a :class:`PathClient` takes
replies from its own path only.  (The direct socket's IPsec bypass policy makes
the kernel refuse there anything decrypted from an SA; this is the other half:
nothing from the TIA's socket ever counts as direct.)
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from app.mn.registration import RegistrationClient, RegistrationConfig


class Path(Enum):
    LINK = "link"
    """The physical link's own sockets (link address, or the home address at home)."""
    VPN = "vpn"
    """The TIA's socket: what charon decrypted."""


class PathClient(RegistrationClient):
    def __init__(self, config: RegistrationConfig, path: Path,
                 arrival: Callable[[], Path | None], **kw: Any) -> None:
        """``arrival``: the path of the datagram being handled (None: not known,
        as when no driver is involved)."""
        super().__init__(config, **kw)
        self.path = path
        self._arrival = arrival

    def receive(self, data: bytes, now: float) -> None:
        came = self._arrival()
        if came is None or came is self.path:
            super().receive(data, now)
