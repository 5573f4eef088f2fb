"""The kernel's carrier reaches the link trackers at once, NetworkManager or not."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

from app.net.carrier import IFF_LOWER_UP, CarrierWatch
from app.net.links import LinkSnapshot
from app.net.nm_links import NmLinks


def link(name: str, up: bool) -> dict[str, object]:
    return {"event": "RTM_NEWLINK", "ifname": name, "flags": IFF_LOWER_UP if up else 0}


def test_every_carrier_change_of_the_interface_is_reported_once():
    seen: list[tuple[str, bool]] = []
    w = CarrierWatch("eth0", lambda n, up: seen.append((n, up)))
    for msg in (link("eth0", True), link("eth0", True), link("wlan0", False),
                link("eth0", False), {"event": "RTM_NEWADDR"}, link("eth0", True)):
        w.observe(msg)
    assert seen == [("eth0", True), ("eth0", False), ("eth0", True)]


def test_networkmanagers_activated_device_without_carrier_is_a_lost_link():
    out: list[LinkSnapshot] = []
    nm = NmLinks(bus=None, iface="eth0", on_snapshot=out.append)  # type: ignore[arg-type]
    view = LinkSnapshot("eth0", True, (IPv4Interface("10.30.1.50/24"),),
                        IPv4Address("10.30.1.1"))
    nm._report(view)  # NetworkManager: activated; the kernel has said nothing yet
    assert out[-1].carrier
    nm._carrier.observe(link("eth0", False))  # the cable is pulled: NM still "activated"
    assert out[-1] == LinkSnapshot("eth0", False, view.addresses, view.gateway)
    nm._carrier.observe(link("eth0", True))
    assert out[-1].carrier
