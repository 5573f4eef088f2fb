"""The user's per-network "Allow local network" choices: how a network is recognised,
and the file that keeps them (issue 19)."""

from __future__ import annotations

import json
from ipaddress import IPv4Interface

import pytest

from app.net import gate_lan
from app.net.gate_lan import network_identity
from app.service.lan import FILE, LanChoices, parse
from app.service.state import StateError
from tests.requirements import require_root

ROUTES = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n"
          "eth0\t00000000\t0132A8C0\t0003\t0\t0\t0\t00000000\n"  # default via 192.168.50.1
          "eth0\t0032A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n")
ARP = ("IP address       HW type     Flags       HW address            Mask     Device\n"
       "192.168.50.1     0x1         0x2         02:AA:bb:cc:dd:01     *        eth0\n")
LINK = IPv4Interface("192.168.50.100/24")


def test_a_network_is_its_on_link_subnet_and_its_routers_mac():
    assert network_identity("eth0", LINK, routes=ROUTES, arp=ARP) == (
        "192.168.50.0/24 router 02:aa:bb:cc:dd:01")


def test_no_identity_without_a_router_seen_on_that_link():
    assert network_identity("eth1", LINK, routes=ROUTES, arp=ARP) is None  # other link
    assert network_identity("eth0", LINK, routes=ROUTES, arp=ARP.splitlines()[0]) is None
    off_link = IPv4Interface("10.1.1.5/24")  # the default route's router is not on it
    assert network_identity("eth0", off_link, routes=ROUTES, arp=ARP) is None
    incomplete = ARP.replace("0x2", "0x0")
    assert network_identity("eth0", LINK, routes=ROUTES, arp=incomplete) is None


@pytest.fixture
def here(monkeypatch):
    ident = "192.168.50.0/24 router 02:aa:bb:cc:dd:01"
    monkeypatch.setattr("app.service.lan.network_identity",
                        lambda iface, link: ident if iface == "eth0" else None)
    return ident


def test_a_choice_is_kept_for_its_network_across_restarts(tmp_path, here):
    require_root("the state file is read back only when root's")
    c = LanChoices(tmp_path)
    assert not c.wanted("eth0", LINK)
    assert c.choose("eth0", LINK, True) == here
    assert c.wanted("eth0", LINK) and not c.wanted("eth1", LINK)
    assert (tmp_path / FILE).stat().st_mode & 0o777 == 0o600
    assert LanChoices(tmp_path).wanted("eth0", LINK)  # a new helper reads it back
    c.choose("eth0", LINK, False)
    assert not LanChoices(tmp_path).wanted("eth0", LINK)


def test_a_network_that_cannot_be_told_apart_is_not_recorded(tmp_path, here):
    with pytest.raises(ValueError, match="cannot tell the network on eth1 apart"):
        LanChoices(tmp_path).choose("eth1", LINK, True)


@pytest.mark.parametrize("doc,why", [
    ([], "must be an object"),
    ({"version": 2, "networks": []}, "version: must be 1"),
    ({"version": 1, "networks": ["anything"]}, "not a network: 'anything'"),
    ({"version": 1, "networks": "x"}, "must be a list"),
    ({"version": 1, "networks": [], "extra": 1}, "must be an object"),
])
def test_a_bad_choices_file_is_refused_naming_the_field(doc, why):
    with pytest.raises(StateError, match=why):
        parse(doc, "allow-lan.json")


def test_a_bad_choices_file_opens_nothing(tmp_path, here):
    require_root("the state file is read back only when root's")
    (tmp_path / FILE).write_text(json.dumps({"version": 1, "networks": [here, 5]}))
    (tmp_path / FILE).chmod(0o600)
    assert LanChoices(tmp_path).networks == []


def test_getifaddrs_finds_the_machines_own_addresses():
    assert ("lo", IPv4Interface("127.0.0.1/8")) in gate_lan.ipv4_interfaces()
    assert gate_lan.link_interface("lo", IPv4Interface("127.0.0.1/8").ip) == IPv4Interface(
        "127.0.0.1/8")
    assert gate_lan.link_interface("lo", IPv4Interface("127.0.0.2/8").ip) is None
