"""Gateway failover, sans-I/O with the fake clock: the dead bound, the next gateway,
the remembered order, every gateway down (issue 20, "Gateway failover").

The machine is the real access-mode machine in the shared discrete-event world
(``tests/support/world.py``); charon's events are given by hand (``auto_vpn``
off): which gateway comes up, and when the IKE SA in use goes.
"""

from __future__ import annotations

import math
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from app.api import Mode, State
from app.config import ConfigError
from app.lab.charon import strongswan_conf
from app.mn.access_mode import (
    Gate,
    RememberGateway,
    StartVpn,
    Status,
    StopVpn,
    VpnLost,
)
from app.mn.gateway_order import DEAD_HOLD, GatewayOrder, network_key
from app.mn.mode_vpn import VPN_RETRY_MIN
from app.vpn import liveness
from app.vpn.events import CHILD_CLOSED, DownKind, VpnDown
from app.vpn.profile import VpnConfig, parse_table
from app.vpn.vici_messages import load_conn
from tests.support.world import NETS, TIA, TIA2, World, machine, registration

HOME_NET = IPv4Network("10.1.0.0/16")
GWS = ("gw1", "gw2")
PUB = network_key(NETS["pub"].up.address, NETS["pub"].up.gateway)
NAT = network_key(NETS["nat"].up.address, NETS["nat"].up.gateway)
ROOT = Path(__file__).resolve().parents[2]


DEAD_AFTER = 10


def world(gateways: tuple[str, ...] = GWS, remembered: dict[str, str] | None = None
          ) -> World:
    cfg = registration(lifetime=60, initial_timeout=1.0, retries=2)
    m = machine(cfg, vpn=True, use_foreign_agents=False,
                gateway_order=GatewayOrder(gateways, remembered, dead_after=DEAD_AFTER))
    return World(m=m, auto_vpn=False)


def starts(w: World, since: float = 0.0) -> list[tuple[str, ...]]:
    return [a.gateways for t, a in w.actions if isinstance(a, StartVpn) and t >= since]


def in_mc_via(w: World, tia=TIA, gateway: str = "gw1") -> None:
    w.vpn_ready(tia, gateway)
    w.run(1)
    assert (w.m.phase, w.m.mode) == (State.UNTRUSTED, Mode.VPN)
    assert w.m.vpn.gateway == gateway and w.ha_coa() == tia


def gateway_gone(w: World, reason: str = "IKE SA closed (ESTABLISHED)") -> list[object]:
    """charon: the IKE SA in use went (DPD gave up): the step's actions."""
    w.vpn_wanted, w.vpn_tia = False, None
    w.vpn_epoch += 1
    before = len(w.actions)
    w.apply(w.m.handle(VpnLost(reason, gateway_gone=True), w.now))
    return [a for _, a in w.actions[before:]]


# -- the dead bound ------------------------------------------------------------------

# charon's packaged retransmissions of one request, written out (timeout * base^n,
# n = 0..tries: 1 + 1.4 + 1.96 + 2.744 s), not computed by the code under test.
PACKAGED_RETRANSMISSIONS = 7.104


@pytest.mark.parametrize("bound", range(10, 121))
@pytest.mark.parametrize("asked", [10, 0])
def test_dead_gateway_after_bounds_charons_dpd_delay_plus_its_retransmissions(bound, asked):
    """Every bound from the default up: the worst case -- the DPD delay, one more
    second (charon schedules DPD on whole seconds of its monotonic clock), then the
    retransmissions -- stays within ``dead_gateway_after``."""
    cfg = VpnConfig(gateways=GWS, identity="mn@lab", dpd_delay=asked, dead_gateway_after=bound)
    delay = int(load_conn(cfg, "gw1")["trustroam"]["dpd_delay"].removesuffix("s"))
    assert delay >= 1
    assert delay + 1 + PACKAGED_RETRANSMISSIONS <= bound
    assert liveness.detection_bound(bound, asked) <= bound
    if asked == 0 or delay < asked:  # as large as the bound allows (fewest exchanges)
        assert delay + 1 + 1 + PACKAGED_RETRANSMISSIONS > bound


