"""Hostile or broken peers (issue 20, faults): each logged in one line naming the
peer and ignored, never a crash or a state change.

charon (a fake VICI server, ``tests/fake_vici.py``) sending an event that does not
decode, or a packet too short to parse, or answering a command with garbage; a
registration reply through the VPN whose Mobile-Home authenticator is wrong.  A
hung charon is ``test_vpn_charon.test_a_hung_charon_never_blocks_the_loop``.
"""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest
from vici.protocol import Packet

from app.api import Mode, State
from app.mip.auth import Algorithm, append_authenticator
from app.mip.codes import ReplyCode
from app.mip.extensions import ExtType
from app.mip.messages import RegistrationReply, RegistrationRequest
from app.vpn.charon import Charon, VpnUnreachableError
from app.vpn.events import VpnDown, VpnUnreachable, VpnUp
from tests.fake_vici import FakeVici
from tests.support.identities import HA
from tests.support.world import TIA, World
from tests.unit import vici_events as ev
from tests.unit.test_vpn_charon import CFG, Events, adapter

WRONG_KEY = b"\x42" * 16


def event_packet(name: str, body: bytes) -> bytes:
    return struct.pack("!BB", Packet.EVENT, len(name)) + name.encode() + body


def warnings_naming(caplog: pytest.LogCaptureFixture, peer: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and peer in r.getMessage()]


# -- charon ------------------------------------------------------------------------------

@pytest.mark.parametrize("packet", [
    event_packet("child-updown", b"\x02"),           # a section ended that never began
    event_packet("child-updown", b"\x03\x05up"),     # a key-value cut short
    b"",                                             # an empty packet
    bytes([Packet.EVENT]),                           # an event with no name
    bytes([Packet.CMD_RESPONSE]) + b"\x01",          # not an event at all
], ids=["bad-section", "cut-short", "empty", "no-name", "not-an-event"])
async def test_a_malformed_vici_event_is_logged_naming_charon_and_the_stream_goes_on(
        tmp_path, caplog: pytest.LogCaptureFixture, packet: bytes) -> None:
    """It read as "charon not reachable" (mc shut, the VPN torn down and brought up
    again), or killed the event thread for good (a packet too short to parse)."""
    fake = FakeVici(tmp_path / "charon.vici")
    events = Events()
    a = adapter(fake.path, events)
    caplog.set_level(logging.WARNING, logger="trustroam.vpn")
    try:
        await a.start()
        await a.load(CFG, {"vpn_psk": "x"})
        fake.push_raw("child-updown", packet)
        fake.push("child-updown", ev.CHILD_UP[1])  # the next event still comes
        await events.next(VpnUp)
        assert not [e for e in events.seen if isinstance(e, VpnUnreachable)], events.seen
        assert a.reachable
        lines = warnings_naming(caplog, str(fake.path))
        assert len(lines) == 1 and "ignored" in lines[0], lines
    finally:
        await a.close()
        fake.close()


async def _charon_with_sa_up(tmp_path, caplog: pytest.LogCaptureFixture,
                             **kw: float) -> tuple[FakeVici, Events, Charon]:
    fake = FakeVici(tmp_path / "charon.vici")
    events = Events()
    a = adapter(fake.path, events, **kw)
    a.event_body_timeout = 0.3
    caplog.set_level(logging.WARNING, logger="trustroam.vpn")
    await a.start()
    await a.load(CFG, {"vpn_psk": "x"})
    fake.push(*_named(ev.CHILD_UP))
    await events.next(VpnUp)
    return fake, events, a


def _named(event: tuple[bytes, dict[str, object]]) -> tuple[str, dict[str, object]]:
    return event[0].decode(), event[1]


async def _registered_again(fake: FakeVici, times: int) -> None:
    async with asyncio.timeout(5):
        while fake.registrations("child-updown") < times:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("wrong", [
    # a length larger than the packet: the events after it were read as its body
    struct.pack("!I", 100) + b"\x07" * 10,
    # 2 GiB: vici blocked for good, its buffer growing
    struct.pack("!I", 2**31) + b"\x07" * 10,
    # half a packet, then nothing: vici blocked for good
    struct.pack("!I", 64) + bytes([Packet.EVENT]) + b"\x0c",
], ids=["too-long-then-events", "2-GiB", "cut-short"])
async def test_a_wrong_vici_length_prefix_reconnects_and_the_sa_lost_meanwhile_is_reported_down(
        tmp_path, caplog: pytest.LogCaptureFixture, wrong: bytes) -> None:
    """A wrong length put the event stream out of step for good (every later event
    lost, the SA state stale) or blocked the event thread forever.  Now the event
    connection is dropped with one warning naming charon's socket, registered again,
    charon's SAs are listed, and the SA that went meanwhile is reported down."""
    fake, events, a = await _charon_with_sa_up(tmp_path, caplog)
    try:
        fake.streams["list-sas"] = []  # the SA went while the events were lost
        fake.push_bytes("child-updown", wrong)
        fake.push(*_named(ev.CHILD_DOWN))  # swallowed, or sent to nobody
        fake.push(*_named(ev.IKE_DOWN))
        down = await events.next(VpnDown)
        assert down.ike_id == 1, down
        await _registered_again(fake, 2)
        assert "list-sas" in fake.names()
        assert not [e for e in events.seen if isinstance(e, VpnUnreachable)], events.seen
        lines = [m for m in warnings_naming(caplog, str(fake.path)) if "out of step" in m]
        assert len(lines) == 1, warnings_naming(caplog, str(fake.path))
        fake.push(*_named(ev.CHILD_UP))  # the new connection carries events
        await events.next(VpnUp)
    finally:
        await a.close()
        fake.close()


