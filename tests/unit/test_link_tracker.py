"""Link snapshots -> LinkUp/LinkDown: real moves at once, flaps debounced (fake clock)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

from app.mn.access_mode import LinkDown, LinkLost, LinkUp
from app.mn.link_tracker import LinkTracker
from app.net.links import LinkSnapshot

HOME = IPv4Address("10.20.1.10")
A = IPv4Interface("10.30.1.100/24")
B = IPv4Interface("10.30.2.100/24")
GA, GB = IPv4Address("10.30.1.1"), IPv4Address("10.30.2.1")


def snap(addr=A, gw=GA, carrier=True, extra=()):
    return LinkSnapshot("eth0", carrier, (*extra, addr) if addr else tuple(extra), gw)


def test_first_usable_link_is_reported_at_once():
    t = LinkTracker(HOME)
    assert t.observe(snap(gw=None), 0.0) == []  # no gateway yet: DHCP sets it next
    assert t.observe(snap(), 0.01) == [LinkUp("eth0", A, GA)]
    assert t.observe(snap(), 0.02) == []  # the same state again is no event


def test_a_move_is_reported_without_delay_and_loss_is_held():
    t = LinkTracker(HOME, hold=1.0)
    t.observe(snap(), 0.0)
    # Unplugged: lost at once (the gate shuts), reported as gone only after the hold.
    assert t.observe(snap(addr=None, carrier=False), 5.0) == [LinkLost("eth0")]
    assert t.observe(snap(addr=None, carrier=False, gw=None), 5.1) == []  # once per loss
    assert t.get_timer() == 6.0
    assert t.observe(snap(B, GB), 5.2) == [LinkUp("eth0", B, GB)]  # the new network
    assert t.get_timer() is None


def test_loss_longer_than_hold_is_link_down():
    t = LinkTracker(HOME, hold=1.0)
    t.observe(snap(), 0.0)
    t.observe(snap(addr=None, carrier=False), 5.0)
    assert t.handle_timer(5.5) == []
    assert t.handle_timer(6.0) == [LinkDown("eth0")]
    assert t.observe(snap(), 9.0) == [LinkUp("eth0", A, GA)]


def test_same_link_coming_back_is_a_reprobe():
    t = LinkTracker(HOME, hold=1.0, min_reprobe=1.0)
    t.observe(snap(), 0.0)
    t.observe(snap(carrier=False), 10.0)
    # Same address and gateway after a carrier flap: a stale binding is possible.
    assert t.observe(snap(), 10.2) == [LinkUp("eth0", A, GA)]


def test_flapping_is_coalesced_to_one_reprobe_per_interval():
    t = LinkTracker(HOME, hold=1.0, min_reprobe=1.0)
    t.observe(snap(), 0.0)
    events = []
    now = 10.0
    for _ in range(5):  # five flaps in 0.5 s
        events += t.observe(snap(carrier=False), now)
        events += t.observe(snap(), now + 0.05)
        now += 0.1
    # Every loss shuts the gate at once; the comebacks are coalesced.
    assert [e for e in events if not isinstance(e, LinkLost)] == [LinkUp("eth0", A, GA)]
    assert events.count(LinkLost("eth0")) == 5
    assert t.get_timer() == 11.05  # a second after the first re-probe (at 10.05)
    assert t.handle_timer(11.05) == [LinkUp("eth0", A, GA)]  # one trailing re-probe
    assert t.get_timer() is None


def test_the_home_address_we_add_is_not_the_link_address():
    t = LinkTracker(HOME)
    t.observe(snap(), 0.0)
    home32 = IPv4Interface("10.20.1.10/32")
    assert t.observe(snap(extra=(home32,)), 1.0) == []
    only_home = LinkSnapshot("eth0", True, (home32,), GA)
    # Treated as losing the link address: lost at once, down only after the hold.
    assert t.observe(only_home, 2.0) == [LinkLost("eth0")]


def test_another_interface_replaces_the_old_one_as_a_move():
    t = LinkTracker(HOME)
    t.observe(snap(), 0.0)
    wlan = LinkSnapshot("wlan0", True, (B,), GB)
    # No LinkDown("eth0") first: that would end mode mc (RFC 5266 3.4, MOBIKE only).
    assert t.observe(wlan, 1.0) == [LinkUp("wlan0", B, GB)]
    assert t.get_timer() is None