def test_dead_gateway_after_the_profiles_smaller_dpd_delay_is_kept():
    cfg = VpnConfig(gateways=GWS, identity="mn@lab", dpd_delay=1, dead_gateway_after=30)
    assert load_conn(cfg, "gw1")["trustroam"]["dpd_delay"] == "1s"


def test_dead_gateway_after_dpd_delay_0_is_refused_naming_the_key():
    """0 once meant DPD off: it is refused rather than changed in silence."""
    table = {"gateways": ["gw1"], "identity": "mn@lab", "dpd_delay": 0}
    with pytest.raises(ConfigError, match=r"vpn\.dpd_delay: 0 \(DPD off\) is not allowed"):
        parse_table(table, "corp.toml", HOME_NET)
    assert parse_table({**table, "dpd_delay": 3}, "corp.toml", HOME_NET).dpd_delay == 3


def test_dead_gateway_after_too_small_for_charons_retransmissions_is_refused_naming_the_key():
    table = {"gateways": ["gw1"], "identity": "mn@lab", "dead_gateway_after": 5}
    with pytest.raises(ConfigError) as exc:
        parse_table(table, "corp.toml", HOME_NET)
    text = str(exc.value)
    assert "vpn.dead_gateway_after" in text and f"at least {liveness.MIN_DEAD_AFTER}" in text
    with pytest.raises(ConfigError, match=r"vpn\.dead_gateway_after: must be an integer"):
        parse_table({**table, "dead_gateway_after": "10s"}, "corp.toml", HOME_NET)
    assert parse_table({**table, "dead_gateway_after": 12}, "corp.toml",
                       HOME_NET).dead_gateway_after == 12
    assert parse_table({"gateways": ["gw1"], "identity": "mn@lab"}, "corp.toml",
                       HOME_NET).dead_gateway_after == 10


def test_dead_gateway_bound_the_charon_the_packaging_and_the_lab_configure_retransmits_as_assumed():
    """The bound holds only with the retransmissions it was computed for: the
    packaging's snippet and the lab's charon set exactly those (strongSwan's defaults
    would take 165 s)."""
    want = {"retransmit_tries": str(liveness.RETRANSMIT_TRIES),
            "retransmit_timeout": str(liveness.RETRANSMIT_TIMEOUT),
            "retransmit_base": str(liveness.RETRANSMIT_BASE),
            # charon 5.9's reauthentication is break-before-make by default: the old
            # SA's ike-updown(down) would be taken for a dead gateway.
            "make_before_break": "yes"}
    for text in ((ROOT / "packaging/strongswan/trustroam.conf").read_text(),
                 strongswan_conf(Path("/x"), None)):
        got = {}
        for line in text.splitlines():
            key, _, value = line.split("#")[0].partition("=")
            if key.strip() in want:
                got[key.strip()] = value.strip()
        assert got == want, text
    assert math.isclose(liveness.retransmit_total(5, 4.0, 1.8), 165.06, abs_tol=0.01)
    assert math.isclose(liveness.retransmit_total(), PACKAGED_RETRANSMISSIONS)


@pytest.mark.parametrize(("peer", "addresses"), [
    ("172.16.0.11", {}),
    ("172.16.0.21", {"gw-a.example": ("172.16.0.21",)}),
])
def test_failover_an_sa_is_named_from_its_peer_not_from_the_gateway_loaded_since(peer,
                                                                                 addresses):
    """A late SA (charon reauthenticating to the first gateway, an initiate given up)
    comes up while the second is loaded: it is the first's (status, memory, deaths)."""
    from ipaddress import IPv4Address
    from types import SimpleNamespace

    from app.mn.access_mode import VpnReady
    from app.mn.vpn_link import VpnLink
    from app.vpn.events import Endpoint, VpnUp
    first = "gw-a.example" if addresses else "172.16.0.11"
    cfg = VpnConfig(gateways=(first, "172.16.0.12"), identity="mn@lab")
    link = VpnLink(SimpleNamespace(gateway="172.16.0.12",  # type: ignore[arg-type]
                                   loaded_gateway="172.16.0.12"), cfg, {},
                   events=lambda e: None, history=lambda k, d: None,
                   addresses_of=lambda n: tuple(map(IPv4Address, addresses.get(n, ()))))
    up = VpnUp(TIA, Endpoint(IPv4Address(peer), 4500),
               Endpoint(IPv4Address("203.0.113.5"), 4500), False, 7)
    [ready] = link.translate(up)
    assert isinstance(ready, VpnReady) and ready.gateway == first
    # A peer no gateway names or resolved to: the one charon was given.
    other = VpnUp(TIA, Endpoint(IPv4Address("172.16.0.99"), 4500), up.local, False, 8)
    assert link.translate(other)[0].gateway == "172.16.0.12"  # type: ignore[attr-defined]


