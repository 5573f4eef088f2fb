"""A gateway's other addresses and the gate's allowed peer set (RFC 4555 3.6), the
order charon is given, and the gateway memory kept in the state directory.

The gate lets IKE/NAT-T/ESP reach the profile's gateway addresses only.  An IKE SA
that MOBIKE moved to one of a gateway's additional addresses (RFC 4555 3.6), or
that a gateway set up from another address, is outside that model: refused with
the reason, torn down, and the next gateway tried.
"""

from __future__ import annotations

import asyncio
import json
import os
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from app.mn import access_mode as am
from app.mn.vpn_link import VpnLink
from app.service.gateway_memory import FILE, MAX_NETWORKS, GatewayMemory
from app.vpn.charon import Charon, VpnCommandError
from app.vpn.events import Endpoint, MobikeUpdate, VpnUp
from app.vpn.peers import peer_refusal
from app.vpn.profile import VpnConfig
from tests.fake_vici import FakeVici
from tests.unit import vici_events as ev

A = IPv4Address
GW1, GW2 = "172.16.0.11", "172.16.0.12"
CFG = VpnConfig(gateways=(GW1, GW2), identity="mn@lab", intranet=(IPv4Network("10.0.0.0/8"),))
ALLOWED = frozenset({A(GW1), A(GW2)})
LOCAL = Endpoint(A("203.0.113.115"), 4500)


class Sinks:
    def __init__(self) -> None:
        self.events: list[object] = []
        self.history: list[tuple[str, dict[str, str]]] = []


async def link(fake: FakeVici, allowed: frozenset[IPv4Address] | None = ALLOWED
               ) -> tuple[VpnLink, Sinks, Charon]:
    s = Sinks()
    c = Charon(str(fake.path), lambda e: None, call_timeout=2.0, backoff_min=0.05,
               backoff_max=0.2)
    assert await c.start()
    v = VpnLink(c, CFG, {"vpn_psk": "correct-horse"}, events=s.events.append,
                history=lambda k, d: s.history.append((k, d)), allowed_peers=allowed)
    return v, s, c


async def terminated(fake: FakeVici) -> None:
    for _ in range(300):
        if "terminate" in fake.names():
            return
        await asyncio.sleep(0.01)  # the fake records commands; nothing else to await
    raise AssertionError(f"no terminate: {fake.names()}")


def test_rfc4555_3_6_an_address_outside_the_gates_peer_set_is_refused_with_the_reason():
    why = peer_refusal(A("198.51.100.9"), ALLOWED, "MOBIKE moved the IKE SA (RFC 4555 3.6)")
    assert why is not None
    assert "198.51.100.9" in why and GW1 in why and "vpn.gateways" in why
    assert peer_refusal(A(GW2), ALLOWED, "x") is None, "a listed address is inside"
    assert peer_refusal(A("198.51.100.9"), None, "x") is None, "no gate: nothing to refuse"