async def test_the_vici_event_thread_survives_an_unexpected_exception_and_reconnects(
        tmp_path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The listener caught only protocol errors: anything else (a MemoryError from a
    huge packet, a bug) ended the event thread silently, charon's events gone."""
    fake, _, a = await _charon_with_sa_up(tmp_path, caplog)
    try:
        real = a._relay
        calls = [0]

        def flaky(label: bytes, message: object) -> None:
            calls[0] += 1
            if calls[0] == 1:
                raise MemoryError("boom")
            real(label, message)  # type: ignore[arg-type]

        real_to_loop = a._to_loop

        def to_loop(fn, *args):  # type: ignore[no-untyped-def]
            if fn == a._relay:
                flaky(*args)  # on the event thread, as a decode failure would be
                return
            real_to_loop(fn, *args)

        monkeypatch.setattr(a, "_to_loop", to_loop)
        fake.push(*_named(ev.CHILD_DOWN))
        await _registered_again(fake, 2)
        lines = [m for m in warnings_naming(caplog, str(fake.path)) if "MemoryError" in m]
        assert len(lines) == 1, lines
    finally:
        await a.close()
        fake.close()


async def test_a_garbage_answer_to_a_command_is_a_vpn_error_naming_charon_not_a_crash(
        tmp_path) -> None:
    fake = FakeVici(tmp_path / "charon.vici")
    fake.raw_replies["list-sas"] = b""  # too short to be a packet
    events = Events()
    a = adapter(fake.path, events)
    try:
        await a.start()
        with pytest.raises(VpnUnreachableError) as info:
            await a.tia()
        assert str(fake.path) in str(info.value)
    finally:
        await a.close()
        fake.close()


# -- a registration reply through the VPN with a wrong authenticator ----------------------

def test_rfc5944_3_6_2_1_b_a_forged_reply_through_the_vpn_is_logged_once_naming_the_path(
        caplog: pytest.LogCaptureFixture) -> None:
    """During mc's renewal a reply echoing its identification, every code, under
    another key: one warning naming the request's source (the TIA) and the home
    agent; mc, the gate and the binding as they were; the real reply still counts."""
    caplog.set_level(logging.WARNING, logger="trustroam.mn")
    w = World(through=0.5)  # the real reply comes later than the forgeries
    w.move("pub")
    w.run(20)
    assert w.m.mode is Mode.VPN
    n_gates, n_status = len(w.gates), len(w.statuses)
    w.run_until(w.m.vpn_client.get_timer())  # the renewal leaves
    renewal = [s for _, s in w.sent if s.through_vpn][-1]
    req = RegistrationRequest.decode(renewal.datagram.data)
    caplog.clear()
    for code in (ReplyCode.ACCEPTED, ReplyCode.HA_MN_AUTH_FAILED,
                 ReplyCode.HA_IDENTIFICATION_MISMATCH):
        head = RegistrationReply(code, 0, req.home_address, req.home_agent,
                                 req.identification).encode()
        w.apply(w.m.receive(append_authenticator(head, ExtType.MOBILE_HOME_AUTH, 256,
                                                 WRONG_KEY, Algorithm.HMAC_MD5), w.now))
    lines = [r.getMessage() for r in caplog.records if "discarded" in r.getMessage()]
    assert len(lines) == 1, lines
    assert str(TIA) in lines[0] and str(HA) in lines[0], lines[0]
    w.run(5)
    assert (w.m.phase, w.m.mode, w.m.error) == (State.UNTRUSTED, Mode.VPN, None)
    assert w.gates[n_gates:] == [] and w.statuses[n_status:] == []
    assert w.m.vpn_client.binding is not None and w.m.vpn_client.binding.renewal
    w.agrees()
