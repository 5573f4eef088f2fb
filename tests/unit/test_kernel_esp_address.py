"""With kernel ESP, charon's virtual IP (the TIA) sits on the physical interface: never
the link's address (RFC 5266 3.4: the direct request goes "without any VPN
encapsulation"; from the TIA, charon's policy would encrypt it and its answer would
declare an untrusted network trusted).

After a MOBIKE move (pub -> nat in mode mc) the interface lists the TIA, which
charon kept, and the new lease; the TIA may come first or last.  The tracker knows
charon's addresses from its SAs (the driver hands it the TIA), from charon's
routing table (220) in the snapshot, and, as a belt, a /32 the network did not
lease is not the link's.  Driven through both link adapters as well.
"""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Interface
from typing import Any

import pytest

from app.mn.access_mode import LinkLost, LinkUp
from app.mn.link_tracker import LinkTracker
from app.net.links import LinkSnapshot
from app.net.nm_links import NmLinks
from app.net.rtnl_links import RtnlLinks

HOME = IPv4Address("10.20.1.10")
TIA = IPv4Interface("10.99.1.1/32")
PUB = IPv4Interface("192.168.50.23/24")
NAT = IPv4Interface("192.168.60.40/24")
G_PUB, G_NAT = IPv4Address("192.168.50.1"), IPv4Address("192.168.60.1")


def snap(*addrs: IPv4Interface, gw: IPv4Address = G_NAT, **kw: Any) -> LinkSnapshot:
    return LinkSnapshot("eth0", True, addrs, gw, **kw)


@pytest.mark.parametrize("order", ["tia-first", "tia-last"])
def test_rfc5266_3_4_the_tia_from_charons_sa_is_never_the_link_address(order: str) -> None:
    t = LinkTracker(HOME)
    assert t.observe(snap(PUB, gw=G_PUB), 0.0) == [LinkUp("eth0", PUB, G_PUB)]
    assert t.vpn_address(TIA.ip, 1.0) == []  # charon's SA: the TIA is its
    listed = (TIA, NAT) if order == "tia-first" else (NAT, TIA)
    assert t.observe(snap(*listed), 2.0) == [LinkUp("eth0", NAT, G_NAT)]


@pytest.mark.parametrize("order", ["tia-first", "tia-last"])
def test_rfc5266_3_4_an_address_charons_routes_name_is_never_the_link_address(
        order: str) -> None:
    """Known from table 220 alone (no SA event yet), even with a prefix not /32."""
    tia24 = IPv4Interface("10.99.1.1/24")
    listed = (tia24, NAT) if order == "tia-first" else (NAT, tia24)
    t = LinkTracker(HOME)
    got = t.observe(snap(*listed, installed=frozenset({TIA.ip})), 0.0)
    assert got == [LinkUp("eth0", NAT, G_NAT)]


def test_rfc5266_3_4_a_host_address_without_a_lease_is_not_the_link_address() -> None:
    """The belt: charon's SA not known (yet, or any more) and no routes seen."""
    t = LinkTracker(HOME)
    assert t.observe(snap(TIA, NAT), 0.0) == [LinkUp("eth0", NAT, G_NAT)]
    leased32 = IPv4Interface("100.64.7.9/32")  # some networks lease a /32: still ours
    t2 = LinkTracker(HOME)
    assert t2.observe(snap(TIA, leased32, leased=frozenset({leased32.ip})), 0.0) == [
        LinkUp("eth0", leased32, G_NAT)]


def test_rfc5266_3_4_a_link_whose_only_address_is_charons_is_not_up() -> None:
    t = LinkTracker(HOME)
    t.observe(snap(PUB, gw=G_PUB), 0.0)
    t.vpn_address(TIA.ip, 0.5)
    # Re-plugged: the old lease is gone, the TIA stayed, the router's default is here.
    assert t.observe(snap(TIA), 1.0) == [LinkLost("eth0")]
    assert t.observe(snap(TIA, NAT), 1.2) == [LinkUp("eth0", NAT, G_NAT)]
    fresh = LinkTracker(HOME)
    assert fresh.observe(snap(TIA), 0.0) == []


def test_a_tia_learnt_after_the_snapshot_is_judged_again() -> None:
    """The address can show before charon's event names it (not /32 here: no belt)."""
    tia24 = IPv4Interface("10.99.1.1/24")
    t = LinkTracker(HOME)
    assert t.observe(snap(tia24), 0.0) == [LinkUp("eth0", tia24, G_NAT)]
    assert t.vpn_address(tia24.ip, 0.1) == [LinkLost("eth0")]


