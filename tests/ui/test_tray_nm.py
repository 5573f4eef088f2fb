"""The network's name from NetworkManager (python-dbusmock's networkmanager template
on the private system bus), and notifications coalesced per settled change."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dbus_fast.signature import Variant

from tests.ui.conftest import run
from tests.ui.procs import ROOT, Procs, _name_has_owner, base_env, wait_for
from tests.ui.shell import Shell

NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
MOCK = "org.freedesktop.DBus.Mock"


class NMDouble:
    def __init__(self, procs: Procs, system: str) -> None:
        self.procs = procs
        self.system = system
        self.proc = procs.add("dbusmock-nm", subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--system", "--template", "networkmanager"],
            env=base_env(DBUS_SYSTEM_BUS_ADDRESS=system), stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=ROOT))
        wait_for(lambda: _name_has_owner(system, NM), 20, "dbusmock's NetworkManager")

    async def mock(self, double: Any, member: str, sig: str, body: list[Any],
                   path: str = NM_PATH) -> Any:
        from dbus_fast.constants import MessageType
        from dbus_fast.message import Message

        bus = await double._bus()
        reply = await bus.call(Message(destination=NM, path=path, interface=MOCK,
                                       member=member, signature=sig, body=body))
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return reply.body[0] if reply.body else None


@pytest.fixture
def nm(desktop: dict[str, str], tmp_path: Path) -> Iterator[NMDouble]:
    procs = Procs(tmp_path)
    try:
        yield NMDouble(procs, desktop["DBUS_SYSTEM_BUS_ADDRESS"])
    finally:
        procs.stop()




async def _tooltip_has(shell: Shell, text: str, present: bool = True) -> None:
    async def ok() -> bool:
        return (text in await shell.tooltip()) == present

    await shell.until(ok, what=f"tooltip {'with' if present else 'without'} {text!r}")


def test_network_name_follows_networkmanager(nm: NMDouble, double: Any, tray: Any,
                                             shell: Shell, qloop: Any) -> None:
    async def go() -> None:
        await shell.find_item()
        dev = await nm.mock(double, "AddWiFiDevice", "ssi", ["wifi0", "wlan0", 100])
        ap = await nm.mock(double, "AddAccessPoint", "ssssuuuyu",
                           [dev, "ap1", "CorpWiFi", "00:11:22:33:44:55", 2, 2437, 5400, 80, 0])
        # The template's Wi-Fi device has no ActiveAccessPoint: add it as NM has it.
        await nm.mock(double, "AddProperty", "ssv",
                      [NM + ".Device.Wireless", "ActiveAccessPoint", Variant("o", ap)], dev)
        conn = await nm.mock(double, "AddWiFiConnection", "ssss",
                             [dev, "corpwifi", "CorpWiFi", "wpa-psk"])
        await nm.mock(double, "AddActiveConnection", "assssu", [[dev], conn, ap, "a1", 2])
        await _tooltip_has(shell, "Network: CorpWiFi (Wi-Fi)")
        # The SSID changes (roaming to another network): the tooltip follows at once.
        await nm.mock(double, "SetProperty", "sssv",
                      [ap, NM + ".AccessPoint", "Ssid", Variant("ay", b"Cafe")])
        await _tooltip_has(shell, "Network: Cafe (Wi-Fi)")
        # NetworkManager goes away: no name, the tray keeps running.
        nm.procs.stop_one(nm.proc)
        await _tooltip_has(shell, "Network:", present=False)
        await double.set(state="trusted", mode="h")
        await _tooltip_has(shell, "mode h")

    run(qloop, go())


def test_notifications_one_per_settled_change(double: Any, tray: Any, shell: Shell,
                                              qloop: Any, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    async def notes() -> list[tuple[str, str]]:
        assert shell.bus is not None
        body = await shell._call("org.freedesktop.Notifications", "/TestShell",
                                 "org.trustroam.TestShell", "Notifications")
        return [tuple(n) for n in body[0]]

    async def go() -> None:
        await shell.find_item()
        before = len(await notes())
        # A handover's steps: probing, then trusted c: one notification, for the result.
        await double.set(state="probing")
        await double.set(state="trusted", mode="c", care_of_address="192.168.7.20")

        async def one_more() -> bool:
            return len(await notes()) >= before + 1

        await shell.until(one_more, what="a notification")
        got = (await notes())[before:]
        assert len(got) == 1 and "mode c" in got[0][1], got
        # An error the user must act on, in words.
        await double.set(state="error", mode="none",
                         error="denied by home agent: mobile node failed authentication (131)")

        async def two_more() -> bool:
            return len(await notes()) >= before + 2

        await shell.until(two_more, what="the error's notification")
        got = (await notes())[before:]
        assert "The home agent refused the key (131): check the profile's key" in got[1][1]
        # Back and forth within the settle time: the user was told about "error" last,
        # the state ends as error again: nothing new.
        fired = asyncio.get_running_loop().create_future()
        tray.settle_timer.timeout.connect(lambda: fired.done() or fired.set_result(None))
        await double.set(state="probing", error="")
        await double.set(state="error", error="denied by home agent: mobile node "
                                               "failed authentication (131)")
        await asyncio.wait_for(fired, 10)  # the tray's own handler ran first
        assert len(await notes()) == before + 2

    run(qloop, go())
