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


def test_only_networkmanagers_own_connection_makes_the_helper_read_it_again() -> None:
    """Any uid may send a signal with NetworkManager's path and interface; only NM's
    current unique name (the bus daemon's word, GetNameOwner then its own
    NameOwnerChanged) triggers a re-read (each re-read cancels pending gratuitous ARP)."""
    from app.dbus import Message, MessageType

    nm = NmLinks(bus=None, iface="eth0", on_snapshot=lambda s: None)  # type: ignore[arg-type]
    refreshes: list[str] = []

    def soon(msg: Message) -> None:
        nm._pending = False  # as _refresh_soon does when it runs
        refreshes.append(str(msg.sender))

    nm.owner = ":1.7"

    def signal(sender: str, member: str = "StateChanged", body: list[object] | None = None,
               interface: str = "org.freedesktop.NetworkManager.Device") -> Message:
        return Message(message_type=MessageType.SIGNAL, sender=sender,
                       path="/org/freedesktop/NetworkManager/Devices/2",
                       interface=interface, member=member, signature="uuu",
                       body=body or [100, 30, 0])

    import asyncio
    from unittest import mock

    with mock.patch.object(asyncio, "get_running_loop") as loop:
        loop.return_value.create_task.side_effect = lambda coro: coro.close()
        for msg in (signal(":1.66"), signal(":1.7")):
            nm._on_message(msg)
            if loop.return_value.create_task.called:
                soon(msg)
                loop.return_value.create_task.reset_mock()
        forged = Message(message_type=MessageType.SIGNAL, sender=":1.66",
                         path="/org/freedesktop/DBus", interface="org.freedesktop.DBus",
                         member="NameOwnerChanged", signature="sss",
                         body=["org.freedesktop.NetworkManager", ":1.7", ":1.66"])
        nm._on_message(forged)
        nm._on_message(signal(":1.66"))
        assert not loop.return_value.create_task.called
    assert refreshes == [":1.7"]
    assert nm.owner == ":1.7"
