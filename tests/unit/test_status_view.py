"""What the mobile node publishes (app/mn/status_view.py), pure: the machine's
actions and the clients' answers in, a new Snapshot and history entries out."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface

from app.api import NAT_IPSEC, NAT_MOBILE_IP, Mode, Probe, Snapshot, State
from app.mn import mode_events as ev
from app.mn import status_view
from app.mn.registration import Registered
from app.net.gate_rules import ProvenPath

A = IPv4Address
COA = A("10.30.1.50")
BASE = Snapshot(profile="corp", home_address="10.20.1.10")


def test_a_new_mode_is_published_with_its_care_of_address_and_one_history_entry():
    s = ev.Status(State.TRUSTED, Mode.COLOCATED, "eth0", COA, None, None)
    snap, entries = status_view.status(BASE, s)
    assert (snap.state, snap.mode, snap.care_of_address) == (State.TRUSTED, Mode.COLOCATED,
                                                             str(COA))
    assert snap.last_handover_ms == BASE.last_handover_ms  # none measured: kept
    assert entries == [("mode", {"state": "trusted", "mode": "c"})]
    assert status_view.status(snap, s) == (snap, [])  # the same again: nothing new


def test_at_home_there_is_no_care_of_address():
    snap = Snapshot(profile="corp", home_address="h", care_of_address=str(COA))
    new, _ = status_view.status(snap, ev.Status(State.TRUSTED, Mode.HOME, "eth0", COA, None,
                                                None))
    assert new.care_of_address == ""
    none, _ = status_view.status(snap, ev.Status(State.OFFLINE, Mode.NONE, None, COA, None,
                                                 None))
    assert none.care_of_address == str(COA)  # no mode: not a care-of address of one


def test_untrusted_marks_the_home_agent_unreachable_and_an_error_is_an_error_entry():
    snap = Snapshot(profile="corp", home_address="h", home_agent_probe=Probe(True, 1.0, 5.0))
    new, entries = status_view.status(snap, ev.Status(State.UNTRUSTED, Mode.NONE, "eth0", None,
                                                      None, None))
    assert new.home_agent_probe == Probe(False, 1.0, 5.0)
    assert entries == [("mode", {"state": "untrusted", "mode": "none"})]
    err, entries = status_view.status(BASE, ev.Status(State.ERROR, Mode.NONE, None, None,
                                                      "denied 129", None))
    assert err.error == "denied 129"
    assert entries == [("error", {"state": "error", "mode": "none", "reason": "denied 129"})]


def test_a_steps_entries_in_order_then_the_machines_handover_time():
    path = ProvenPath("eth0", IPv4Interface("10.30.1.50/24"), Mode.COLOCATED, A("10.20.1.1"))
    actions: list[ev.Action] = [
        ev.Gate(None), ev.ClaimHome("eth1"), ev.Note("nat-rebind", "again"),
        ev.Status(State.TRUSTED, Mode.COLOCATED, "eth0", COA, None, 12.5, handover=True),
        ev.Gate(path)]
    snap, entries = status_view.published(BASE, actions, gate_at=7.25)
    assert snap.last_handover_ms == 12.5
    assert entries == [
        # While shut, lookups are refused at once (issue 19): the entry says so.
        ("gate", {"blocked": "true", "at": "7.250000",
                  "names": "refused until the network is decided"}),
        ("home-claim", {"interface": "eth1"}),
        ("nat-rebind", {"text": "again"}),
        ("mode", {"state": "trusted", "mode": "c"}),
        ("gate", {"blocked": "false", "at": "7.250000", "interface": "eth0",
                  "address": "10.30.1.50/24", "mode": "c"}),
        ("handover", {"mode": "c", "ms": "12.5"})]


def test_each_binding_and_each_answer_is_published_once():
    view = status_view.BindingView()
    b = Registered(COA, 600, 700.0, 0.01, False, False, 0)
    answer = (0.002, 100.0)
    snap, entries = view.update(BASE, answer, b, lambda t: t + 1000)
    assert snap.home_agent_probe == Probe(True, 2.0, 1100.0)
    assert snap.binding_expires == 1700.0
    assert [k for k, _ in entries] == ["probe-answered", "registered"]
    assert entries[1][1] == {"care_of": str(COA), "lifetime": "600", "rtt_ms": "10.00",
                             "renewal": "false"}
    assert view.update(snap, answer, b, lambda t: t + 1000) == (snap, [])
    # An equal binding that is another answer (a renewal's) is new; none is "none".
    again = Registered(COA, 600, 700.0, 0.01, False, False, 0)
    assert [k for k, _ in view.update(snap, answer, again, lambda t: t)[1]] == ["registered"]
    gone, entries = view.update(snap, answer, None, lambda t: t)
    assert gone.binding_expires == 0.0 and entries == []


def test_rfc5266_4_a_tia_in_use_is_published_and_gone_again():
    snap, entries = status_view.vpn_up(BASE, ev.UseTia(A("10.99.1.1"), "vpn.corp", ike_id=3,
                                                       nat_detected=True, local="a",
                                                       remote="b"))
    assert (snap.tunnel_inner_address, snap.vpn_gateway, snap.vpn_probe.reachable) == (
        "10.99.1.1", "vpn.corp", True)
    assert entries == [("vpn-up", {"tia": "10.99.1.1", "gateway": "vpn.corp", "ike": "3",
                                   "local": "a", "remote": "b", "nat": "true"})]
    gone = status_view.vpn_gone(snap)
    assert (gone.tunnel_inner_address, gone.vpn_gateway, gone.vpn_probe.reachable) == (
        "", "", False)


def test_the_nat_shown_is_the_vpns_in_mc_and_the_registrations_otherwise():
    view = status_view.VpnNatView()
    snap, entries = view.vpn(BASE, True)
    assert snap.nat_detected and entries == [("vpn-nat", {"detected": "true"})]
    assert view.vpn(snap, True)[1] == []  # the same again: no entry
    assert view.configured(BASE, Mode.VPN, udp_tunnel=False).nat_detected
    assert not view.configured(snap, Mode.COLOCATED, udp_tunnel=False).nat_detected
    # Outside mc a NAT the registration found is not hidden by a VPN without one.
    direct = view.configured(BASE, Mode.COLOCATED, udp_tunnel=True)
    assert view.vpn(direct, False)[0].nat_detected
    assert not view.configured(BASE, Mode.VPN, udp_tunnel=False).nat_detected


def test_rfc5266_4_the_status_names_the_layer_that_found_a_nat():
    """IPsec NAT-T for mc's outer path, Mobile IP (RFC 3519) for the TIA translated
    on its way to the home agent; both at once behind a NAT and a NATing gateway."""
    view = status_view.VpnNatView()
    snap, _ = view.vpn(BASE, True)
    assert snap.nat_layers == (NAT_IPSEC,)  # the SA crosses a NAT, mc not yet up
    snap = view.configured(snap, Mode.VPN, udp_tunnel=True)
    assert (snap.nat_detected, snap.nat_layers) == (True, (NAT_IPSEC, NAT_MOBILE_IP))
    snap, _ = view.vpn(snap, False)  # MOBIKE to a network without a NAT
    assert snap.nat_layers == (NAT_MOBILE_IP,) and snap.nat_detected
    snap = view.configured(snap, Mode.COLOCATED, udp_tunnel=False)
    assert (snap.nat_detected, snap.nat_layers) == (False, ())
    snap, _ = view.vpn(snap, True)  # kept alive inside (3.4.2): c's path has no NAT
    assert snap.nat_layers == ()
    snap = view.configured(snap, Mode.NONE, udp_tunnel=False)
    assert view.vpn_gone(view.vpn(snap, True)[0]).nat_layers == ()
    assert Snapshot.from_dbus(replace(BASE, nat_layers=(NAT_MOBILE_IP,)).to_dbus()
                              ).nat_layers == (NAT_MOBILE_IP,)


def test_binding_expires_is_cleared_when_the_link_is_left():
    """A link left (the machine back to no mode: probing a new link, or offline):
    the binding shown was the old link's, so BindingExpires goes to 0 until the next
    registration publishes its own; the same binding object does not come back."""
    view = status_view.BindingView()
    b = Registered(COA, 600, 1300.0, 0.002, False, False, 0)
    snap, _ = view.update(BASE, None, b, lambda t: t)
    snap, _ = status_view.status(snap, ev.Status(State.TRUSTED, Mode.COLOCATED, "eth0", COA,
                                                 None, None))
    assert snap.binding_expires == 1300.0
    for phase in (State.PROBING, State.OFFLINE):
        left, _ = status_view.status(snap, ev.Status(phase, Mode.NONE, None, None, None, None))
        assert left.binding_expires == 0.0, phase
        again, entries = view.update(left, (0.002, 5.0), b, lambda t: t)
        assert again.binding_expires == 0.0 and "registered" not in [k for k, _ in entries]
