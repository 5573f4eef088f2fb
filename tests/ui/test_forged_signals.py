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
from dbus_fast import Message, MessageType, RequestNameReply, Variant
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


# -- the tray ---------------------------------------------------------------------------------

async def _owner(name: str = BUS_NAME) -> str:
    bus = await MessageBus(bus_address=os.environ["DBUS_SYSTEM_BUS_ADDRESS"]).connect()
    try:
        reply = await bus.call(Message(destination="org.freedesktop.DBus",
                                       path="/org/freedesktop/DBus",
                                       interface="org.freedesktop.DBus",
                                       member="GetNameOwner", signature="s", body=[name]))
        return str(reply.body[0])
    finally:
        bus.disconnect()


async def _tooltip_has(shell: Any, *parts: str) -> None:
    async def ok() -> bool:
        tip = await shell.tooltip()
        return all(p in tip for p in parts)

    try:
        await shell.until(ok, what=f"tooltip with {parts}")
    except TimeoutError:
        raise AssertionError(f"tooltip is {await shell.tooltip()!r}, wanted {parts}") from None


def test_forged_name_owner_changed_does_not_unseat_the_helper(double: Any, tray: Any,
                                                              shell: Any, qloop: Any) -> None:
    """Another user tells the tray, in the bus's words, that the helper has gone and
    then that it is the helper now; then speaks as the helper.  The tray keeps
    following the real helper (its next change shows) and shows none of it."""
    from tests.ui.conftest import run

    address = os.environ["DBUS_SYSTEM_BUS_ADDRESS"]

    async def go() -> None:
        await shell.find_item()
        real = await _owner()
        assert tray.helper.owner == real
        victim = tray.bus.unique_name

        async def forge(bus: MessageBus) -> None:
            me = bus.unique_name or ""
            await send_all(bus, [
                owner_changed(victim, BUS_NAME, real, ""),
                owner_changed(victim, BUS_NAME, "", me),
                helper_event(victim, "vpn-up", {"gateway": MARK}),
                helper_changed(victim, {"State": Variant("s", "untrusted"),
                                        "Mode": Variant("s", "none"),
                                        "Error": Variant("s", MARK)})])

        await as_uid(NOBODY, address, forge)
        await double.set(state="trusted", mode="c", care_of_address="192.168.7.20")
        await _tooltip_has(shell, "own care-of address (mode c)")
        assert tray.helper.owner == real
        assert MARK not in await shell.tooltip()
        assert not [e for e in tray.history if MARK in str(e.details)], list(tray.history)

    run(qloop, go())