async def test_rfc4555_3_6_mobike_moving_the_sa_to_an_additional_address_is_refused(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    v, s, c = await link(fake)
    try:
        await v.load()
        out = v.translate(MobikeUpdate(LOCAL, Endpoint(A("10.98.0.11"), 4500), 7))
        assert len(out) == 1 and isinstance(out[0], am.VpnLost)
        assert out[0].ike_id == 7 and out[0].gateway_gone, "the next gateway at once"
        assert "10.98.0.11" in out[0].reason and "RFC 4555 3.6" in out[0].reason
        assert ("vpn-peer-refused", {"text": out[0].reason}) in s.history
        await terminated(fake)
        # Within the set, a move is a move.
        assert v.translate(MobikeUpdate(LOCAL, Endpoint(A(GW2), 4500), 7)) == [
            am.VpnMoved(LOCAL.host)]
    finally:
        await v.close()
        await c.close()
        fake.close()


async def test_rfc4555_3_6_a_gateway_answering_from_another_address_is_refused(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    v, _s, c = await link(fake)
    try:
        await v.load()
        up = VpnUp(A("10.99.1.1"), Endpoint(A("198.51.100.9"), 4500), LOCAL, False, 3)
        out = v.translate(up)
        assert len(out) == 1 and isinstance(out[0], am.VpnLost) and out[0].gateway_gone
        assert "198.51.100.9" in out[0].reason
        assert out[0].gateway == GW1, "named: the machine passes it over"
        await terminated(fake)
        ok = VpnUp(A("10.99.1.1"), Endpoint(A(GW1), 4500), LOCAL, False, 4)
        assert isinstance(v.translate(ok)[0], am.VpnReady)
    finally:
        await v.close()
        await c.close()
        fake.close()


async def test_failover_charon_is_given_the_machines_order(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    fake.replies["initiate"] = {"success": "no", "errmsg": "establishing CHILD_SA failed"}
    c = Charon(str(fake.path), lambda e: None, call_timeout=2.0)
    try:
        await c.start()
        await c.load(CFG, {"vpn_psk": "correct-horse"})
        with pytest.raises(VpnCommandError) as exc:
            await c.initiate((GW2, GW1))
        loads = [m["trustroam"]["remote_addrs"] for cmd, m in fake.commands
                 if cmd == "load-conn"]
        assert loads == [[GW1.encode()], [GW2.encode()], [GW1.encode()]]  # load, then order
        # Every gateway down: the status names each one tried, in order.
        assert str(exc.value).startswith(f"every VPN gateway is down (tried {GW2}: ")
        assert f"; {GW1}: " in str(exc.value)
    finally:
        await c.close()
        fake.close()


# -- the memory in the state directory ------------------------------------------------

def test_failover_memory_is_kept_across_restarts_root_only(tmp_path):
    m = GatewayMemory(tmp_path)
    m.put("corp", "203.0.113.0/24 via 203.0.113.1", GW2)
    assert (os.stat(tmp_path / FILE).st_mode & 0o777) == 0o600
    assert GatewayMemory(tmp_path).get("corp") == {"203.0.113.0/24 via 203.0.113.1": GW2}
    assert GatewayMemory(tmp_path).get("other") == {}
    assert GatewayMemory(None).get("corp") == {}


def test_failover_memory_is_bounded_the_least_recent_network_goes(tmp_path):
    m = GatewayMemory(tmp_path)
    for i in range(MAX_NETWORKS + 5):
        m.put("corp", f"net{i}", GW1)
    kept = GatewayMemory(tmp_path).get("corp")
    assert len(kept) == MAX_NETWORKS and "net0" not in kept and f"net{MAX_NETWORKS + 4}" in kept


@pytest.mark.parametrize("doc", [
    "not json", json.dumps({"version": 2, "profiles": {}}),
    json.dumps({"version": 1, "profiles": {"corp": {"n": 5}}}),
    json.dumps({"version": 1, "profiles": []}),
])
def test_failover_memory_that_cannot_be_believed_is_ignored_with_a_warning(tmp_path, caplog,
                                                                             doc: Any):
    (tmp_path / FILE).write_text(doc)
    os.chmod(tmp_path / FILE, 0o600)
    assert GatewayMemory(tmp_path).get("corp") == {}
    assert FILE in caplog.text


async def test_failover_the_sa_of_the_next_gateway_is_named_for_it_not_the_dead_one(tmp_path):
    """charon's child-updown for the next gateway comes before ``initiate`` returns:
    the SA is the one being tried (seen in the lab: named for the dead gw1)."""

    fake = FakeVici(tmp_path / "charon.vici")

    class AfterInitiate(list):  # type: ignore[type-arg]
        """list-sas: nothing before the first initiate, gw1's SA after it."""

        def __iter__(self):  # type: ignore[no-untyped-def]
            done = "initiate" in fake.names()
            return iter([{"trustroam": ev.CHILD_UP[1]["trustroam"]}] if done else [])

    fake.streams["list-sas"] = AfterInitiate()
    v, _s, c = await link(fake)
    try:
        await v.load()
        await c.initiate()
        assert c.gateway == GW1
        fake.streams["list-sas"] = []
        fake.replies["initiate"] = {"success": "no", "errmsg": "timeout"}
        with pytest.raises(VpnCommandError):
            await c.initiate((GW2,))  # gw2's conn loaded and tried
        up = VpnUp(A("10.99.2.1"), Endpoint(A(GW2), 4500), LOCAL, False, 9)
        ready = v.translate(up)
        assert isinstance(ready[0], am.VpnReady) and ready[0].gateway == GW2
    finally:
        await v.close()
        await c.close()
        fake.close()
