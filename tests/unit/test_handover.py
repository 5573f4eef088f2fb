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
from tests.unit.test_access_mode import FA, FA1, HOME, T1, Net, machine
from tests.unit.test_mode_mc import World


def handovers(statuses):
    """(mode, ms) of each Status that ends a handover."""
    return [(s.mode, s.handover_ms) for s in statuses
            if isinstance(s, Status) and getattr(s, "handover", False)]


def run_timers(m, net, until, src):
    acts, now = [], None
    while (t := m.get_timer()) is not None and t <= until:
        now = t
        acts += net.run(m, m.handle_timer(now), now, src)
    return acts


def test_mode_c_handover_is_link_up_to_the_open_path():
    m, net = machine(), Net()
    acts = net.run(m, m.handle(T1, T0), T0 + 0.003, T1.address.ip)
    assert handovers(acts) == [(Mode.COLOCATED, pytest.approx(3.0))]
    assert m.last_handover_ms == pytest.approx(3.0)


def test_mode_h_handover_ends_at_mode_h_not_at_the_claim():
    m, net = machine(), Net()
    net.run(m, m.handle(T1, T0), T0 + 0.003, T1.address.ip)
    acts = m.handle(HOME, T0 + 5)
    assert handovers(acts) == []
    acts = net.run(m, acts, T0 + 5.004, HOME.address.ip)
    assert statuses_of(acts)[-1] == (State.TRUSTED, Mode.HOME)
    assert handovers(acts) == [(Mode.HOME, pytest.approx(4.0))]


def statuses_of(acts):
    return [(s.phase, s.mode) for s in acts if isinstance(s, Status)]


def test_fa_link_handover_ends_at_mode_f_and_mode_c_on_the_way_is_not_it():
    m, net = machine(), Net()
    net.fa_down = True  # the FA's first answer is lost: c and f in separate steps
    acts = m.handle(FA1, T0)
    acts += m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.001)
    acts = net.run(m, acts, T0 + 0.003, FA1.address.ip)
    c = [s for s in acts if isinstance(s, Status) and s.mode is Mode.COLOCATED]
    assert c and c[-1].handover_ms is None, "mode c on the way to f is no handover"
    assert handovers(acts) == []
    net.fa_down = False
    t = m.get_timer()
    acts = net.run(m, m.handle_timer(t), t, FA1.address.ip)
    assert m.mode is Mode.FOREIGN_AGENT
    assert handovers(acts) == [(Mode.FOREIGN_AGENT, pytest.approx((t - T0) * 1000))]


def test_a_failing_fa_reports_the_time_to_mode_c():
    m, net = machine(), Net()
    net.fa_down = True
    acts = m.handle(FA1, T0)
    acts += m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.001)
    acts = net.run(m, acts, T0 + 0.003, FA1.address.ip)
    assert handovers(acts) == []
    acts = run_timers(m, net, T0 + 10, FA1.address.ip)
    assert (m.phase, m.mode) == (State.TRUSTED, Mode.COLOCATED)
    assert handovers(acts) == [(Mode.COLOCATED, pytest.approx(3.0))]
    assert m.last_handover_ms == pytest.approx(3.0)


def test_mode_mc_handover_is_link_up_to_the_open_path_through_the_vpn():
    w = World()
    w.move("pub")
    w.run(1)
    assert w.m.mode is Mode.VPN
    assert handovers(w.statuses) == [(Mode.VPN, pytest.approx(320, abs=1))]


def test_a_reprobe_starts_a_new_handover():
    m, net = machine(), Net()
    net.run(m, m.handle(T1, T0), T0 + 0.003, T1.address.ip)
    acts = net.run(m, m.handle(Resumed(), T0 + 100), T0 + 100.002, T1.address.ip)
    assert handovers(acts) == [(Mode.COLOCATED, pytest.approx(2.0))]


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
