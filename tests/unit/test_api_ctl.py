"""The status snapshot's D-Bus form and what trustroamctl prints from it."""

from __future__ import annotations

from app.api import NAT_IPSEC, NAT_MOBILE_IP, Mode, Policy, Probe, Snapshot, State
from app.ctl import render


def test_snapshot_round_trips_through_its_dbus_form():
    s = Snapshot(State.TRUSTED, Mode.COLOCATED, "corp", "eth0", "10.20.1.10", "10.30.1.100",
                 "", Probe(True, 1.25, 1000.0), Probe(), False, 1600.0, 12.5, "",
                 Policy.NEVER_VPN)
    assert Snapshot.from_dbus(s.to_dbus()) == s
    assert Snapshot.from_dbus({}) == Snapshot()


def test_status_reads_at_a_glance():
    s = Snapshot(State.TRUSTED, Mode.COLOCATED, "corp", "eth0", "10.20.1.10", "10.30.1.100",
                 "", Probe(True, 1.25, 995.0), Probe(), False, 1000.0 + 597, 12.5)
    text = render(s, 1000.0)
    assert text.splitlines()[0] == "trustroam: trusted, mode c (co-located care-of address)"
    assert "home agent     reachable, RTT 1.2 ms (answered 5 s ago)" in text
    assert "binding        9m 57s left" in text
    assert "last handover  12.5 ms" in text
    assert "VPN gateway" not in text  # never probed: not shown


def test_error_is_said_first():
    s = Snapshot(State.ERROR, profile="corp", error="denied by home agent: x (131)")
    lines = render(s, 0.0).splitlines()
    assert lines[0] == "trustroam: error"
    assert lines[1].strip() == "error          denied by home agent: x (131)"


def test_status_in_mode_mc_shows_tia_gateway_vpn_probe_and_nat():
    s = Snapshot(State.UNTRUSTED, Mode.VPN, "corp", "eth0", "10.20.1.10", "10.99.1.1",
                 "10.99.1.1", Probe(True, 2.0, 990.0), Probe(True, 3.25, 997.0), True,
                 1000.0 + 300, 850.0, vpn_gateway="vpn1.corp.example")
    text = render(s, 1000.0)
    assert text.splitlines()[0] == "trustroam: untrusted, mode mc (Mobile IP inside the VPN)"
    assert "  TIA            10.99.1.1 (tunnel inner address)" in text
    assert "  VPN gateway    vpn1.corp.example" in text
    assert "  VPN probe      reachable, RTT 3.2 ms (answered 3 s ago)" in text
    assert "  NAT            detected" in text


def test_rfc5266_4_status_and_tooltip_name_the_layers_that_found_a_nat():
    from ui.presentation import tooltip

    s = Snapshot(State.UNTRUSTED, Mode.VPN, "corp", "eth0", "10.20.1.10", "10.99.1.1",
                 "10.99.1.1", nat_detected=True, vpn_gateway="vpn1.corp.example",
                 nat_layers=(NAT_IPSEC, NAT_MOBILE_IP))
    assert ("  NAT            detected (IPsec NAT-T to the gateway; Mobile IP UDP tunnel, "
            "RFC 3519)") in render(s, 1000.0)
    assert "NAT detected (IPsec, Mobile IP)" in tooltip(s, "cafe")
    assert Snapshot.from_dbus(s.to_dbus()) == s


def test_status_shows_a_vpn_being_set_up_and_one_kept_alive_inside():
    setting_up = Snapshot(State.UNTRUSTED, Mode.NONE, "corp", "eth0", "10.20.1.10",
                          vpn_gateway="172.16.0.11")
    text = render(setting_up, 1000.0)
    assert "TIA            none yet (the VPN is not up)" in text
    assert "VPN probe      no answer yet" in text
    # RFC 5266 3.4.2: trusted (mode c) with the IKE SA kept alive inside.
    inside = Snapshot(State.TRUSTED, Mode.COLOCATED, "corp", "eth0", "10.20.1.10",
                      "10.30.1.100", "10.99.1.1", Probe(True, 1.0, 999.0),
                      Probe(False, 4.0, 940.0), vpn_gateway="172.16.0.11")
    text = render(inside, 1000.0)
    assert "VPN probe      not answering, RTT 4.0 ms (answered 60 s ago)" in text
    assert "VPN gateway    172.16.0.11" in text


def test_status_without_a_vpn_shows_no_vpn_rows():
    s = Snapshot(State.TRUSTED, Mode.HOME, "corp", "eth0", "10.20.1.10",
                 tunnel_inner_address="10.99.1.1")  # a stale TIA is not meaningful
    text = render(s, 1000.0)
    assert "TIA" not in text and "VPN" not in text and "10.99.1.1" not in text


def test_rfc5266_3_4_1_in_mc_the_home_agent_is_reached_through_the_vpn():
    """In mc the direct probe is expected to fail (that is why the VPN is up): the
    registration through the VPN is the proof the home agent is reached."""
    registered = Snapshot(state=State.UNTRUSTED, mode=Mode.VPN, profile="corp",
                          tunnel_inner_address="10.99.0.7", vpn_gateway="vpn1",
                          home_agent_probe=Probe(False, 3.0, 990.0), binding_expires=1300.0)
    text = render(registered, 1000.0)
    assert "home agent     reached through the VPN (registered through it)" in text, text
    assert "not answering" not in text.split("VPN probe")[0], text
    waiting = render(Snapshot(state=State.UNTRUSTED, mode=Mode.VPN, profile="corp",
                              home_agent_probe=Probe(False, 3.0, 990.0)), 1000.0)
    assert "home agent     through the VPN, not registered yet" in waiting, waiting
    # Outside mc the direct probe is the word.
    direct = render(Snapshot(state=State.UNTRUSTED, mode=Mode.NONE, profile="corp",
                             home_agent_probe=Probe(False, 3.0, 990.0)), 1000.0)
    assert "home agent     not answering" in direct, direct
