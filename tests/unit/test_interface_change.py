"""Interface changes (Ethernet <-> Wi-Fi) in mode mc: MOBIKE only (RFC 5266 3.4), fake clock.

The link tracker (``app.mn.link_tracker``) between the link snapshots and the
real access-mode machine, in the shared discrete-event world
(``tests/support/world.py``): the node is in mc on pub through eth0, its Wi-Fi
(wlan0) is on the NATed network behind the same gateway, and eth0 is unplugged.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from app.api import Mode, State
from app.mn.access_mode import LinkLost, LinkUp
from app.mn.link_tracker import LinkTracker
from app.net.links import LinkSnapshot
from tests.support.world import NETS, TIA, World


def observe(w: World, tracker: LinkTracker, snap: LinkSnapshot) -> list[object]:
    """A snapshot through the tracker into the machine, as the driver feeds them."""
    events: list[object] = []
    for ev in tracker.observe(snap, w.now):
        events.append(ev)
        if isinstance(ev, LinkUp):
            w.move(next(k for k, n in NETS.items() if n.up == ev))
        else:
            w.apply(w.m.handle(ev, w.now))
    return events


def usable(net: str) -> LinkSnapshot:
    up = NETS[net].up
    return LinkSnapshot(up.iface, True, (up.address,), up.gateway)


def test_rfc5266_3_4_an_interface_change_behind_one_gateway_is_a_mobike_update_only():
    w = World()
    tracker = LinkTracker(IPv4Address(str(w.home)))
    observe(w, tracker, usable("pub"))
    w.run(20)
    assert (w.m.phase, w.m.mode, w.ha_coa()) == (State.UNTRUSTED, Mode.VPN, TIA)
    replies, gates, t = len(w.replies), len(w.gates), w.now
    # eth0 unplugged: its carrier goes, then the link adapter follows the default
    # route to the Wi-Fi, which has had its own lease on the NATed network all along.
    assert observe(w, tracker, LinkSnapshot("eth0", False, (), None)) == [LinkLost("eth0")]
    w.run(0.2)
    observe(w, tracker, usable("nat-wlan"))
    w.run(20)
    assert (w.m.phase, w.m.mode) == (State.UNTRUSTED, Mode.VPN)
    assert all(g.path is not None for _, g in w.gates[gates:]), "the gate shut on the change"
    assert w.gate is not None and w.gate.iface == "wlan0" and w.gate.mode is Mode.VPN
    assert len(w.replies) == replies, "the TIA was registered again with the home agent"
    assert not [s for tm, s in w.sent if tm >= t and s.through_vpn], "a request through the VPN"
    assert w.ha_coa() == TIA
    w.agrees()
