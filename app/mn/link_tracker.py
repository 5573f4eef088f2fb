"""Link snapshots to link events: one debouncing tracker, fed by rtnetlink or NetworkManager.

Both link adapters reduce what they see to an ``app.net.links.LinkSnapshot``
of the managed interface and hand it to a :class:`LinkTracker`, which decides,
sans-I/O, when that is a ``LinkUp`` or a ``LinkDown`` for the access-mode
machine:

- a usable link (carrier, an IPv4 address of its own, a default gateway) with a
  new address or gateway is reported at once: a real move never waits.  The
  link's own address is never the home address nor an address charon installed
  (its virtual IP, known from its SAs through :meth:`LinkTracker.vpn_address` or
  from its routing table in the snapshot): a link that holds only charon's is
  not up;
- another interface taking over (the default route moved to the Wi-Fi) is a
  move like any other: its ``LinkUp`` alone, never a ``LinkDown`` of the old
  interface first (mode mc stays open and MOBIKE moves its SA, RFC 5266 3.4);
- the same link coming back after it was lost (carrier flap, resume) is also
  reported at once, because a binding that may be stale must be re-probed;
- losing the link is reported at once as ``LinkLost`` (the gate shuts: the
  cable may already be in another network), and as ``LinkDown`` only if it
  stays lost for ``hold`` seconds, so a flap does not tear down the mode;
- repeated comebacks of the same link are coalesced to one per ``min_reprobe``
  seconds (a flapping cable otherwise floods the home agent).
"""

from __future__ import annotations

from ipaddress import IPv4Address

from app.mn.access_mode import LinkDown, LinkLost, LinkUp
from app.net.links import LinkSnapshot, pick_address


class LinkTracker:
    def __init__(self, home_address: IPv4Address | None, *, hold: float = 1.0,
                 min_reprobe: float = 1.0) -> None:
        self.home_address = home_address
        self.hold = hold
        self.min_reprobe = min_reprobe
        self._up: LinkUp | None = None
        """What the machine was last told is up (kept through a held loss)."""
        self._lost_at: float | None = None
        self._last_up_at = float("-inf")
        self._pending_up: LinkUp | None = None
        self._pending_at: float | None = None
        self._vpn: set[IPv4Address] = set()
        """charon's virtual IPs (the TIAs its SAs gave us)."""
        self._vpn_gone: set[IPv4Address] = set()
        """... of SAs that are gone: still not ours while the link holds them."""
        self._last: LinkSnapshot | None = None

    def vpn_address(self, tia: IPv4Address, now: float) -> list[LinkUp | LinkDown | LinkLost]:
        """charon has this virtual IP: never the link's address (the last snapshot is
        judged again, in case it was taken before charon said so)."""
        self._vpn.add(tia)
        self._vpn_gone.discard(tia)
        return self.observe(self._last, now) if self._last is not None else []

    def vpn_address_gone(self, tia: IPv4Address) -> None:
        """Its SA is gone; charon removes the address after: excluded until then."""
        if tia in self._vpn:
            self._vpn_gone.add(tia)

    def observe(self, snap: LinkSnapshot, now: float) -> list[LinkUp | LinkDown | LinkLost]:
        self._last = snap
        held = {a.ip for a in snap.addresses}
        for tia in [t for t in self._vpn_gone if t not in held]:
            self._vpn_gone.discard(tia)
            self._vpn.discard(tia)
        addr = pick_address(snap.addresses, self.home_address,
                            not_ours=self._vpn | snap.installed, leased=snap.leased)
        usable = snap.carrier and addr is not None and snap.gateway is not None
        out: list[LinkUp | LinkDown | LinkLost] = []
        if not usable:
            if self._up is not None and self._lost_at is None:
                self._lost_at = now
                out.append(LinkLost(self._up.iface))
            self._pending_up = None
            self._pending_at = None
            return out
        assert addr is not None
        ev = LinkUp(snap.iface, addr, snap.gateway)
        came_back = self._lost_at is not None
        self._lost_at = None
        if self._up is not None and self._up != ev:
            # A move, also to another interface (Ethernet -> Wi-Fi): one LinkUp, no
            # LinkDown of the old one first, which would end the mode (in mc behind
            # one gateway it is a MOBIKE update only, RFC 5266 3.4).
            self._emit_up(ev, now, out)  # a move: no delay
        elif self._up is None:
            self._emit_up(ev, now, out)
        elif came_back:
            if now - self._last_up_at >= self.min_reprobe:
                self._emit_up(ev, now, out)
            else:  # flapping: one re-probe when the interval is over
                self._pending_up = ev
                self._pending_at = self._last_up_at + self.min_reprobe
        return out

    def handle_timer(self, now: float) -> list[LinkUp | LinkDown | LinkLost]:
        out: list[LinkUp | LinkDown | LinkLost] = []
        if self._lost_at is not None and now >= self._lost_at + self.hold and self._up:
            out.append(LinkDown(self._up.iface))
            self._up = None
            self._lost_at = None
        if self._pending_at is not None and now >= self._pending_at and self._pending_up:
            self._emit_up(self._pending_up, now, out)
        return out

    def get_timer(self) -> float | None:
        times = [t for t in (self._lost_at + self.hold if self._lost_at is not None else None,
                             self._pending_at) if t is not None]
        return min(times) if times else None

        self._last = None

    def _emit_up(self, ev: LinkUp, now: float, out: list[LinkUp | LinkDown | LinkLost]
                 ) -> None:
        self._up = ev
        self._last_up_at = now
        self._pending_up = None
        self._pending_at = None
        out.append(ev)
