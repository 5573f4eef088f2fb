"""The VPN link against a fake VICI server: charon's events in, the machine's out.

It never calls back into its owner: what its tasks learn (charon's answer to
initiate, a refusal, a NAT read again) arrives in the sink it was given, the
history lines in the history sink.
"""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from app.mn import access_mode as am
from app.mn.mode_events import VpnNat
from app.mn.vpn_link import NO_TIA, VpnLink
from app.vpn.charon import Charon, VpnError, VpnUnreachableError
from app.vpn.events import (
    ChildRekeyed,
    DownKind,
    Endpoint,
    IkeRekeyed,
    MobikeUpdate,
    SaInfo,
    VpnDown,
    VpnServiceUp,
    VpnUnreachable,
    VpnUp,
)
from app.vpn.profile import VpnConfig
from tests.fake_vici import FakeVici
from tests.unit import vici_events as ev

A = IPv4Address
CFG = VpnConfig(gateways=("172.16.0.11",), identity="mn@lab",
                intranet=(IPv4Network("10.0.0.0/8"),))
SA = {"trustroam": ev.CHILD_UP[1]["trustroam"]}
GW = Endpoint(A("172.16.0.11"), 4500)
LOCAL = Endpoint(A("203.0.113.115"), 4500)


class Sinks:
    def __init__(self) -> None:
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self.history: list[tuple[str, dict[str, str]]] = []

    async def next(self) -> object:
        async with asyncio.timeout(5):
            return await self.events.get()


async def link(tmp_path: Any, fake: FakeVici) -> tuple[VpnLink, Sinks]:
    s = Sinks()
    c = Charon(str(fake.path), lambda e: None, call_timeout=2.0, backoff_min=0.05,
               backoff_max=0.2)
    assert await c.start()
    v = VpnLink(c, CFG, {"vpn_psk": "correct-horse"}, events=s.events.put_nowait,
                history=lambda k, d: s.history.append((k, d)))
    return v, s