# -- the next gateway ----------------------------------------------------------------

def test_failover_a_gateway_gone_in_mc_shuts_the_gate_and_starts_the_next_at_once():
    w = world()
    w.move("pub")
    assert starts(w) == [GWS]
    in_mc_via(w)
    t = w.now
    step = gateway_gone(w)
    # The gate shuts before anything else, the next gateway in the same step: no
    # retry back-off, the dead one last.
    kinds = [type(a) for a in step]
    assert Gate in kinds and StartVpn in kinds
    assert kinds.index(Gate) < kinds.index(StartVpn)
    assert next(a for a in step if isinstance(a, Gate)).path is None
    assert starts(w, t) == [("gw2", "gw1")]
    status = [a for a in step if isinstance(a, Status)][-1]
    assert status.mode is Mode.NONE and "trying gw2" in (status.error or "")
    # A new IKE SA, a new TIA, a new registration through it: mc again via gw2.
    in_mc_via(w, TIA2, "gw2")
    w.agrees()


def test_failover_the_gateway_that_brought_mc_up_is_remembered_for_the_network():
    w = world()
    w.move("pub")
    in_mc_via(w)
    assert [a for _, a in w.actions if isinstance(a, RememberGateway)] == [
        RememberGateway(PUB, "gw1")]
    gateway_gone(w)
    in_mc_via(w, TIA2, "gw2")
    assert [a for _, a in w.actions if isinstance(a, RememberGateway)][-1] == (
        RememberGateway(PUB, "gw2"))
    assert w.m.vpn.gateway == "gw2"


def test_failover_a_remembered_gateway_is_tried_first_on_its_network_only():
    w = world(remembered={PUB: "gw2", "elsewhere": "gw9"})
    w.move("pub")
    assert starts(w) == [("gw2", "gw1")]
    w2 = world(remembered={PUB: "gw2"})
    w2.move("nat")
    assert starts(w2) == [GWS]


def test_failover_a_child_sa_closed_alone_is_no_failover_but_a_retry_later():
    w = world()
    w.move("pub")
    in_mc_via(w)
    t = w.now
    w.vpn_tia = None
    w.apply(w.m.handle(VpnLost(CHILD_CLOSED), w.now))
    assert starts(w, t) == [], "not at once: the IKE SA and its gateway are alive"
    w.run(2.5)
    assert starts(w, t) == [GWS], "retried after the back-off, the same order"


def test_failover_every_gateway_down_keeps_the_gate_shut_and_the_status_names_them():
    w = world()
    w.move("pub")
    in_mc_via(w)
    gateway_gone(w)
    t = w.now
    why = "every VPN gateway is down (tried gw2: no answer; gw1: no answer)"
    w.apply(w.m.handle(VpnLost(why), w.now))  # charon's initiate of the whole list failed
    assert (w.m.phase, w.m.mode) == (State.UNTRUSTED, Mode.NONE)
    assert w.gate is None
    assert w.m.error == f"the VPN did not come up: {why}"
    # Tried again later (back-off), the gate shut all along.
    w.run(10)
    assert len(starts(w, t)) >= 2 and w.gate is None and w.m.mode is Mode.NONE
    assert all(g.path is None for tm, g in w.gates if tm >= t)


