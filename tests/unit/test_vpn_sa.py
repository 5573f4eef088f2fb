"""Which IKE SA the machine uses: "the same SA again" keyed by (IKE SA, TIA).

charon reports one SA twice (initiate's answer and its ike-updown event), rekeys
it (a new IKE SA id, the same CHILD and TIA) and reports the deletion of SAs it
no longer uses (the rekeyed-away one, an older attempt).  The machine decides;
what the driver does with the TIA (its socket, its source route, the gateway's
route, the status) follows its ``UseTia``/``DropTia`` actions only.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from app.api import Mode, Policy
from app.mn import access_mode as am
from tests.support.world import TIA, TIA2, World

GW_IP = IPv4Address("192.0.2.1")


def up(w: World, tia: IPv4Address = TIA, ike: int = 7) -> list[object]:
    acts = w.m.handle(am.VpnReady(tia, "gw1", ike, gateway_address=GW_IP), w.now)
    w.apply(acts)
    return acts


def in_mc(ike: int = 7) -> World:
    w = World(setup=1e9)  # the world's own VPN never comes up: the test says when
    w.move("pub")
    w.vpn_tia = TIA
    acts = up(w, ike=ike)
    assert acts[0] == am.UseTia(TIA, "gw1", GW_IP, ike_id=ike)
    w.run(1)
    assert w.m.mode is Mode.VPN
    return w


def test_the_same_sa_reported_again_does_nothing():
    w = in_mc()
    assert up(w) == []


def test_a_new_tia_on_the_same_sa_is_used_and_registered():
    w = in_mc()
    w.tia = w.vpn_tia = TIA2
    acts = up(w, TIA2)
    assert acts[0] == am.UseTia(TIA2, "gw1", GW_IP, ike_id=7)
    assert any(isinstance(a, am.Send) and a.through_vpn for a in acts)


def test_the_deletion_of_an_sa_no_longer_used_is_history_only():
    w = in_mc()
    assert w.m.handle(am.VpnRekeyed(7, 8), w.now) == []
    assert w.m.handle(am.VpnLost("rekeyed away", ike_id=7), w.now) == []
    assert w.m.mode is Mode.VPN
    assert up(w, ike=8) == [], "the rekeyed SA is the same SA"
    acts = w.m.handle(am.VpnLost("DPD", ike_id=8), w.now)
    assert acts[0] == am.DropTia(TIA)
    assert w.m.mode is Mode.NONE


def test_vpn_lost_without_an_sa_id_drops_the_tia_in_use():
    w = in_mc()
    acts = w.m.handle(am.VpnLost("the gateway refused"), w.now)
    assert acts[0] == am.DropTia(TIA) and w.m.mode is Mode.NONE


def test_stopping_the_vpn_drops_the_tia_before_the_stop():
    w = in_mc()
    acts = w.m.handle(am.PolicySet(Policy.NEVER_VPN), w.now)
    drop = acts.index(am.DropTia(TIA))
    assert isinstance(acts[drop + 1], am.StopVpn)
