"""The captive-portal flow end to end, as a user meets it (issue 19), in the lab
(root, CI) under Xvfb: on pub behind the lab's portal the VPN cannot come up; the
helper finds the portal and the tray offers "Sign in to this network…"; clicked,
the sign-in window (QtWebEngine, a process of its own) shows the portal's page; a
click in the window posts the form; while it is open another application sending
all along gets nothing out (capture on pub); the window closed, the VPN comes up
(mode mc) and the tray's item goes away.

Run it under the lab's lock:
    flock /tmp/trustroam-lab.lock python3 -m pytest tests/ui/test_signin_lab.py -q
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.requirements import require_root
from tests.ui.conftest import run
from tests.ui.shell import Shell
from tests.ui.test_tray_lab import HelperWatch

GW1 = "172.16.0.11"
SIGN_IN = "Sign in to this network…"


@pytest.fixture(scope="module")
def portal_world(desktop: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[dict[str, Any]]:
    require_root()
    from app.lab.configs import write_helper_files
    from tests.lab.conftest import a_lab
    from tests.lab.procs import helper_world
    from tests.lab.test_portal_lab import CGROUP2, PROBE_URL

    d = tmp_path_factory.mktemp("tray-portal")
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1,))
    for lab in a_lab(at="pub", portal=True, nm=True):  # torn down when this fixture ends
        with helper_world(lab.nm_bus(), d, profiles, secrets, helper_prefix=CGROUP2,
                          helper_args=("--portal-probe-url", PROBE_URL)) as w:
            yield {**w, "lab": lab}


@pytest.fixture
def portal_tray(portal_world: dict[str, Any], qloop: asyncio.AbstractEventLoop, qapp: Any,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from ui import signin_launch
    from ui.tray import Tray

    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", str(portal_world["bus"]))
    # The window runs where the laptop is (the MN's namespace); its lines are read here.
    monkeypatch.setattr(signin_launch, "COMMAND",
                        ["ip", "netns", "exec", "tr-mn", *signin_launch.COMMAND])
    monkeypatch.setattr(signin_launch, "subprocess", types.SimpleNamespace(
        DEVNULL=subprocess.DEVNULL,
        Popen=lambda *a, **k: subprocess.Popen(*a, **k, stdout=subprocess.PIPE, text=True)))
    t = Tray(ask_secrets=False)
    run(qloop, t.start())
    try:
        yield t
    finally:
        t.close()
        qapp.processEvents()


def _click_in_window(display: str, title: str) -> None:
    """A real click in the middle of the window (the lab portal's button fills its page)."""
    env = {"DISPLAY": display, "PATH": "/usr/bin:/bin"}
    wid = subprocess.run(["xdotool", "search", "--name", title], capture_output=True,
                         text=True, env=env, check=True).stdout.split()[0]
    geo = subprocess.run(["xdotool", "getwindowgeometry", "--shell", wid],
                         capture_output=True, text=True, env=env, check=True).stdout
    g = dict(line.split("=", 1) for line in geo.split())
    subprocess.run(["xdotool", "mousemove", "--window", wid, str(int(g["WIDTH"]) // 2),
                    str(int(g["HEIGHT"]) // 2), "click", "1"], env=env, check=True)


def test_sign_in_through_the_window_then_the_vpn_comes_up(
        portal_world: dict[str, Any], portal_tray: Any, shell: Shell, qloop: Any,
        desktop: dict[str, str], tmp_path: Path) -> None:
    from app.lab import portal
    from tests.lab.conftest import mn_address
    from tests.lab.procs import Proc, capture
    from tests.lines import Lines
    from ui.signin_window import TITLE

    lab = portal_world["lab"]
    watch = HelperWatch(str(portal_world["bus"]))
    mn = mn_address(prefix="203.0.113.")
    stop = tmp_path / "stop"
    timings: dict[str, float] = {}

    async def item_shown(shown: bool) -> bool:
        entries = [e for e in await shell.layout()
                   if str(e.get("label", "")).replace("_", "") == SIGN_IN]
        return bool(entries) and bool(entries[0].get("visible", True)) is shown

    async def go() -> None:
        await watch.start()
        await shell.find_item()
        await shell.until(lambda: item_shown(True), timeout=90,
                          what="the tray offers to sign in")
        assert await watch.prop("CaptivePortal") == portal.PAGE
        clicked = time.monotonic()
        await shell.click(SIGN_IN)
        for _ in range(200):
            if portal_tray.signin.proc is not None:
                break
            await asyncio.sleep(0.01)  # the click reaches the tray through the bus
        proc = portal_tray.signin.proc
        assert proc is not None and proc.stdout is not None
        lines = Lines(proc.stdout)
        opened = (await asyncio.to_thread(lines.wait, "SIGNIN-OPEN", 30))[-1]
        assert portal.PAGE in opened, lines.seen
        await asyncio.to_thread(lines.wait, f"LOADED True {portal.PAGE}", 60)
        timings["click_to_page_ms"] = (time.monotonic() - clicked) * 1000
        assert lab.portal_signed() == []
        # Another application, sending HTTP and DNS all along the sign-in.
        cap = capture("tr-er", "pub", f"src host {mn} and not arp")
        other = Proc("tr-mn", sys.executable, "-m", "tests.lab.other_app", str(stop))
        try:
            other.wait("SENDING")
            posted = time.monotonic()
            await asyncio.to_thread(_click_in_window, desktop["DISPLAY"], TITLE)
            await asyncio.to_thread(lines.wait, f"LOADED True {portal.PAGE}", 30)
            timings["post_to_signed_page_ms"] = (time.monotonic() - posted) * 1000
            assert lab.portal_signed() != []
            stop.touch()
            other.wait("SENT")
        finally:
            stop.touch()
            other.stop()
            cap.stop()
        leaked = [x for x in cap.out.printed if f"{mn}.40404 " in x or f"{mn}.40405 " in x]
        assert leaked == [] and not any("TCP CONNECTED" in x for x in other.out.printed)
        assert any(f"> {portal.ADDRESS}.80:" in x or f"> {portal.ADDRESS}.http:" in x
                   for x in cap.out.printed), cap.out.printed
        # The user closes the window (as the tray's Quit does): the sign-in closes
        # and the VPN is tried again at once: mode mc, and no portal any more.
        closed = time.monotonic()
        portal_tray.signin.close()
        await asyncio.to_thread(lines.wait, "CLOSED", 30)

        async def mc() -> bool:
            return (await watch.prop("Mode")) == "mc"
        await shell.until(mc, timeout=60, what="mode mc after signing in")
        timings["window_closed_to_mc_ms"] = (time.monotonic() - closed) * 1000
        assert await watch.prop("CaptivePortal") == ""
        await shell.until(lambda: item_shown(False), what="the sign-in item hidden")
        kinds = await watch.history_kinds()
        assert "signin-open" in kinds and "signin-closed" in kinds, kinds
        watch.bus.disconnect()

    run(qloop, go(), timeout=300)
    print(f"captive portal timings: {json.dumps(timings)}")  # benchmarks/portal_bench.py
