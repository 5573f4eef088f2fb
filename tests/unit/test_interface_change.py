"""Interface changes (Ethernet <-> Wi-Fi) in mode mc: MOBIKE only (RFC 5266 3.4), fake clock.

The link tracker (``app.mn.link_tracker``) between the link snapshots and the
real access-mode machine, in the shared discrete-event world
(``tests/support/world.py``): the node is in mc on pub through eth0, its Wi-Fi
(wlan0) is on the NATed network behind the same gateway, and eth0 is unplugged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

from app.api import Mode, State
from app.mn.access_mode import LinkLost, LinkUp
from app.mn.link_tracker import LinkTracker
from app.net.links import LinkSnapshot
from app.net.rtnl_links import IFF_LOWER_UP, RtnlLinks
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


# -- the link adapter without a configured interface (rtnetlink) --------------------------

class _Dumps:
    """What rtnetlink dumps now: links, routes and addresses (pyroute2's messages)."""

    def __init__(self) -> None:
        self.links = [{"index": 2, "ifname": "eth0", "flags": IFF_LOWER_UP},
                      {"index": 3, "ifname": "wlan0", "flags": IFF_LOWER_UP}]
        self.routes = [_default(2, "203.0.113.1", 0), _default(3, "192.168.50.1", 600)]
        self.addrs = [_addr(2, "203.0.113.150"), _addr(3, "192.168.50.130")]

    async def link(self, _op: str) -> AsyncIterator[dict[str, Any]]:
        return _each(self.links)

    async def route(self, _op: str, table: int) -> AsyncIterator[dict[str, Any]]:
        return _each([r for r in self.routes if r["table"] == table])

    async def addr(self, _op: str, index: int) -> AsyncIterator[dict[str, Any]]:
        return _each([a for a in self.addrs if a["index"] == index])


async def _each(items: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for i in items:
        yield i


def _default(oif: int, gateway: str, metric: int) -> dict[str, Any]:
    return {"event": "RTM_NEWROUTE", "table": 254, "dst": None, "dst_len": 0, "oif": oif,
            "gateway": gateway, "priority": metric, "family": 2}


def _addr(index: int, address: str) -> dict[str, Any]:
    return {"event": "RTM_NEWADDR", "family": 2, "index": index, "address": address,
            "prefixlen": 24, "flags": 0}


def test_rfc5266_3_4_without_a_configured_interface_an_unplugged_ethernet_hands_over_to_the_wifi():
    """The Wi-Fi has its lease and a default route of a higher metric; eth0 is
    unplugged (carrier, then its address: the kernel drops its routes without a
    notification).  The adapter must follow the default route to wlan0, at the
    carrier's loss already (eth0's route stays, linkdown, until its address goes)."""
    async def scenario() -> list[LinkSnapshot]:
        out: list[LinkSnapshot] = []
        dumps = _Dumps()
        links = RtnlLinks(None, out.append)
        links._query = dumps
        await links.refresh()
        assert out[-1].iface == "eth0"  # the best default route
        dumps.links[0] = {**dumps.links[0], "flags": 0}
        links._apply({"event": "RTM_NEWLINK", "index": 2, "ifname": "eth0", "flags": 0})
        links._emit()  # (a carrier change is reported at once, as _watch does)
        await _settle(links)
        # Before charon roams (it does when the address goes): the gate must be open
        # on the Wi-Fi for its MOBIKE update by then.
        assert out[-1].iface == "wlan0", out
        dumps.routes = dumps.routes[1:]
        dumps.addrs = dumps.addrs[1:]
        links._apply({**_addr(2, "203.0.113.150"), "event": "RTM_DELADDR"})
        await _settle(links)
        return out

    out = asyncio.run(scenario())
    tracker = LinkTracker(IPv4Address("10.20.1.10"))
    events = [ev for i, s in enumerate(out) for ev in tracker.observe(s, float(i))]
    assert events[-1] == LinkUp("wlan0", IPv4Interface("192.168.50.130/24"),
                                IPv4Address("192.168.50.1")), out
    assert events[-2:-1] == [LinkLost("eth0")], events


async def _settle(links: RtnlLinks) -> None:
    if links._refreshing is not None:
        await links._refreshing


def test_a_full_read_that_raced_a_notification_does_not_undo_it():
    """The DHCP client adds the default route while the adapter dumps (its route dump
    came before it): the notification it applied meanwhile must not be lost under
    the older dump, or the link stays without a gateway, never up again."""
    async def scenario() -> list[LinkSnapshot]:
        out: list[LinkSnapshot] = []
        dumps = _Dumps()
        links = RtnlLinks(None, out.append)
        links._query = dumps
        await links.refresh()
        late = dumps.routes[0]
        dumps.routes = dumps.routes[1:]  # eth0 between two leases: no default route yet
        dumps.addrs = dumps.addrs[1:]
        real_addr = dumps.addr

        async def addr(op: str, index: int) -> AsyncIterator[dict[str, Any]]:
            if late not in dumps.routes:  # the lease lands while the dump runs
                dumps.routes.insert(0, late)
                dumps.addrs.insert(0, _addr(2, "203.0.113.150"))
                links._apply(_addr(2, "203.0.113.150"))
                links._apply(late)
            return await real_addr(op, index)

        dumps.addr = addr  # type: ignore[method-assign]
        links._apply({**_addr(2, "203.0.113.150"), "event": "RTM_DELADDR"})
        await _settle(links)
        return out

    out = asyncio.run(scenario())
    assert out[-1] == LinkSnapshot("eth0", True, (IPv4Interface("203.0.113.150/24"),),
                                   IPv4Address("203.0.113.1"),
                                   leased=frozenset({IPv4Address("203.0.113.150")})), out


def test_a_full_read_takes_neither_the_home_address_nor_a_gateway_only_it_reaches():
    """Home -> pub without a configured interface: the new lease is on eth0 while the
    home address (the helper's, mode h) and the home link's default route are still
    there; the link is not up through the home link's gateway."""
    async def scenario() -> list[LinkSnapshot]:
        out: list[LinkSnapshot] = []
        dumps = _Dumps()
        dumps.links = dumps.links[:1]
        dumps.routes = [_default(2, "10.20.1.254", 0)]
        dumps.addrs = [{**_addr(2, "10.20.1.10"), "flags": 0x80},  # permanent: ours
                       _addr(2, "203.0.113.150")]
        links = RtnlLinks(None, out.append, ignore_address="10.20.1.10")
        links._query = dumps
        await links.refresh()
        return out

    out = asyncio.run(scenario())
    assert out[-1].addresses == (IPv4Interface("203.0.113.150/24"),) and (
        out[-1].gateway is None), out
    assert LinkTracker(IPv4Address("10.20.1.10")).observe(out[-1], 0.0) == []


def test_with_one_link_a_move_costs_no_full_read():
    """A full read is Python work on the handover's path: without another interface
    holding a default route, losing the link's carrier or address reads nothing."""
    async def scenario() -> RtnlLinks:
        dumps = _Dumps()
        dumps.links, dumps.routes, dumps.addrs = dumps.links[:1], dumps.routes[:1], (
            dumps.addrs[:1])
        links = RtnlLinks(None, lambda _s: None)
        links._query = dumps
        await links.refresh()
        links._refreshing = None
        links._apply({"event": "RTM_NEWLINK", "index": 2, "ifname": "eth0", "flags": 0})
        links._apply({**_addr(2, "203.0.113.150"), "event": "RTM_DELADDR"})
        return links

    assert asyncio.run(scenario())._refreshing is None