def test_dead_gateway_after_holds_after_a_move_in_mc_mobike_not_moving_the_sa_is_a_death():
    """mc via gw1, then a move to a network gw1 cannot be reached from: charon's path
    probing alone (no DPD meanwhile) would take about 27 s with mc still shown.  No
    MOBIKE move within dead_gateway_after: torn down, the next gateway at once."""
    w = world()
    w.move("pub")
    in_mc_via(w)
    w.move("nat")  # mc held open across the move, waiting for MOBIKE
    t = w.now
    assert w.m.mode is Mode.VPN
    w.run(DEAD_AFTER - 0.01)
    assert w.m.mode is Mode.VPN and starts(w, t) == [] and not w.stopped
    w.run(0.02)
    assert w.stopped and "gw1" in w.stopped[-1], "charon's probing of gw1 is cut short"
    assert starts(w, t) == [("gw2", "gw1")]
    stop_at = next(i for i, (_, a) in enumerate(w.actions) if isinstance(a, StopVpn))
    start_at = max(i for i, (_, a) in enumerate(w.actions) if isinstance(a, StartVpn))
    assert stop_at < start_at, "the old SA torn down before the next is asked for"
    assert w.m.mode is Mode.NONE and w.gate is None
    assert "trying gw2" in (w.m.error or "")
    in_mc_via(w, TIA2, "gw2")
    w.agrees()


def test_dead_gateway_after_a_move_that_mobike_follows_in_time_changes_nothing():
    w = world()
    w.move("pub")
    in_mc_via(w)
    w.move("nat")
    t = w.now
    w.run(DEAD_AFTER - 1)
    w.vpn_moved()
    w.run(3 * DEAD_AFTER)
    assert not w.stopped and starts(w, t) == []
    assert w.m.mode is Mode.VPN and w.m.vpn.gateway == "gw1"


DOWN_REASONS = {
    DownKind.IKE_GONE: ("IKE SA closed (ESTABLISHED)", 1),  # DPD gave up, or a delete
    DownKind.CHILD: (CHILD_CLOSED, 1),
    DownKind.TERMINATED: ("terminated", 1),
    DownKind.SERVICE: ("VPN service stopped", 1),  # charon restarted, or a slow VICI call
    DownKind.FAILED: ("gw1: timeout", None),
}


@pytest.mark.parametrize("kind", list(DownKind))
def test_failover_only_an_ike_sa_death_marks_its_gateway_dead_and_rewrites_the_memory(kind):
    """charon's down event as the adapter gives it (kind, not its text) through
    VpnLink into the machine: only IKE_GONE leaves gw1; a service loss says nothing
    of the gateway (gw1 first again once charon is back, the memory kept)."""
    from types import SimpleNamespace

    from app.mn.access_mode import VpnServiceBack, VpnServiceLost
    from app.mn.vpn_link import VpnLink
    link = VpnLink(SimpleNamespace(gateway="gw1", loaded_gateway="gw1"),  # type: ignore[arg-type]
                   VpnConfig(gateways=GWS, identity="mn@lab"), {},
                   events=lambda e: None, history=lambda k, d: None)
    w = world()
    w.move("pub")
    in_mc_via(w)
    t = w.now
    reason, ike_id = DOWN_REASONS[kind]
    lost = link.translate(VpnDown(reason, ike_id, kind))
    assert [e.gateway_gone for e in lost] == [kind is DownKind.IKE_GONE]
    w.vpn_wanted, w.vpn_tia = False, None
    w.vpn_epoch += 1
    for e in lost:
        w.apply(w.m.handle(e, w.now))
    if kind is DownKind.SERVICE:
        w.apply(w.m.handle(VpnServiceLost("VPN service not reachable at /x"), w.now))
        w.run(1)
        w.apply(w.m.handle(VpnServiceBack(), w.now))
    w.run(VPN_RETRY_MIN + 0.5)
    first = starts(w, t)[0][0]
    assert first == ("gw2" if kind is DownKind.IKE_GONE else "gw1")
    in_mc_via(w, TIA2, first)
    assert [a for _, a in w.actions if isinstance(a, RememberGateway)][-1] == (
        RememberGateway(PUB, first))


