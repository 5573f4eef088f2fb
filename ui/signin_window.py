"""The captive-portal sign-in window: ``python3 -m ui.signin_window`` (issue 19).

A process of its own, started by the tray's "Sign in to this network…" (the tray
never loads QtWebEngine: its memory stays small).  Before anything else it asks
the helper to open the sign-in (OpenSignIn): the helper puts this process in a
cgroup of its own and lets only that cgroup's HTTP, HTTPS and DNS (to the link's
resolvers) out on the physical link, for a limited time.  Only then is
QtWebEngine started, so its helper processes are in the same cgroup.

One page, no tabs: a fresh off-the-record profile (no cookies, cache or history
of the user's, nothing kept), popups opened in the same page, the address shown
read-only.  Closing the window closes the sign-in (CloseSignIn) and the helper
tries the VPN again at once.

It prints ``SIGNIN-OPEN <address> <seconds>``, ``LOADED <url>`` after each page
load, and ``CLOSED`` on stdout (the tests and the benchmark read them).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

from app.api import BUS_NAME, INTERFACE, OBJECT_PATH
from app.client_bus import BusType, Message, MessageBus, MessageFlag, MessageType, shown

TITLE = "Sign in to this network"
SCHEMES = frozenset({"http", "https", "about", "data", "blob"})
"""What the page may navigate to: the web, and what never leaves the machine.  Any
other scheme (mailto:, steam:...) would start an external application as a child of
this process, in its cgroup: with clear HTTP and HTTPS out."""
UNSAFE_ENV = ("QTWEBENGINE_REMOTE_DEBUGGING", "QTWEBENGINE_CHROMIUM_FLAGS")
"""Never inherited: a debugging port or Chromium flags (a proxy, a remote
debugger) would let other programs drive this process's way out."""


async def _call(member: str) -> list[object]:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        reply = await bus.call(Message(destination=BUS_NAME, path=OBJECT_PATH,
                                       interface=INTERFACE, member=member,
                                       flags=MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION))
    finally:
        bus.disconnect()
    if reply is None:
        raise RuntimeError(f"no answer to {member} from trustroamd")
    if reply.message_type is MessageType.ERROR:
        raise RuntimeError(shown(reply.body[0] if reply.body else reply.error_name, 300))
    return list(reply.body)


def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()
    try:
        portal, seconds = asyncio.run(_call("OpenSignIn"))
    except (RuntimeError, OSError) as exc:
        print(f"trustroam sign-in: cannot open the sign-in: {exc}", file=sys.stderr)
        return 1
    print(f"SIGNIN-OPEN {portal} {float(seconds):g}", flush=True)  # type: ignore[arg-type]
    try:
        return _window(str(portal), float(seconds), t0)  # type: ignore[arg-type]
    finally:
        try:
            asyncio.run(_call("CloseSignIn"))
        except (RuntimeError, OSError) as exc:
            print(f"trustroam sign-in: closing: {exc}", file=sys.stderr)
        print("CLOSED", flush=True)


@dataclass
class Parts:
    """The window's parts (tests read them: one page, off the record, read-only)."""

    app: Any
    win: Any
    address: Any
    left: Any
    view: Any
    page: Any
    profile: Any


def build(portal: str) -> Parts:
    """The window for ``portal``, not shown, nothing loaded."""
    for name in UNSAFE_ENV:
        os.environ.pop(name, None)
    if os.geteuid() == 0:
        # Chromium refuses its sandbox as root (the lab and its tests run as root).
        os.environ.setdefault("QTWEBENGINE_DISABLE_SANDBOX", "1")
    # Loaded here, in this process only, after the hole is keyed to it.
    from PySide6.QtCore import QUrl
    from PySide6.QtWebEngineCore import QWebEnginePage, QWebEngineProfile, QWebEngineSettings
    from PySide6.QtWebEngineWidgets import QWebEngineView
    from PySide6.QtWidgets import QApplication, QLabel, QLineEdit, QVBoxLayout, QWidget

    class OnePage(QWebEnginePage):
        """Popups and new tabs open here, in the one page."""

        def createWindow(self, _kind: QWebEnginePage.WebWindowType
                         ) -> QWebEnginePage:
            return self

        def acceptNavigationRequest(self, url: QUrl | str,
                                    _type: QWebEnginePage.NavigationType,
                                    _main: bool) -> bool:
            return QUrl(url).scheme().lower() in SCHEMES

    app = QApplication.instance() or QApplication(sys.argv[:1])
    profile = QWebEngineProfile()  # no storage name: off the record, nothing kept
    profile.setHttpCacheType(QWebEngineProfile.HttpCacheType.MemoryHttpCache)
    page = OnePage(profile)
    page.settings().setUnknownUrlSchemePolicy(
        QWebEngineSettings.UnknownUrlSchemePolicy.DisallowUnknownUrlSchemes)
    win = QWidget()
    win.setWindowTitle(TITLE)
    address = QLineEdit(portal)
    address.setReadOnly(True)
    left = QLabel()
    view = QWebEngineView()
    view.setPage(page)
    layout = QVBoxLayout(win)
    layout.addWidget(address)
    layout.addWidget(view, 1)
    layout.addWidget(left)
    page.urlChanged.connect(lambda url: address.setText(url.toString()))
    win.resize(900, 700)
    return Parts(app, win, address, left, view, page, profile)


def _window(portal: str, seconds: float, t0: float) -> int:
    import shiboken6
    from PySide6.QtCore import QSocketNotifier, QTimer, QUrl

    w = build(portal)
    deadline = t0 + seconds

    def tick() -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            w.win.close()
            return
        w.left.setText(f"Only this window can reach the network, for "
                       f"{int(remaining) // 60}:{int(remaining) % 60:02d} more; "
                       "everything else waits for the VPN.")

    def loaded(ok: bool) -> None:
        print(f"LOADED {ok} {w.page.url().toString()} "
              f"{(time.monotonic() - t0) * 1000:.0f}ms", flush=True)

    w.page.loadFinished.connect(loaded)
    timer = QTimer(w.win)
    timer.timeout.connect(tick)
    timer.start(1000)
    # SIGTERM (the tray quitting) closes the window the normal way: CloseSignIn runs.
    # Qt's loop runs no Python until something wakes it: the signal's wake-up byte.
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGTERM, lambda *_: w.app.quit())
    notifier = QSocketNotifier(wake_r.fileno(), QSocketNotifier.Type.Read, w.win)
    notifier.activated.connect(lambda *_: wake_r.recv(64))
    tick()
    w.win.show()
    w.view.load(QUrl(portal))
    w.app.exec()
    # The page before its profile (QtWebEngine warns of trouble otherwise).
    shiboken6.delete(w.view)
    shiboken6.delete(w.page)
    return 0

if __name__ == "__main__":
    sys.exit(main())
