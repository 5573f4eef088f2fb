"""A network's identity (app/net/network_identity.py) and the verdicts' file
(app/service/known_networks_store.py): the ARP codec, the digest, a file that
cannot be believed."""

from __future__ import annotations

import asyncio
import json
import struct
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from app.mn.mode_events import LinkLost, LinkUp, RememberNetwork
from app.net.network_identity import arp_reply_sender, arp_request, identity
from app.service.known_networks_store import FILE, KnownNetworksStore, parse

OWN_MAC, ROUTER_MAC = bytes.fromhex("02aabbccdd01"), bytes.fromhex("02aabbccdd99")
OWN, ROUTER = IPv4Address("203.0.113.50"), IPv4Address("203.0.113.1")


def reply(op: int = 2, sha: bytes = ROUTER_MAC, spa: IPv4Address = ROUTER,
          tpa: IPv4Address = OWN) -> bytes:
    eth = OWN_MAC + ROUTER_MAC + b"\x08\x06"
    return eth + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, spa.packed, OWN_MAC,
                             tpa.packed)


def test_the_request_asks_who_has_the_router_from_the_links_own_address():
    f = arp_request(OWN_MAC, OWN, ROUTER)
    assert f[:6] == b"\xff" * 6 and f[6:12] == OWN_MAC and f[12:14] == b"\x08\x06"
    assert struct.unpack("!H", f[20:22])[0] == 1  # request
    assert f[28:32] == OWN.packed and f[38:42] == ROUTER.packed


def test_only_the_routers_reply_to_us_gives_its_mac():
    assert arp_reply_sender(reply(), ROUTER, OWN) == ROUTER_MAC
    assert arp_reply_sender(reply(op=1), ROUTER, OWN) is None  # a request
    assert arp_reply_sender(reply(spa=IPv4Address("203.0.113.7")), ROUTER, OWN) is None
    assert arp_reply_sender(reply(tpa=IPv4Address("203.0.113.8")), ROUTER, OWN) is None
    assert arp_reply_sender(reply(sha=b"\x00" * 6), ROUTER, OWN) is None
    assert arp_reply_sender(reply()[:30], ROUTER, OWN) is None  # truncated
    assert arp_reply_sender(b"\x00" * 12 + b"\x08\x00" + reply()[14:], ROUTER, OWN) is None


def test_the_identity_changes_with_the_router_mac_subnet_or_router_and_names_none_of_them():
    a = IPv4Interface("203.0.113.50/24")
    base = identity(a, ROUTER, ROUTER_MAC)
    assert len(base) == 32 and "203" not in base and ROUTER_MAC.hex() not in base
    assert identity(IPv4Interface("203.0.113.51/24"), ROUTER, ROUTER_MAC) == base  # new lease
    assert identity(a, ROUTER, OWN_MAC) != base
    assert identity(IPv4Interface("203.0.113.50/25"), ROUTER, ROUTER_MAC) != base
    assert identity(a, IPv4Address("203.0.113.2"), ROUTER_MAC) != base


def test_the_store_keeps_verdicts_across_restarts_and_forgets_answered_ones(tmp_path: Path):
    s = KnownNetworksStore(tmp_path)
    s.remember(RememberNetwork("a" * 32, True, 100.0))
    s.remember(RememberNetwork("b" * 32, True, 200.0))
    assert (tmp_path / FILE).stat().st_mode & 0o777 == 0o600
    assert KnownNetworksStore(tmp_path).load() == {"a" * 32: 100.0, "b" * 32: 200.0}
    s.remember(RememberNetwork("a" * 32, False, 300.0))
    assert KnownNetworksStore(tmp_path).load() == {"b" * 32: 200.0}


@pytest.mark.parametrize("doc, field", [
    ({"version": 2, "untrusted": {}}, "version"),
    ({"version": 1, "untrusted": []}, "untrusted"),
    ({"version": 1, "untrusted": {"203.0.113.1": 1.0}}, "not a network identity"),
    ({"version": 1, "untrusted": {"a" * 32: "yesterday"}}, "not a time"),
    ({"version": 1, "untrusted": {"a" * 32: float("inf")}}, "not a time"),
    ({"version": 1, "untrusted": {"a" * 32: True}}, "not a time"),
])
def test_a_file_that_cannot_be_believed_names_the_field(doc: object, field: str):
    with pytest.raises(ValueError, match=field):
        parse(doc)


def test_a_bad_file_is_ignored_with_a_warning_naming_it(tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture):
    (tmp_path / FILE).write_text(json.dumps({"version": 1, "untrusted": {"x": 1}}))
    (tmp_path / FILE).chmod(0o600)
    assert KnownNetworksStore(tmp_path).load() == {}
    assert FILE in caplog.text and "not a network identity" in caplog.text


# -- the driver asks it once per link, and never loses a link-up over it --------------

def vpn_driver(identify: Any) -> Any:
    from types import SimpleNamespace

    from app.mn.driver import MobileNodeDriver
    from app.mn.known_networks import KnownNetworksConfig
    from app.mn.profile import Profile
    from app.net.arp import ArpAnnouncer
    from app.vpn.profile import VpnConfig

    profile = Profile("corp", IPv4Address("10.20.1.10"), IPv4Network("10.20.1.0/24"),
                      IPv4Address("10.20.1.1"), 256, gate_enabled=False,
                      vpn=VpnConfig(("172.16.0.11",), "mn@lab",
                                    intranet=(IPv4Network("10.0.0.0/8"),)),
                      known_networks=KnownNetworksConfig(True))
    return MobileNodeDriver(profile, b"k" * 16, SimpleNamespace(arp=ArpAnnouncer()),
                            None, charon=SimpleNamespace(gateway=None), identify=identify)


UP = LinkUp("eth0", IPv4Interface("203.0.113.50/24"), ROUTER)


async def test_a_failing_or_hanging_identity_is_none_and_the_link_up_goes_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    import app.mn.driver as drv

    async def broken(*_: Any) -> str | None:
        raise RuntimeError("no packet sockets here")

    d = vpn_driver(broken)
    try:
        assert await d._network_of(UP) is None
        assert "no network identity (no packet sockets here)" in caplog.text
    finally:
        d.sockets.close()

    async def hangs(*_: Any) -> str | None:
        await asyncio.sleep(3600)
        return "x"

    monkeypatch.setattr(drv, "IDENTIFY_TIMEOUT", 0.05)
    d = vpn_driver(hangs)
    try:
        assert await d._network_of(UP) is None
    finally:
        d.sockets.close()


async def test_the_identity_is_asked_once_per_link_with_the_profiles_context():
    asked: list[tuple[Any, ...]] = []

    async def ident(*args: Any) -> str | None:
        asked.append(args)
        return "a" * 32

    d = vpn_driver(ident)
    try:
        assert await d._network_of(UP) == "a" * 32
        assert await d._network_of(UP) == "a" * 32  # the same link reported again
        assert len(asked) == 1 and asked[0][3] == "corp|10.20.1.1|256"
        await d._link_event(LinkLost("eth0"), 1.0)  # it may come back elsewhere
        await d._network_of(UP)
        assert len(asked) == 2
    finally:
        d.sockets.close()


def test_the_identity_differs_per_profile():
    a = IPv4Interface("203.0.113.50/24")
    assert identity(a, ROUTER, ROUTER_MAC, "corp|10.20.1.1|256") != identity(
        a, ROUTER, ROUTER_MAC, "other|10.9.0.1|300")


def test_a_time_of_400_digits_is_no_time():
    with pytest.raises(ValueError, match="not a time"):
        parse({"version": 1, "untrusted": {"a" * 32: 10 ** 400}})