def test_a_gone_sas_tia_stays_excluded_until_it_leaves_the_link() -> None:
    tia24 = IPv4Interface("10.99.1.1/24")
    t = LinkTracker(HOME)
    t.vpn_address(tia24.ip, 0.0)
    t.vpn_address_gone(tia24.ip)
    assert t.observe(snap(tia24, NAT), 1.0) == [LinkUp("eth0", NAT, G_NAT)]
    t.observe(snap(NAT), 2.0)  # charon removed it
    t2 = t.observe(snap(tia24), 3.0)  # (now another's: a plain address again)
    assert t2 == [LinkUp("eth0", tia24, G_NAT)]


# -- through the rtnetlink adapter -------------------------------------------------

def addr_msg(event: str, a: IPv4Interface, *, permanent: bool) -> dict[str, Any]:
    return {"event": event, "family": 2, "index": 2, "address": str(a.ip),
            "prefixlen": a.network.prefixlen, "flags": 0x80 if permanent else 0}


def route_msg(event: str, table: int, *, dst: str | None, dst_len: int,
              gateway: str | None = None, prefsrc: str | None = None) -> dict[str, Any]:
    return {"event": event, "table": table, "dst": dst, "dst_len": dst_len, "oif": 2,
            "gateway": gateway, "prefsrc": prefsrc, "family": 2}


@pytest.mark.parametrize("tia_first", [True, False])
def test_rfc5266_3_4_rtnetlink_after_a_move_reports_charons_tia_and_the_lease(
        tia_first: bool) -> None:
    out: list[LinkSnapshot] = []
    links = RtnlLinks("eth0", out.append)
    links._index = 2
    links._snap = LinkSnapshot("eth0", True, (PUB,), G_PUB)
    tracker = LinkTracker(HOME)
    tracker.observe(links._snap, 0.0)
    tia = addr_msg("RTM_NEWADDR", TIA, permanent=True)
    lease = addr_msg("RTM_NEWADDR", NAT, permanent=False)  # DHCP: a lifetime
    msgs = [route_msg("RTM_NEWROUTE", 220, dst="10.0.0.0", dst_len=8, prefsrc=str(TIA.ip)),
            addr_msg("RTM_DELADDR", PUB, permanent=False),
            *((tia, lease) if tia_first else (lease, tia)),
            route_msg("RTM_NEWROUTE", 254, dst=None, dst_len=0, gateway=str(G_NAT))]
    for m in msgs:
        assert links._relevant(m), m
        links._apply(m)
    s = links._snap
    assert s.installed == {TIA.ip} and s.leased == {NAT.ip}, s
    assert tracker.observe(s, 1.0) == [LinkUp("eth0", NAT, G_NAT)]
    links._apply(route_msg("RTM_DELROUTE", 220, dst="10.0.0.0", dst_len=8,
                           prefsrc=str(TIA.ip)))
    assert links._snap.installed == frozenset()


# -- through the NetworkManager adapter ---------------------------------------------

class _V:
    def __init__(self, value: object) -> None:
        self.value = value


@pytest.mark.parametrize("tia_first", [True, False])
def test_rfc5266_3_4_networkmanagers_address_data_with_the_tia_gives_the_lease(
        tia_first: bool) -> None:
    data = [{"address": _V(str(a.ip)), "prefix": _V(a.network.prefixlen)}
            for a in ((TIA, NAT) if tia_first else (NAT, TIA))]
    props = {("/dev/2", "State"): 100, ("/dev/2", "Ip4Config"): "/ip4/7",
             ("/ip4/7", "AddressData"): data, ("/ip4/7", "Gateway"): str(G_NAT),
             ("/dev/2", "Dhcp4Config"): "/dhcp4/7",
             ("/dhcp4/7", "Options"): {"ip_address": _V(str(NAT.ip))}}
    out: list[LinkSnapshot] = []
    nm = NmLinks(bus=None, iface="eth0", on_snapshot=out.append)  # type: ignore[arg-type]

    async def device() -> tuple[str, str]:
        return "eth0", "/dev/2"

    async def get(path: str, interface: str, prop: str) -> object:
        return props.get((path, prop))

    nm._device = device  # type: ignore[method-assign]
    nm._get = get  # type: ignore[method-assign]
    asyncio.run(nm.refresh())
    assert out[-1].leased == {NAT.ip}, out[-1]
    assert LinkTracker(HOME).observe(out[-1], 0.0) == [LinkUp("eth0", NAT, G_NAT)]