async def test_start_brings_the_tunnel_up_and_its_answer_becomes_vpn_ready(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    fake.streams["list-sas"] = [SA]
    v, s = await link(tmp_path, fake)
    try:
        assert await v.load()
        v.start()
        up = await s.next()
        assert isinstance(up, VpnUp) and up.tia == A("10.99.1.1") and up.ike_id == 1
        assert ("vpn-starting", {}) in s.history
        ready = v.translate(up)
        assert ready == [am.VpnReady(A("10.99.1.1"), "172.16.0.11", 1,
                                     gateway_address=A("172.16.0.11"), nat_detected=up.nat_detected,
                                     local=str(up.local), remote=str(up.gateway))]
    finally:
        await v.close()
        fake.close()


async def test_a_refused_configuration_is_said_once_and_arrives_as_unreachable(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    fake.replies["load-conn"] = {"success": "no", "errmsg": "bad proposal"}
    v, s = await link(tmp_path, fake)
    try:
        assert not await v.load()
        got = await s.next()
        assert isinstance(got, VpnUnreachable) and "bad proposal" in got.message
        assert [k for k, _ in s.history] == ["vpn-error"]
    finally:
        await v.close()
        fake.close()


async def test_stop_tears_the_tunnel_down(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    v, s = await link(tmp_path, fake)
    try:
        await v.load()
        v.stop("the network is trusted")
        for _ in range(200):
            if "terminate" in fake.names():
                break
            await asyncio.sleep(0.01)  # the fake records commands; nothing to await
        assert "terminate" in fake.names()
        assert s.history == [("vpn-stop", {"reason": "the network is trusted"})]
    finally:
        await v.close()
        fake.close()


async def test_after_a_child_rekey_the_nat_is_read_again_into_the_sink(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    fake.streams["list-sas"] = [SA]
    v, s = await link(tmp_path, fake)
    try:
        await v.load()
        assert v.translate(ChildRekeyed(1, "intranet")) == []
        seen = await s.next()
        assert isinstance(seen, VpnNat) and seen.ike_id == 1
        assert s.history == [("child-rekey", {"ike": "1"})]
    finally:
        await v.close()
        fake.close()


@pytest.mark.parametrize(("charon_event", "machine_events", "kind"), [
    (VpnDown("DPD", 3, DownKind.IKE_GONE), [am.VpnLost("DPD", 3, gateway_gone=True)],
     "vpn-down"),
    (VpnDown("VPN service stopped", 3, DownKind.SERVICE),
     [am.VpnLost("VPN service stopped", 3)], "vpn-down"),
    (VpnDown("terminated", 3, DownKind.TERMINATED), [am.VpnLost("terminated", 3)],
     "vpn-down"),
    (IkeRekeyed(3, 4), [am.VpnRekeyed(3, 4)], "ike-rekey"),
    (VpnUnreachable("no charon at /x"), [am.VpnServiceLost("no charon at /x")],
     "vpn-unreachable"),
    (VpnServiceUp("/x"), [am.VpnServiceBack()], "vpn-service-up"),
    (VpnUp(None, GW, LOCAL, False, 3), [am.VpnLost(NO_TIA)], "vpn-error"),
    (MobikeUpdate(LOCAL, GW, 3), [am.VpnMoved(A("203.0.113.115"))], "mobike"),
])
async def test_charon_events_become_the_machines(tmp_path, charon_event, machine_events, kind):
    fake = FakeVici(tmp_path / "charon.vici")
    v, s = await link(tmp_path, fake)
    try:
        assert v.translate(charon_event) == machine_events
        assert [k for k, _ in s.history] == [kind]
    finally:
        await v.close()
        fake.close()


async def test_a_refused_initiate_arrives_as_vpn_down(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    fake.replies["initiate"] = {"success": "no", "errmsg": "establishing CHILD_SA failed"}
    v, s = await link(tmp_path, fake)
    try:
        v.start()  # loads first: the connection was never loaded
        down = await s.next()
        assert isinstance(down, VpnDown) and "every VPN gateway is down" in down.reason
        assert v.translate(down) == [am.VpnLost(down.reason)]
    finally:
        await v.close()
        fake.close()


async def test_at_start_the_connection_is_loaded_or_charon_is_said_unreachable(tmp_path):
    from types import SimpleNamespace

    got: list[object] = []
    down = SimpleNamespace(reachable=False, unreachable_message="no charon at /x")
    await VpnLink(down, CFG, {}, events=got.append,  # type: ignore[arg-type]
                  history=lambda k, d: None).begin()
    assert got == [VpnUnreachable("no charon at /x")]
    fake = FakeVici(tmp_path / "charon.vici")
    v, s = await link(tmp_path, fake)
    try:
        await v.begin()
        assert "load-conn" in fake.names() and s.events.empty()
    finally:
        await v.close()
        await v.charon.close()
        fake.close()


class StubCharon:
    """charon's adapter answering as told: each call raises or returns what it was given."""

    reachable = True
    gateway = None

    def __init__(self, **answers: Any) -> None:
        self.answers = answers
        self.called: list[str] = []

    async def _answer(self, name: str) -> Any:
        self.called.append(name)
        got = self.answers.get(name)
        if isinstance(got, Exception):
            raise got
        return got

    async def load(self, cfg: Any, secrets: Any) -> None:
        await self._answer("load")

    async def initiate(self, order: Any = ()) -> Any:
        return await self._answer("initiate")

    async def terminate(self, *, wait: bool = True) -> None:
        await self._answer("terminate")

    async def sa(self) -> Any:
        return await self._answer("sa")


def _stub_link(charon: StubCharon) -> tuple[VpnLink, Sinks]:
    s = Sinks()
    return VpnLink(charon, CFG, {}, events=s.events.put_nowait,  # type: ignore[arg-type]
                   history=lambda k, d: s.history.append((k, d))), s


@pytest.mark.parametrize(("answers", "expected", "kinds"), [
    ({"load": VpnUnreachableError("no charon at /x", "refused")},
     VpnUnreachable("no charon at /x (refused)"), []),
    ({"load": VpnError("busy")}, None, ["vpn-error"]),
    ({"initiate": VpnUnreachableError("no charon at /x", "timeout")},
     VpnUnreachable("no charon at /x (timeout)"), ["vpn-starting"]),
    ({"initiate": SaInfo(1, "ESTABLISHED", None, None, None, False, True)}, VpnDown(NO_TIA),
     ["vpn-starting"]),
])
async def test_charons_refusals_arrive_as_events_never_raised(answers, expected, kinds):
    v, s = _stub_link(StubCharon(**answers))
    try:
        v.start()  # loads first
        got = await s.next()
        if expected is None:  # said once, as unreachable, with charon's words
            assert isinstance(got, VpnUnreachable) and "busy" in got.message
        else:
            assert got == expected
        assert [k for k, _ in s.history] == kinds
    finally:
        await v.close()


async def test_a_start_after_a_stop_waits_for_its_teardown_a_failed_one_logged(caplog):
    sa = SaInfo(1, "ESTABLISHED", A("10.99.1.1"), LOCAL, GW, False, True)
    c = StubCharon(terminate=VpnError("no such SA"), initiate=sa, sa=VpnError("gone"))
    v, s = _stub_link(c)
    try:
        with caplog.at_level(logging.INFO, "trustroam.mn"):
            assert await v.load()
            v.start()
            v.stop("trusted")  # the attempt not yet under way is cancelled
            v.start()  # waits for the teardown: it must not cut this one
            up = await s.next()
            assert isinstance(up, VpnUp) and up.tia == A("10.99.1.1")
            assert c.called == ["load", "terminate", "initiate"]
            assert v.translate(ChildRekeyed(1, "intranet")) == []
            await asyncio.gather(*v._side)  # the NAT read again failed: nothing said
        assert s.events.empty()
        assert "the VPN was not torn down: no such SA" in caplog.text
    finally:
        await v.close()
