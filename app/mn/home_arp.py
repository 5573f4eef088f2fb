"""Which link may send a frame naming the home address (RFC 5944 4.6), as the
access-mode machine's actions said.  Pure: fed the actions in order, asked per link
by the ARP announcer (``app.net.arp``)."""

from __future__ import annotations

from app.api import Mode
from app.mn import mode_events as ev


class HomeArpPermit:
    """The link of mode h's open path (``Gate``), or a proven home link being claimed
    (``ClaimHome``) until a ``ConfigureDataPlane`` of another mode takes the home
    address off it."""

    def __init__(self) -> None:
        self.home_path: str | None = None
        self.claimed: str | None = None

    def note(self, a: ev.Action) -> None:
        if isinstance(a, ev.Gate):
            p = a.path
            self.home_path = p.iface if p is not None and p.mode is Mode.HOME else None
        elif isinstance(a, ev.ClaimHome):
            self.claimed = a.iface
        elif isinstance(a, ev.ConfigureDataPlane) and a.mode is not Mode.HOME:
            self.claimed = None

    def __call__(self, iface: str) -> bool:
        return iface in (self.home_path, self.claimed)