@pytest.fixture
def nm(desktop: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    from tests.ui.test_tray_nm import NMDouble

    procs = Procs(tmp_path)
    try:
        yield NMDouble(procs, desktop["DBUS_SYSTEM_BUS_ADDRESS"])
    finally:
        procs.stop()


async def _wifi(nm: Any, double: Any, ssid: str) -> str:
    """NetworkManager on a Wi-Fi network named ``ssid``; the access point's path."""
    nm_name = "org.freedesktop.NetworkManager"
    dev = await nm.mock(double, "AddWiFiDevice", "ssi", ["wifi0", "wlan0", 100])
    ap = await nm.mock(double, "AddAccessPoint", "ssssuuuyu",
                       [dev, "ap1", ssid, "00:11:22:33:44:55", 2, 2437, 5400, 80, 0])
    await nm.mock(double, "AddProperty", "ssv",
                  [nm_name + ".Device.Wireless", "ActiveAccessPoint",
                   Variant("o", ap)], dev)
    conn = await nm.mock(double, "AddWiFiConnection", "ssss", [dev, "w", ssid, "wpa-psk"])
    await nm.mock(double, "AddActiveConnection", "assssu", [[dev], conn, ap, "a1", 2])
    return str(ap)


async def _set_ssid(nm: Any, double: Any, ap: str, ssid: bytes) -> None:
    await nm.mock(double, "SetProperty", "sssv",
                  [ap, "org.freedesktop.NetworkManager.AccessPoint", "Ssid",
                   Variant("ay", ssid)])


def test_forged_networkmanager_owner_change_is_ignored(nm: Any, double: Any, tray: Any,
                                                       shell: Any, qloop: Any) -> None:
    from tests.ui.conftest import run

    address = os.environ["DBUS_SYSTEM_BUS_ADDRESS"]

    async def go() -> None:
        await shell.find_item()
        ap = await _wifi(nm, double, "CorpWiFi")
        await _tooltip_has(shell, "Network: CorpWiFi (Wi-Fi)")
        real = await _owner("org.freedesktop.NetworkManager")
        victim = tray.bus.unique_name

        async def forge(bus: MessageBus) -> None:
            await send_all(bus, [
                owner_changed(victim, "org.freedesktop.NetworkManager", real, ""),
                owner_changed(victim, "org.freedesktop.NetworkManager", "",
                              bus.unique_name or "")])

        await as_uid(NOBODY, address, forge)
        await _set_ssid(nm, double, ap, b"Cafe")
        await _tooltip_has(shell, "Network: Cafe (Wi-Fi)")
        assert tray.nm.owner == real

    run(qloop, go())


def test_text_from_the_bus_is_shown_escaped_and_bounded(nm: Any, double: Any, tray: Any,
                                                        shell: Any, qloop: Any) -> None:
    """An access point's name (anyone nearby chooses it), the helper's error and its
    events reach the tooltip, the notification and the history without a control
    character, and cut to a bounded length."""
    from tests.ui.conftest import run

    async def notes() -> list[tuple[str, str]]:
        body = await shell._call("org.freedesktop.Notifications", "/TestShell",
                                 "org.trustroam.TestShell", "Notifications")
        return [tuple(n) for n in body[0]]

    async def go() -> None:
        await shell.find_item()
        before = len(await notes())
        await _wifi(nm, double, "Evil\x1b]0;owned\x07\u202eiFiW\nNetwork: Home")
        await _tooltip_has(shell, "Network: Evil\\x1b]0;owned\\x07\\u202eiFiW\\nNetwork: Home")
        await double.set(state="error", mode="none", error="bad\x1b[2J\x07" + "x" * 5000)
        await _tooltip_has(shell, "Error: bad\\x1b[2J\\x07xxx")
        tip = await shell.tooltip()
        assert len(tip) < 1500 and "\x1b" not in tip and "\u202e" not in tip, tip

        async def noted() -> bool:
            return any("bad" in text for _t, text in (await notes())[before:])

        await shell.until(noted, what="the error's notification")
        text = next(t for _t, t in (await notes())[before:] if "bad" in t)
        assert "\x1b" not in text and "\x07" not in text and len(text) < 1000, text
        await double.call("Emit", "sa{ss}", ["odd\x1b[5m", {"note": "v\x1b[31m\n" + "y" * 5000}])

        async def evented() -> bool:
            return any(e.kind.startswith("odd") for e in tray.history)

        await shell.until(evented, what="the event in the tray's history")
        e = next(e for e in tray.history if e.kind.startswith("odd"))
        assert e.kind == "odd\\x1b[5m", e.kind
        assert e.details["note"].startswith("v\\x1b[31m\\nyyy"), e.details
        assert len(e.details["note"]) < 1000

    run(qloop, go())


# -- the tray's secret agent ------------------------------------------------------------------

CANARY = "hex:" + "5ec7e75ec7e75ec7" * 2 + "abcd"


async def _ask_secrets(bus: MessageBus, agent: str) -> tuple[str, Any]:
    from ui.helper_client import AGENT_PATH

    reply = await bus.call(Message(destination=agent, path=AGENT_PATH,
                                   interface="org.trustroam.SecretAgent1",
                                   member="GetSecrets", signature="sas",
                                   body=["corp", ["mn_ha_key"]]))
    return (reply.error_name or "", list(reply.body))


def _refused(got: tuple[str, Any]) -> None:
    error, body = got
    assert error == "org.freedesktop.DBus.Error.AccessDenied", got
    assert CANARY not in repr(body), got


def test_agent_refuses_get_secrets_from_another_uid(double: Any, tray: Any, qloop: Any
                                                    ) -> None:
    from tests.ui.conftest import run

    tray.store.set("corp", "mn_ha_key", CANARY)
    try:
        got = run(qloop, as_uid(NOBODY, os.environ["DBUS_SYSTEM_BUS_ADDRESS"],
                                lambda bus: _ask_secrets(bus, tray.bus.unique_name)))
        _refused(got)
    finally:
        tray.store.delete("corp", "mn_ha_key")


def test_agent_refuses_get_secrets_from_root_not_owning_the_helpers_name(
        double: Any, tray: Any, qloop: Any) -> None:
    from tests.ui.conftest import run

    tray.store.set("corp", "mn_ha_key", CANARY)
    try:
        got = run(qloop, as_uid(None, os.environ["DBUS_SYSTEM_BUS_ADDRESS"],
                                lambda bus: _ask_secrets(bus, tray.bus.unique_name)))
        _refused(got)
        # The helper itself (root, owner of its name) is still answered.
        assert run(qloop, double.call("AskSecrets", "sas", ["corp", ["mn_ha_key"]])) == {
            "mn_ha_key": CANARY}
    finally:
        tray.store.delete("corp", "mn_ha_key")


def test_agent_refuses_the_helpers_name_owned_by_another_uid(tray: Any, qloop: Any) -> None:
    """No helper running: another user takes the helper's name (this test bus lets
    anyone own any name) and asks; not root, so refused."""
    from tests.ui.conftest import run

    async def own_and_ask(bus: MessageBus) -> tuple[str, Any]:
        assert await bus.request_name(BUS_NAME) is RequestNameReply.PRIMARY_OWNER
        return await _ask_secrets(bus, tray.bus.unique_name)

    tray.store.set("corp", "mn_ha_key", CANARY)
    try:
        _refused(run(qloop, as_uid(NOBODY, os.environ["DBUS_SYSTEM_BUS_ADDRESS"],
                                   own_and_ask)))
    finally:
        tray.store.delete("corp", "mn_ha_key")
