"""Fixtures for the tray's tests: a private desktop per session, a helper double per test.

The session gets its own Xvfb (xcb platform), a session bus with a
StatusNotifierWatcher + notification server (tests/ui/sni_watcher.py) and an
unlocked gnome-keyring, and a private bus in the system bus's role.  The
QApplication is created only after all that, since Qt chooses SNI or the X tray
once, at the first tray icon.  Tests run with no DISPLAY of their own.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.requirements import require
from tests.ui.procs import Procs

OUT = Path(__file__).resolve().parent / "output"
TOOLS = ("Xvfb", "dbus-daemon", "dbus-monitor", "gnome-keyring-daemon", "trayer", "xdotool",
         "import")


def require_desktop_tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    require(not missing, f"the tray's tests need {', '.join(missing)} "
                         "(scripts/install-deps installs them)")
    for mod in ("PySide6", "qasync", "keyring", "dbusmock", "pytestqt"):
        try:
            __import__(mod)
        except ImportError:
            require(False, f"python module {mod} missing: pip install -e '.[test]'")


@pytest.fixture(scope="session")
def desktop() -> Iterator[dict[str, str]]:
    require_desktop_tools()
    tmp = Path(tempfile.mkdtemp(prefix="trustroam-ui-"))
    tmp.chmod(0o711)  # another uid reaches the buses' sockets (attack tests), lists nothing
    procs = Procs(tmp)
    saved = {k: os.environ.get(k) for k in ("DISPLAY", "DBUS_SESSION_BUS_ADDRESS",
                                             "DBUS_SYSTEM_BUS_ADDRESS", "QT_QPA_PLATFORM",
                                             "XDG_RUNTIME_DIR")}
    try:
        system = procs.dbus("system")
        session = procs.dbus("session")
        display = procs.xvfb()
        env = {"DBUS_SYSTEM_BUS_ADDRESS": system, "DBUS_SESSION_BUS_ADDRESS": session,
               "DISPLAY": display, "QT_QPA_PLATFORM": "xcb"}
        from tests.ui.procs import base_env

        procs.python("sni-watcher", "tests.ui.sni_watcher", base_env(**env))
        kenv = procs.keyring(session)
        runtime = Path(kenv["XDG_RUNTIME_DIR"])
        os.environ.update(env, XDG_RUNTIME_DIR=str(runtime))
        yield {**env, "tmp": str(tmp), "keyring_pid": str(procs.procs[-1][1].pid)}
    finally:
        procs.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def qapp(desktop: dict[str, str]) -> Any:
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication(["trustroam-tests"])
    app.setApplicationName("trustroam")
    app.setQuitOnLastWindowClosed(False)
    return app


@pytest.fixture(scope="session")
def qloop(qapp: Any) -> Iterator[asyncio.AbstractEventLoop]:
    import qasync

    loop = qasync.QEventLoop(qapp)
    yield loop
    loop.close()  # while the QApplication lives: qasync's close needs it
    asyncio.set_event_loop(None)


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any],
        timeout: float = 20) -> Any:
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(asyncio.wait_for(coro, timeout))


class DoubleControl:
    """The test's handle on the helper double (its process and Test1 interface)."""

    def __init__(self, procs: Procs, env: dict[str, str], loop: asyncio.AbstractEventLoop
                 ) -> None:
        self.procs = procs
        self.env = env
        self.loop = loop
        self.proc: Any = None
        self.bus: Any = None

    def start(self) -> None:
        from tests.ui.procs import base_env

        self.proc = self.procs.python("helper-double", "tests.ui.helper_double",
                                      base_env(**self.env))

    def kill(self) -> None:
        self.procs.stop_one(self.proc)
        self.procs.procs = [(n, p) for n, p in self.procs.procs if p is not self.proc]

    async def _bus(self) -> Any:
        if self.bus is None:
            from dbus_fast.aio import MessageBus

            self.bus = await MessageBus(bus_address=self.env["DBUS_SYSTEM_BUS_ADDRESS"]
                                        ).connect()
        return self.bus

    async def call(self, member: str, sig: str = "", body: list[Any] | None = None) -> Any:
        from dbus_fast.constants import MessageType
        from dbus_fast.message import Message

        from app.api import BUS_NAME

        bus = await self._bus()
        reply = await bus.call(Message(destination=BUS_NAME, path="/org/trustroam/Test",
                                       interface="org.trustroam.Test1", member=member,
                                       signature=sig, body=body or []))
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body
        return reply.body[0] if reply.body else None

    async def set(self, **changes: Any) -> None:
        await self.call("Set", "s", [json.dumps(changes)])

    async def calls(self) -> list[str]:
        return list(await self.call("Calls"))


@pytest.fixture
def double(desktop: dict[str, str], qloop: asyncio.AbstractEventLoop,
           tmp_path: Path) -> Iterator[DoubleControl]:
    procs = Procs(tmp_path)
    env = {k: desktop[k] for k in ("DBUS_SYSTEM_BUS_ADDRESS", "DBUS_SESSION_BUS_ADDRESS")}
    d = DoubleControl(procs, env, qloop)
    d.start()
    try:
        yield d
    finally:
        if d.bus is not None:
            d.bus.disconnect()
        procs.stop()


@pytest.fixture
def tray(qloop: asyncio.AbstractEventLoop, qapp: Any) -> Iterator[Any]:
    """The tray in this process (the tests' qasync loop), asking no dialogs by default."""
    from ui.tray import Tray

    t = Tray(ask_secrets=False)
    run(qloop, t.start())
    try:
        yield t
    finally:
        t.close()
        qapp.processEvents()


@pytest.fixture
def shell(desktop: dict[str, str], qloop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """A desktop shell's view of the session bus: the StatusNotifierItem and its menu."""
    from tests.ui.shell import Shell

    s = Shell(desktop["DBUS_SESSION_BUS_ADDRESS"])
    run(qloop, s.connect())
    try:
        yield s
    finally:
        s.close()
