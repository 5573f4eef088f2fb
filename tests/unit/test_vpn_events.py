"""VICI events (as charon 5.9.8 sends them) into the machine's typed VPN events."""

from __future__ import annotations

import copy
from ipaddress import IPv4Address

from app.vpn.events import (
    ChildRekeyed,
    DownKind,
    Endpoint,
    IkeRekeyed,
    MobikeUpdate,
    VpnDown,
    VpnUp,
    sa_infos,
    translate,
)
from tests.unit import vici_events as ev

PUB = Endpoint(IPv4Address("203.0.113.115"), 4500)
NAT = Endpoint(IPv4Address("192.168.50.115"), 4500)
GW1 = Endpoint(IPv4Address("172.16.0.11"), 4500)


def test_vpn_up_when_the_child_sa_is_installed_with_the_tia_from_local_vips():
    assert translate(*ev.CHILD_UP) == [VpnUp(IPv4Address("10.99.1.1"), GW1, PUB, False, 1)]


def test_ike_up_alone_is_not_vpn_up():
    """IKE_AUTH done but no CHILD SA yet: nothing can flow through the tunnel."""
    assert translate(*ev.IKE_UP) == []


def test_nat_flag_shows_only_a_nat_on_our_side():
    """The status's NAT flag (display only): kernel-libipsec fakes nat-remote on every
    SA; nat-local is a NAT in front of us.  No RFC 5266 section 4 rule is held here."""
    name, msg = copy.deepcopy(ev.CHILD_UP)
    msg["trustroam"]["nat-local"] = b"yes"
    (up,) = translate(name, msg)
    assert isinstance(up, VpnUp) and up.nat_detected


def test_rfc5266_3_3_mobike_update_carries_the_new_endpoints_not_the_old():
    """ike-update: top-level local-host/remote-host are the NEW endpoints; the SA section
    still shows the old address (203.0.113.115)."""
    assert translate(*ev.IKE_UPDATE) == [MobikeUpdate(NAT, GW1, 1)]


def test_child_rekey():
    assert translate(*ev.CHILD_REKEY) == [ChildRekeyed(1, "intranet")]


def test_ike_rekey():
    msg = {"trustroam": {"old": {"uniqueid": b"1", "state": b"REKEYED"},
                         "new": {"uniqueid": b"4", "state": b"ESTABLISHED"}}}
    assert translate(b"ike-rekey", msg) == [IkeRekeyed(1, 4)]


def test_down_events_have_no_up_key_and_give_one_vpn_down():
    """'up' is absent (not "no") in down events; terminate sends ike-updown then
    child-updown with the IKE SA DELETING: one VpnDown, not two."""
    assert "up" not in ev.IKE_DOWN[1] and "up" not in ev.CHILD_DOWN[1]
    assert translate(*ev.IKE_DOWN) == [VpnDown("IKE SA closed (DELETING)", 1,
                                               DownKind.IKE_GONE)]
    assert translate(*ev.CHILD_DOWN) == []


def test_child_closed_while_ike_stays_is_vpn_down():
    name, msg = copy.deepcopy(ev.CHILD_DOWN)
    msg["trustroam"]["state"] = b"ESTABLISHED"
    assert translate(name, msg) == [VpnDown("CHILD SA closed, IKE SA remains", 1,
                                            DownKind.CHILD)]


def test_up_no_would_be_down_too():
    name, msg = copy.deepcopy(ev.IKE_DOWN)
    msg["up"] = b"no"
    assert translate(name, msg) == [VpnDown("IKE SA closed (DELETING)", 1, DownKind.IKE_GONE)]


def test_other_connections_are_ignored():
    for name, msg in (ev.CHILD_UP, ev.IKE_UPDATE, ev.IKE_DOWN, ev.CHILD_REKEY):
        other = {("someone-else" if k == "trustroam" else k): v for k, v in msg.items()}
        assert translate(name, other) == []
        assert translate(name, msg, conn="someone-else") == []


def test_other_children_are_ignored():
    name, msg = copy.deepcopy(ev.CHILD_UP)
    msg["trustroam"]["child-sas"]["intranet-1"]["name"] = b"printer"
    assert translate(name, msg) == []


def test_garbage_is_ignored_not_raised():
    for msg in ({}, {"trustroam": b"x"}, {"trustroam": {"uniqueid": b"nan"}},
                {"up": b"yes", "trustroam": {"uniqueid": b"1", "child-sas": b"x"}}):
        for name in (b"ike-updown", b"child-updown", b"ike-update", b"ike-rekey",
                     b"child-rekey", b"log"):
            if name != b"ike-updown" or "up" in msg:
                assert translate(name, msg) == []
    bogus = {"local-host": b"bogus", "local-port": b"4500", "remote-host": b"172.16.0.11",
             "remote-port": b"x", "trustroam": {"uniqueid": b"2"}}
    assert translate(b"ike-update", bogus) == []


def test_list_sas_gives_tia_endpoints_and_child_state():
    ike = {k: v for k, v in copy.deepcopy(ev.CHILD_UP[1]).items() if k != "up"}
    (sa,) = sa_infos([ike, {"other": {"uniqueid": b"9"}}])
    assert sa.up and sa.ike_id == 1 and sa.tia == IPv4Address("10.99.1.1")
    assert sa.local == PUB and sa.remote == GW1 and not sa.nat_detected
    ike["trustroam"]["child-sas"] = {}
    (sa,) = sa_infos([ike])
    assert not sa.up
