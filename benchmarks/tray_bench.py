"""The tray's start time, memory and idle wake-ups (issue 13's targets).

Runs the real ``trustroam`` command in a private desktop (Xvfb, a session bus
with a StatusNotifierWatcher, a system bus with the helper double of
tests/ui/helper_double.py in mode mc, so both the HA and the VPN curve are drawn),
never the machine's own:

- start: from exec to the watcher's StatusNotifierItemRegistered (median of --runs);
- RSS with the status window closed, after the helper answered and an hour of
  probe answers (HA and VPN, one per second) arrived as PropertiesChanged;
- idle: voluntary + involuntary context switches of all the tray's threads over
  --idle seconds with nothing happening (each wake-up is at least one switch);
- RSS with the status window open plotting that hour, and 1000 history rows.

    python3 benchmarks/tray_bench.py [--runs 5] [--idle 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.dbus import Message, MessageBus  # noqa: E402
from tests.ui.procs import Procs, _name_has_owner, base_env, wait_for  # noqa: E402

HOUR = 3600
PYTHON = [sys.executable]
"""How the tray is started (``--no-pth`` adds ``-S``: no site-packages .pth hooks)."""


def rss_mb(pid: int) -> tuple[float, float]:
    st = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(st["VmRSS"].split()[0]) / 1024, int(st["VmHWM"].split()[0]) / 1024


def switches(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except FileNotFoundError:
            continue
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total


async def time_to_registered(env: dict[str, str], extra: list[str]
                             ) -> tuple[float, subprocess.Popen[str]]:
    bus = await MessageBus(bus_address=env["DBUS_SESSION_BUS_ADDRESS"]).connect()
    registered = asyncio.Event()

    def on(msg: Message) -> bool:
        if msg.member == "StatusNotifierItemRegistered":
            registered.set()
        return False

    bus.add_message_handler(on)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=["type='signal',member='StatusNotifierItemRegistered'"]))
    t0 = time.perf_counter()
    proc = subprocess.Popen([*PYTHON, "-m", "ui.main", *extra], env=env, cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    await asyncio.wait_for(registered.wait(), 30)
    took = time.perf_counter() - t0
    bus.disconnect()
    return took, proc


async def test1(env: dict[str, str], member: str, sig: str = "", body: list[object] | None = None
                ) -> None:
    bus = await MessageBus(bus_address=env["DBUS_SYSTEM_BUS_ADDRESS"]).connect()
    await bus.call(Message(destination="org.trustroam.Helper1", path="/org/trustroam/Test",
                           interface="org.trustroam.Test1", member=member, signature=sig,
                           body=body or []))
    bus.disconnect()


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(10)
    if proc.stderr:
        err = proc.stderr.read()
        if "Traceback" in err:
            print(err, file=sys.stderr)
        proc.stderr.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--no-pth", action="store_true",
                    help="start the tray without the .pth start-up hooks of this machine's "
                         "site-packages (python -S, the repository and site-packages on "
                         "PYTHONPATH), as a packaged tray starts: here a sandbox hook "
                         "imports certifi into every Python process")
    ap.add_argument("--optimize", action="store_true",
                    help="start the tray with python -OO, as its packaged launcher does "
                         "(no docstrings, no asserts; tests/ui/test_tray_optimized.py)")
    args = ap.parse_args()
    if args.optimize:
        PYTHON.append("-OO")
    tmp = Path(tempfile.mkdtemp(prefix="tray-bench-"))
    procs = Procs(tmp)
    try:
        env = base_env(DBUS_SYSTEM_BUS_ADDRESS=procs.dbus("system"),
                       DBUS_SESSION_BUS_ADDRESS=procs.dbus("session"), DISPLAY=procs.xvfb(),
                       QT_QPA_PLATFORM="xcb", HOME=str(tmp), XDG_CONFIG_HOME=str(tmp / "cfg"))
        if args.no_pth:
            import sysconfig
            PYTHON.append("-S")
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), sysconfig.get_paths()["purelib"],
                                                 sysconfig.get_paths()["platlib"]])
        procs.python("sni-watcher", "tests.ui.sni_watcher", env)
        procs.python("helper-double", "tests.ui.helper_double", env)
        asyncio.run(test1(env, "Set", "s", [
            '{"state": "untrusted", "mode": "mc", "profile": "corp", '
            '"home_address": "10.20.1.10", "care_of_address": "203.0.113.9", '
            '"tunnel_inner_address": "10.99.0.5", "vpn_gateway": "vpn1.corp.example"}']))
        asyncio.run(test1(env, "EventBurst", "u", [1000]))

        starts = []
        for _ in range(args.runs):
            took, proc = asyncio.run(time_to_registered(env, []))
            starts.append(took)
            stop(proc)
            wait_for(lambda: not _name_has_owner(env["DBUS_SESSION_BUS_ADDRESS"],
                                                 "org.trustroam.Tray"), 10, "tray gone")

        _took, tray = asyncio.run(time_to_registered(env, []))
        time.sleep(2)  # let the GetAll / ListProfiles answers and the first paint finish
        rss_start, _ = rss_mb(tray.pid)
        now = time.time()
        asyncio.run(test1(env, "ProbeBurst", "udd", [HOUR, now - HOUR, 1.0]))
        time.sleep(2)
        rss_closed, hwm_closed = rss_mb(tray.pid)
        time.sleep(3)  # the 1.5 s settle timer of the last change has run
        c0 = switches(tray.pid)
        time.sleep(args.idle)
        idle = switches(tray.pid) - c0
        stop(tray)
        wait_for(lambda: not _name_has_owner(env["DBUS_SESSION_BUS_ADDRESS"],
                                             "org.trustroam.Tray"), 10, "tray gone")

        _took, tray = asyncio.run(time_to_registered(env, ["--status"]))
        time.sleep(2)
        asyncio.run(test1(env, "ProbeBurst", "udd", [HOUR, now - HOUR, 1.0]))
        time.sleep(3)
        rss_open, hwm_open = rss_mb(tray.pid)
        c0 = switches(tray.pid)
        time.sleep(10)
        open_idle = switches(tray.pid) - c0
        stop(tray)
    finally:
        procs.stop()

    from importlib import metadata

    versions = f"PySide6-Essentials {metadata.version('PySide6-Essentials')}"
    print(f"Tray benchmark, {time.strftime('%Y-%m-%d')}, --runs {args.runs} "
          f"--idle {args.idle:g}{' --no-pth' if args.no_pth else ''}"
          f"{' --optimize' if args.optimize else ''} ({versions})")
    print()
    print("| measure | target | result |")
    print("|---|---:|---:|")
    print(f"| start to icon registered (median of {args.runs}; min–max) | ≤ 0.5 s | "
          f"{statistics.median(starts):.2f} s ({min(starts):.2f}–{max(starts):.2f}) |")
    print(f"| RSS, window closed, just started | ≤ 70 MB | {rss_start:.1f} MB |")
    print(f"| RSS, window closed, after an hour of probes (peak) | ≤ 70 MB | "
          f"{rss_closed:.1f} MB ({hwm_closed:.1f}) |")
    print(f"| context switches while idle, {args.idle:g} s, all threads | 0 | {idle} |")
    print(f"| RSS, status window open, an hour plotted + 1000 history rows (peak) | ≤ 70 MB | "
          f"{rss_open:.1f} MB ({hwm_open:.1f}) |")
    print(f"| context switches, window open, 10 s (binding countdown: 1/s expected) | — | "
          f"{open_idle} |")


if __name__ == "__main__":
    main()
