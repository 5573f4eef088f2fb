"""Signals anyone can forge: the clients believe only the bus and the helper's owner.

Any uid may send any signal on the system bus, to anyone, with any path,
interface and member; only the sender's unique name is the bus's to write.  The
attacker here is another local user (uid nobody, tests/ui/attacker.py) on the
bus the tray and ``trustroamctl`` use, with the helper double owning the helper's
name as root (security review 2026-12-07, finding 5).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from app.api import BUS_NAME
from tests.dbus_client import NOBODY
from tests.ui.attacker import (
    as_uid,
    helper_changed,
    helper_event,
    owner_changed,
    peers,
    send_all,
)
from tests.ui.procs import ROOT, Procs, base_env

MARK = "FORGED-by-nobody"


# -- trustroamctl monitor ---------------------------------------------------------------------

class Lines:
    """A process's stdout, line by line, waited for with select (no sleeps)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._buf = b""

    def until(self, needle: str, timeout: float = 15) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            for line in self.seen:
                if needle in line:
                    return line
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"{needle!r} not printed in {timeout} s; "
                                     f"printed: {self.seen!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                err = self.proc.stderr.read() if self.proc.stderr else b""
                raise AssertionError(f"monitor ended before {needle!r}: {self.seen!r} "
                                     f"{err.decode(errors='replace')}")
            *lines, self._buf = (self._buf + chunk).split(b"\n")
            self.seen += [x.decode("utf-8", "replace") for x in lines]


@pytest.fixture
def world() -> Iterator[dict[str, Any]]:
    """A private system bus another uid can reach, with the helper double on it."""
    from tests.ui.conftest import require_desktop_tools

    require_desktop_tools()
    tmp = Path(tempfile.mkdtemp(prefix="trustroam-forge-"))
    tmp.chmod(0o711)  # nobody reaches the socket, lists nothing
    procs = Procs(tmp)
    try:
        bus = procs.dbus("system")
        env = base_env(DBUS_SYSTEM_BUS_ADDRESS=bus)
        procs.python("helper-double", "tests.ui.helper_double", env)
        yield {"bus": bus, "env": env, "procs": procs}
    finally:
        procs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


async def _emit(address: str, kind: str, details: dict[str, str]) -> None:
    bus = await MessageBus(bus_address=address).connect()
    try:
        reply = await bus.call(Message(destination=BUS_NAME, path="/org/trustroam/Test",
                                       interface="org.trustroam.Test1", member="Emit",
                                       signature="sa{ss}", body=[kind, details]))
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
    finally:
        bus.disconnect()


def test_monitor_prints_only_the_helpers_signals_with_bus_text_escaped(world: dict[str, Any]
                                                                         ) -> None:
    import asyncio

    monitor = world["procs"].add("monitor", subprocess.Popen(
        [sys.executable, "-m", "app.ctl", "monitor"], env=world["env"], cwd=ROOT,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = Lines(monitor)
    out.until("trustroam: offline")

    async def forge(bus: MessageBus) -> int:
        # Broadcast and to every connection by its unique name (ListNames is open).
        targets: list[str | None] = [None, *await peers(bus)]
        msgs = []
        for dest in targets:
            msgs += [helper_event(dest, "vpn-up", {"gateway": MARK, "time": "1.0"}),
                     helper_changed(dest, {"State": Variant("s", "trusted"),
                                           "Profile": Variant("s", MARK)}),
                     owner_changed(dest, BUS_NAME, "", bus.unique_name or "")]
            msgs.append(helper_event(dest, "after-owner", {"gateway": MARK}))
        await send_all(bus, msgs)
        return len(targets)

    assert asyncio.run(as_uid(NOBODY, world["bus"], forge)) >= 3
    # The real helper's Event, with a terminal escape, a newline and a time that is
    # not a number: printed escaped, and the monitor carries on.
    asyncio.run(_emit(world["bus"], "note", {
        "text": "\x1b[2J\x1b[H\x1b[32mtrustroam: trusted\x1b[0m\nchanged State=trusted",
        "time": "not-a-number"}))
    asyncio.run(_emit(world["bus"], "last", {"n": "1"}))
    out.until(" last ")
    note = out.until(" note ")
    assert monitor.poll() is None, "the monitor ended"
    monitor.terminate()
    _rest, err_bytes = monitor.communicate(timeout=10)
    err = err_bytes.decode(errors="replace")
    text = "\n".join(out.seen)
    assert MARK not in text, text
    assert "\x1b" not in text and "Traceback" not in err, (text, err)
    assert "text=\\x1b[2J\\x1b[H\\x1b[32mtrustroam: trusted\\x1b[0m\\nchanged State=trusted" \
        in note, note
    assert "not-a-number" in note, note  # the bad time is shown, not a traceback
    assert not any(line.startswith("changed ") for line in out.seen), text
