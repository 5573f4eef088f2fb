"""What the tray says for each snapshot: pure functions, no display needed."""

from __future__ import annotations

import itertools
import time

from app.api import Mode, Probe, Snapshot, State
from ui import presentation as p


def test_icon_never_claims_security_the_snapshot_lacks() -> None:
    for state, mode in itertools.product(State, Mode):
        snap = Snapshot(state=state, mode=mode)
        secure = p.icon_name(snap) in p.SECURE_ICONS
        # Secure means: a trusted network, or the VPN carrying the traffic (mode mc).
        assert secure == (state is State.TRUSTED or (state is State.UNTRUSTED
                                                     and mode is Mode.VPN)), (state, mode)
    assert p.icon_name(None) == "trustroam-not-running"


def test_tooltip_names_addresses_probes_and_binding() -> None:
    snap = Snapshot(state=State.UNTRUSTED, mode=Mode.VPN, profile="corp",
                    home_address="10.20.1.10", care_of_address="203.0.113.5",
                    tunnel_inner_address="10.99.0.7",
                    home_agent_probe=Probe(True, 3.5, 100.0), vpn_probe=Probe(False, 40.0, 90.0),
                    binding_expires=1000.0 + 300)
    tip = p.tooltip(snap, "Cafe (Wi-Fi)")
    for part in ("protected by the VPN (mode mc)", "Network: Cafe (Wi-Fi)",
                 "Home address: 10.20.1.10", "Tunnel inner address: 10.99.0.7",
                 "Care-of address: 203.0.113.5", "Home agent: reachable, last RTT 3.5 ms",
                 "VPN gateway: NOT reachable, last RTT 40.0 ms",
                 "Binding: until " + time.strftime("%H:%M:%S", time.localtime(1300.0))):
        assert part in tip, (part, tip)
    assert p.tooltip(None, "") == "TrustRoam: TrustRoam service not running"


def test_errors_in_words() -> None:
    assert p.friendly_error("denied by home agent: mobile node failed authentication (131)") \
        == "The home agent refused the key (131): check the profile's key"
    assert p.friendly_error("binding lost: renewals went unanswered\nmore") == \
        "binding lost: renewals went unanswered"


def test_coalescer_one_notice_per_settled_change() -> None:
    c = p.Coalescer()
    assert c.observe(Snapshot()) is None  # the state at start is not news
    assert c.observe(Snapshot(state=State.PROBING)) is None
    assert c.observe(Snapshot(state=State.TRUSTED, mode=Mode.HOME)) == c.SETTLE_S
    n = c.settle()
    assert n is not None and "mode h" in n.text and not n.urgent
    assert c.settle() is None  # nothing new
    c.observe(Snapshot(state=State.PROBING))
    c.observe(Snapshot(state=State.TRUSTED, mode=Mode.HOME))
    assert c.settle() is None  # back where the user last heard: not announced
    c.observe(Snapshot(state=State.UNTRUSTED, mode=Mode.NONE))
    n = c.settle()
    assert n is not None and n.urgent and "NOT protected" in n.text
    c.observe(None)
    n = c.settle()
    assert n is not None and n.text == "TrustRoam service not running"
