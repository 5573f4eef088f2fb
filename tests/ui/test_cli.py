"""The ``trustroam`` command: --version, --help, one instance per session, quitting
leaves the connection alone.  Runs the real command in a private desktop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ui.procs import ROOT, Procs, _name_has_owner, base_env, wait_for
from tests.ui.shell import Shell


def trustroam(*args: str, env: dict[str, str] | None = None, timeout: float = 30
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ui.main", *args], env=env or base_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL, check=False)


def test_version_and_help_need_no_display() -> None:
    r = trustroam("--version")
    assert r.returncode == 0 and r.stdout.startswith("trustroam "), r
    r = trustroam("--help")
    assert r.returncode == 0 and "Quitting the tray leaves the connection" in r.stdout
    r = trustroam("--log-level", "loud")
    assert r.returncode == 2 and "invalid choice: 'loud'" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def session(tmp_path: Path) -> Iterator[tuple[Procs, dict[str, str]]]:
    from tests.ui.conftest import require_desktop_tools

    require_desktop_tools()
    procs = Procs(tmp_path)
    try:
        env = base_env(DBUS_SYSTEM_BUS_ADDRESS=procs.dbus("system"),
                       DBUS_SESSION_BUS_ADDRESS=procs.dbus("session"),
                       DISPLAY=procs.xvfb(), QT_QPA_PLATFORM="xcb", HOME=str(tmp_path),
                       XDG_CONFIG_HOME=str(tmp_path / "config"))
        procs.python("sni-watcher", "tests.ui.sni_watcher", env)
        procs.python("helper-double", "tests.ui.helper_double", env)
        yield procs, env
    finally:
        procs.stop()


def test_single_instance_and_quit_never_disconnects(session: tuple[Procs, dict[str, str]]
                                                    ) -> None:
    procs, env = session
    first = procs.add("trustroam", subprocess.Popen(
        [sys.executable, "-m", "ui.main", "--log-level", "info"], env=env, cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    wait_for(lambda: _name_has_owner(env["DBUS_SESSION_BUS_ADDRESS"], "org.trustroam.Tray"),
             20, "the first tray's name")
    second = trustroam(env=env)
    assert second.returncode == 0
    assert second.stderr.strip() == "trustroam: already running in this session"
    assert first.poll() is None
    # A second start asking for the status window (the .desktop entry's Exec) opens it
    # in the running tray instead.
    again = trustroam("--status", env=env)
    assert again.returncode == 0 and again.stderr == "", again

    async def go() -> list[str]:
        from dbus_fast.aio import MessageBus
        from dbus_fast.message import Message

        shell = Shell(env["DBUS_SESSION_BUS_ADDRESS"])
        await shell.connect()
        sysbus = await MessageBus(bus_address=env["DBUS_SYSTEM_BUS_ADDRESS"]).connect()

        async def test1(member: str, sig: str = "", body: list[Any] | None = None) -> Any:
            reply = await sysbus.call(Message(
                destination="org.trustroam.Helper1", path="/org/trustroam/Test",
                interface="org.trustroam.Test1", member=member, signature=sig,
                body=body or []))
            return reply.body[0] if reply.body else None

        try:
            await shell.find_item()
            await test1("Set", "s", ['{"state": "trusted", "mode": "h", "profile": "corp"}'])

            async def shows_it() -> bool:
                return "mode h" in await shell.tooltip()

            await shell.until(shows_it, what="trusted in the tooltip")
            await shell.click("Quit")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, first.wait, 20)
            return list(await test1("Calls"))
        finally:
            shell.close()
            sysbus.disconnect()

    calls = asyncio.run(go())
    assert first.returncode == 0
    assert "Disconnect" not in calls and any(c.startswith("RegisterSecretAgent") for c in calls)
    assert first.stderr is not None
    log = first.stderr.read()
    assert "Traceback" not in log and "status window shown" in log, log
