"""The handover time the user sees (``Status.handover_ms``), on the fake clock.

A handover runs from the link-up (or a re-probe, or a policy change) until the
new path is configured and open; on a link with a foreign agent until mode f
(mode c reached on the way there is not its end), unless the FA fails or refuses:
then it ended in mode c, and the time to mode c is the one reported.  The Status
that ends a handover says so (``handover``): the driver's "handover" history entry.
"""

from __future__ import annotations

import pytest

from app.api import Mode, Policy, State
from app.mn.access_mode import AgentAdvert, PolicySet, Resumed, Status
from tests.support.identities import T0
from tests.support.world import FA, World, machine, registration


def handovers(statuses):
    """(mode, ms) of each Status that ends a handover."""
    return [(s.mode, s.handover_ms) for s in statuses
            if isinstance(s, Status) and getattr(s, "handover", False)]


def world(one_way: float) -> World:
    """The trusted side with ``one_way`` seconds each way to the agents."""
    return World(direct=one_way, through=0.0,
                 m=machine(registration(lifetime=300, initial_timeout=0.5, retries=2)))


def test_mode_c_handover_is_link_up_to_the_open_path():
    w = world(0.0015)
    w.move("t1")
    w.run_until(T0 + 0.01)
    assert handovers(w.statuses) == [(Mode.COLOCATED, pytest.approx(3.0))]
    assert w.m.last_handover_ms == pytest.approx(3.0)


def test_mode_h_handover_ends_at_mode_h_not_at_the_claim():
    w = world(0.001)
    w.move("t1")
    w.run_until(T0 + 5)
    n = len(w.statuses)
    w.move("home-at-home")  # the probe, the claim, the deregistration: two round trips
    assert handovers(w.statuses[n:]) == []
    w.run_until(T0 + 5.01)
    assert (w.m.phase, w.m.mode) == (State.TRUSTED, Mode.HOME)
    assert handovers(w.statuses[n:]) == [(Mode.HOME, pytest.approx(4.0))]


def test_fa_link_handover_ends_at_mode_f_and_mode_c_on_the_way_is_not_it():
    w = world(0.0015)
    w.fa_down = True  # the FA's first answer is lost: c and f in separate steps
    w.move("fa1")
    w.now = T0 + 0.001
    w.apply(w.m.handle(AgentAdvert("eth0", FA, 600), w.now))
    w.run_until(T0 + 0.01)
    c = [s for s in w.statuses if s.mode is Mode.COLOCATED]
    assert c and c[-1].handover_ms is None, "mode c on the way to f is no handover"
    assert handovers(w.statuses) == []
    w.fa_down = False
    t = w.m.get_timer()  # the request through the FA, sent again
    w.run_until(t + 0.01)
    assert w.m.mode is Mode.FOREIGN_AGENT
    assert handovers(w.statuses) == [(Mode.FOREIGN_AGENT,
                                      pytest.approx((t + 0.003 - T0) * 1000))]


def test_a_failing_fa_reports_the_time_to_mode_c():
    w = world(0.0015)
    w.fa_down = True
    w.move("fa1")
    w.now = T0 + 0.001
    w.apply(w.m.handle(AgentAdvert("eth0", FA, 600), w.now))
    w.run_until(T0 + 0.01)
    assert handovers(w.statuses) == []
    w.run_until(T0 + 10)
    assert (w.m.phase, w.m.mode) == (State.TRUSTED, Mode.COLOCATED)
    assert handovers(w.statuses) == [(Mode.COLOCATED, pytest.approx(3.0))]
    assert w.m.last_handover_ms == pytest.approx(3.0)


def test_mode_mc_handover_is_link_up_to_the_open_path_through_the_vpn():
    w = World()
    w.move("pub")
    w.run(1)
    assert w.m.mode is Mode.VPN
    assert handovers(w.statuses) == [(Mode.VPN, pytest.approx(320, abs=1))]


def test_a_reprobe_starts_a_new_handover():
    w = world(0.001)
    w.move("t1")
    w.run_until(T0 + 100)
    n = len(w.statuses)
    w.apply(w.m.handle(Resumed(), w.now))
    w.run_until(T0 + 100.01)
    assert handovers(w.statuses[n:]) == [(Mode.COLOCATED, pytest.approx(2.0))]


def test_a_policy_change_starts_a_new_handover():
    w = World()
    w.move("t1gw")
    w.run(2)
    assert w.m.mode is Mode.COLOCATED
    n = len(w.statuses)
    w.apply(w.m.handle(PolicySet(Policy.ALWAYS_VPN), w.now))
    w.run(1)
    assert w.m.mode is Mode.VPN
    # From the policy change: the VPN's set-up (0.3 s) and one round trip through it.
    assert handovers(w.statuses[n:]) == [(Mode.VPN, pytest.approx(320, abs=1))]
