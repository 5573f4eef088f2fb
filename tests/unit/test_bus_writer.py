"""The helper's bus writer under back-pressure, on a socket pair (no bus daemon):
a full socket buffer (EAGAIN) must mean "wait", never "drop the connection".
dbus-fast 5.2.0's own writer drops it (as dbus-next 0.2.3 does, upstream issue
altdesktop/python-dbus-next#153): the first case shows that, so a later dbus-fast
that fixes it is noticed here."""

from __future__ import annotations

import asyncio
import socket

import pytest
from dbus_fast.aio import message_bus as aio

from app.service.bus import Message, _PatientWriter

MESSAGES = 400


class FakeBus:
    """What the writer reads from its bus: the socket, the loop, and _finalize."""

    def __init__(self, sock: socket.socket) -> None:
        self._negotiate_unix_fd = False
        self._sock = sock
        self._fd = sock.fileno()
        self._loop = asyncio.get_running_loop()
        self._user_disconnect = False
        self.unique_name = ":1.1"
        self.finalized: list[BaseException | None] = []

    def _finalize(self, err: BaseException | None = None) -> None:
        self.finalized.append(err)


def reply(serial: int) -> Message:
    return Message(destination=":1.2", path="/org/trustroam/Helper1",
                   interface="org.trustroam.Helper1", member="X", signature="s",
                   body=["x" * 2000], serial=serial)


async def flood(writer_class: type) -> tuple[FakeBus, int, int]:
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    theirs.setblocking(False)
    bus = FakeBus(ours)
    writer = writer_class(bus)
    sent = 0
    for i in range(MESSAGES):  # nobody reads yet: the buffer fills
        msg = reply(i + 1)
        sent += len(msg._marshall(False))
        writer.schedule_write(msg)
        await asyncio.sleep(0)
        if bus.finalized:
            break
    got = 0
    loop = asyncio.get_running_loop()
    while got < sent and not bus.finalized:  # now the peer reads everything
        try:
            got += len(await asyncio.wait_for(loop.sock_recv(theirs, 1 << 16), 5))
        except TimeoutError:
            break
    loop.remove_writer(ours.fileno())
    ours.close()
    theirs.close()
    return bus, sent, got


async def test_dbus_fast_520s_own_writer_drops_the_connection_on_eagain():
    bus, _sent, _got = await flood(aio._MessageWriter)
    if not bus.finalized:
        pytest.fail("dbus-fast's writer survived EAGAIN: _PatientWriter may be dropped")
    assert isinstance(bus.finalized[0], BlockingIOError)


async def test_the_helpers_writer_waits_on_eagain_and_delivers_everything():
    bus, sent, got = await flood(_PatientWriter)
    assert bus.finalized == []
    assert got == sent
