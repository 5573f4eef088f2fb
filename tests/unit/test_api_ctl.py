"""The status snapshot's D-Bus form and what trustroamctl prints from it."""

from __future__ import annotations

from app.api import Mode, Policy, Probe, Snapshot, State
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