# -- the order itself ---------------------------------------------------------------

def test_failover_order_rotates_past_the_dead_gateway_and_forgets_it_after_the_hold():
    o = GatewayOrder(("a", "b", "c"))
    assert o.order(None, 0) == ("a", "b", "c")
    o.dead("b", 10)
    assert o.order(None, 11) == ("c", "a", "b"), "the next of the list first, the dead last"
    assert o.has_other("b")
    o.dead("c", 12)
    assert o.order(None, 13)[0] == "a" and set(o.order(None, 13)[1:]) == {"b", "c"}
    assert o.order(None, 12 + DEAD_HOLD) == ("a", "b", "c")


def test_failover_order_a_gateway_that_works_again_is_no_longer_dead():
    o = GatewayOrder(("a", "b"))
    o.dead("a", 0)
    assert o.order("n", 1) == ("b", "a")
    assert o.worked("n", "a")
    assert o.order("n", 2) == ("a", "b")
    assert not o.worked("n", "a"), "nothing new to keep"
    assert not o.worked("n", "zz"), "not one of the profile's"


def test_failover_order_a_single_gateway_has_no_other_to_move_to():
    o = GatewayOrder(("a",))
    o.dead("a", 0)
    assert not o.has_other("a")
    assert o.order(None, 1) == ("a",)


def test_failover_the_second_gateway_dying_moves_back_to_the_first_at_once():
    """gw1 died, mc via gw2; gw2 dies within the hold: gw1 (maybe back) is tried at
    once, not after the retry back-off."""
    w = world()
    w.move("pub")
    in_mc_via(w)
    gateway_gone(w)
    in_mc_via(w, TIA2, "gw2")
    t = w.now
    gateway_gone(w)
    assert starts(w, t) == [("gw1", "gw2")]
    in_mc_via(w, TIA, "gw1")
    w.agrees()


def test_dead_gateway_after_survives_the_trays_profile_editor():
    from app.lab.configs import profile_toml
    from ui.profile_model import from_toml, to_toml
    text = profile_toml(vpn_gateways=("172.16.0.11", "172.16.0.12")) + "dead_gateway_after = 15\n"
    values = from_toml(text, "corp.toml")
    assert values["vpn.dead_gateway_after"] == "15"
    assert "dead_gateway_after = 15" in to_toml(values)


def test_rfc4555_3_6_a_gateway_refused_before_use_is_passed_over_after_the_back_off():
    """An SA refused as it came up (its peer outside the gate's set) is that gateway's
    failure: the next one is tried, the refused one last, on the retry back-off."""
    w = world()
    w.move("pub")
    w.run(0.05)
    t = w.now
    w.apply(w.m.handle(VpnLost("gateway gw1 set the IKE SA up to 198.51.100.9, ...", 5,
                               gateway_gone=True, gateway="gw1"), w.now))
    assert starts(w, t) == [] and w.gate is None and w.m.mode is Mode.NONE
    w.run(VPN_RETRY_MIN + 0.05)
    assert starts(w, t) == [("gw2", "gw1")]
    in_mc_via(w, TIA2, "gw2")


def test_rfc4555_3_6_every_gateway_refused_is_retried_on_the_back_off_not_in_a_loop():
    """Every SA refused as it comes up (say a DNS answer other than the gate's): each
    StartVpn answered by a refusal at once.  Set-ups follow the doubling back-off
    (2, 4, 8, 16 s: at most 5 in 30 s), not one per refusal at the same instant."""
    w = world()
    t = w.now
    w.move("pub")
    refused, end = 0, w.now + 30
    while w.now < end and refused < 100:
        if len(starts(w, t)) > refused:
            gw = starts(w, t)[-1][0]
            w.apply(w.m.handle(VpnLost(f"gateway {gw} set the IKE SA up to 198.51.100.9",
                                       100 + refused, gateway_gone=True, gateway=gw), w.now))
            refused += 1
        else:
            w.run(0.1)
    assert refused <= 5, f"{refused} set-ups in 30 s"
    assert w.gate is None and w.m.mode is Mode.NONE
