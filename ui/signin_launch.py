"""Starts the captive-portal sign-in window as a process of its own (issue 19).

The tray never imports QtWebEngine (about 100 MB more, and the tray's memory
target is tight): the window is ``python3 -m ui.signin_window``, one at a time.
"""

from __future__ import annotations

import logging
import subprocess
import sys

log = logging.getLogger("trustroam.tray.signin")
COMMAND = [sys.executable, "-m", "ui.signin_window"]
"""The window's command line (the lab's tests put it in the MN's namespace)."""


class SignInLauncher:
    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    def open(self) -> None:
        """Start the window, unless one is still open."""
        if self.proc is not None and self.proc.poll() is None:
            return
        try:
            self.proc = subprocess.Popen(COMMAND, stdin=subprocess.DEVNULL)  # noqa: S603 (fixed)
        except OSError as exc:
            log.warning("cannot start the sign-in window: %s", exc)

    def close(self) -> None:
        """Ask an open window to close (it closes the sign-in on its way out)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
        self.proc = None
