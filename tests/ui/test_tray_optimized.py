"""The tray under ``python -OO``, as its packaged launcher starts it.

``-OO`` drops docstrings and asserts: 0.4-0.6 MB of the tray's memory
(benchmarks/README.md, issue 18's target). Nothing of the tray may depend on
either, so the real command is started that way here and driven from outside,
as a desktop shell would: its icon registers, its tooltip shows the helper's
mode, the status window opens with the history, a menu click reaches the helper.
(pytest's own asserts are not stripped: only the tray's process runs -OO.)
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.ui.conftest import run
from tests.ui.procs import ROOT, base_env


class OptimizedTray:
    """``python -OO -m ui.main --status``, its log read line by line."""

    def __init__(self, desktop: dict[str, str], home: Path) -> None:
        env = base_env(**{k: desktop[k] for k in ("DBUS_SYSTEM_BUS_ADDRESS",
                                                  "DBUS_SESSION_BUS_ADDRESS", "DISPLAY",
                                                  "QT_QPA_PLATFORM")},
                       HOME=str(home), XDG_CONFIG_HOME=str(home / "config"),
                       XDG_RUNTIME_DIR=str(home))
        env.pop("PYTHONOPTIMIZE", None)
        self.p = subprocess.Popen(
            [sys.executable, "-OO", "-m", "ui.main", "--status", "--log-level", "info"],
            env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        self.log = ""

    def wait_log(self, text: str, timeout: float = 20) -> None:
        assert self.p.stderr is not None
        fd = self.p.stderr.fileno()
        deadline = time.monotonic() + timeout
        while text not in self.log:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"the -OO tray never logged {text!r}: {self.log[-800:]}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the -OO tray exited: {self.log[-2000:]}")
            self.log += chunk.decode(errors="replace")

    def stop(self) -> str:
        self.p.terminate()
        try:
            self.p.wait(10)
        finally:
            if self.p.poll() is None:
                self.p.kill()
                self.p.wait(5)
        assert self.p.stderr is not None
        self.log += self.p.stderr.read().decode(errors="replace")
        self.p.stderr.close()
        return self.log


def test_the_tray_started_with_python_OO_shows_the_mode_opens_its_window_and_takes_a_click(
        desktop: dict[str, str], double: Any, shell: Any, qloop: Any, tmp_path: Path) -> None:
    run(qloop, double.set(state="untrusted", mode="mc", profile="corp",
                          home_address="10.20.1.10", care_of_address="203.0.113.9",
                          tunnel_inner_address="10.99.0.5", vpn_gateway="vpn1.corp.example"))
    run(qloop, double.call("EventBurst", "u", [120]))
    tray = OptimizedTray(desktop, tmp_path)
    try:
        tray.wait_log("status window shown")
        run(qloop, shell.find_item())

        async def shows_mc() -> bool:
            return "mc" in await shell.tooltip()
        run(qloop, shell.until(shows_mc, timeout=20, what="the -OO tray's tooltip saying mc"))

        async def policy_taken() -> bool:
            return "SetPolicy always-vpn" in await double.calls()
        run(qloop, shell.click("Always use VPN"))
        run(qloop, shell.until(policy_taken, timeout=20, what="SetPolicy from the -OO tray"))
        assert tray.p.poll() is None, "the -OO tray exited"
    finally:
        log = tray.stop()
    assert "Traceback" not in log, log[-3000:]
    assert run(qloop, double.call("HistoryPagesAsked")) >= 1, "the window read no history"
