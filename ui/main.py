"""``trustroam``: the tray app (one per desktop session)."""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
import sys
from pathlib import Path
from typing import IO

APP_ID = "org.trustroam.Tray"
OBJECT = "/org/trustroam/Tray"
log = logging.getLogger("trustroam.tray")


def version() -> str:
    from importlib import metadata  # here: with its email and zip parsers it costs 2.6 MB

    try:
        return metadata.version("trustroam")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class _Version(argparse.Action):
    """--version, reading the installed metadata only when asked (importlib.metadata
    and the distribution's files cost the running tray 2.6 MB)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"trustroam {version()}")
        parser.exit()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="trustroam",
        description="TrustRoam's tray: the connection's state at a glance, mode switching, "
                    "profiles, and secrets from the keyring for the TrustRoam service "
                    "(trustroamd).  Quitting the tray leaves the connection as it is.")
    ap.add_argument("--version", action=_Version, help="show the version and exit")
    ap.add_argument("--status", action="store_true", help="open the status window at start")
    ap.add_argument("--profiles", action="store_true", help="open the profile editor at start")
    ap.add_argument("--log-level", default="warning",
                    choices=("debug", "info", "warning", "error"))
    return ap.parse_args(argv)


def _lock_file() -> IO[str] | None:
    """A per-session lock when there is no session bus to hold a name on."""
    base = os.environ.get("XDG_RUNTIME_DIR") or "/tmp"  # noqa: S108 (per-uid name below)
    display = os.environ.get("WAYLAND_DISPLAY") or os.environ.get("DISPLAY", "")
    path = Path(base) / f"trustroam-tray-{os.getuid()}-{display.replace('/', '_')}.lock"
    fh = path.open("a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def _service_class() -> type:
    from PySide6.QtCore import ClassInfo, QObject, Slot

    @ClassInfo({"D-Bus Interface": APP_ID + "1"})  # type: ignore[call-arg]
    class TrayService(QObject):  # type: ignore[operator]
        """What a second ``trustroam --status`` asks the running tray to do."""

        def __init__(self, tray: object) -> None:
            super().__init__()
            self.tray = tray

        @Slot()
        def ShowStatus(self) -> None:
            self.tray.show_status()  # type: ignore[attr-defined]

        @Slot()
        def ShowProfiles(self) -> None:
            self.tray.show_profiles()  # type: ignore[attr-defined]

    return TrayService


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="trustroam: %(levelname)s %(name)s: %(message)s")
    # Ctrl-C ends the tray at once; no Python-side timer is needed to notice it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)

    from ui import memory

    memory.lean_imports()
    import asyncio

    import PySide6.QtCore  # noqa: F401 (installs shiboken's import hook, avoided below)

    with memory.plain_imports():
        import qasync
        from PySide6.QtDBus import QDBusConnection, QDBusMessage
        from PySide6.QtWidgets import QApplication, QSystemTrayIcon

        from ui.tray import Tray

    app = QApplication(sys.argv[:1])
    app.setApplicationName("trustroam")
    app.setApplicationDisplayName("TrustRoam")
    app.setDesktopFileName("trustroam")
    app.setQuitOnLastWindowClosed(False)

    session = QDBusConnection.sessionBus()
    lock = None
    if session.isConnected():
        if not session.registerService(APP_ID):
            asked = [m for m, want in (("ShowStatus", args.status),
                                       ("ShowProfiles", args.profiles)) if want]
            for member in asked:  # the running tray opens the window (menu entries)
                session.call(QDBusMessage.createMethodCall(APP_ID, OBJECT, APP_ID + "1",
                                                           member))
            if not asked:
                print("trustroam: already running in this session", file=sys.stderr)
            return 0
    else:
        lock = _lock_file()
        if lock is None:
            print("trustroam: already running in this session", file=sys.stderr)
            return 0
    if not QSystemTrayIcon.isSystemTrayAvailable():
        log.warning("no system tray on this desktop yet; the icon appears when one starts")

    TrayService = _service_class()

    loop = qasync.QEventLoop(app)
    asyncio.set_event_loop(loop)
    tray = Tray()
    service = TrayService(tray)
    if session.isConnected():
        session.registerObject(OBJECT, service,
                               QDBusConnection.RegisterOption.ExportAllSlots)
    with loop:
        loop.create_task(tray.start())
        if args.status:
            tray.show_status()
        if args.profiles:
            tray.show_profiles()
        loop.run_forever()
    del lock
    return 0


if __name__ == "__main__":
    sys.exit(main())
