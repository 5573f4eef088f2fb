"""Screenshots for the README, and the icons' shapes.

The X-tray part runs the real ``trustroam`` command in its own private desktop
(Xvfb + trayer as the X tray host, no StatusNotifierWatcher, so Qt uses the X
tray) against the helper double, and captures the icon in every state and the
open menu with ImageMagick's ``import``.  Windows are grabbed in this process.
Everything lands in tests/ui/output/; with TRUSTROAM_SCREENSHOTS=docs the README's
copies in docs/screenshots/ are refreshed too (scripts/screenshots).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# The helper's own words for the never-vpn refusal (the screenshots show what users see).
from app.mn.access_mode import NEVER_VPN_REASON
from tests.ui.conftest import OUT, run
from tests.ui.procs import ROOT, Procs, base_env, wait_for

DOCS = ROOT / "docs" / "screenshots"
STATES = [
    ("not-running", None),
    ("offline", {"state": "offline"}),
    ("probing", {"state": "probing"}),
    ("trusted-home", {"state": "trusted", "mode": "h", "profile": "corp",
                      "home_address": "10.20.1.10"}),
    ("trusted-colocated", {"state": "trusted", "mode": "c", "care_of_address": "192.168.7.20"}),
    ("trusted-fa", {"state": "trusted", "mode": "f", "care_of_address": "10.30.0.1"}),
    ("vpn", {"state": "untrusted", "mode": "mc", "tunnel_inner_address": "10.99.0.5",
             "vpn_gateway": "vpn1.corp.example", "vpn_probe": [True, 14.2, 1.0]}),
    ("untrusted", {"state": "untrusted", "mode": "none"}),
    ("error", {"state": "error", "mode": "none",
               "error": "denied by home agent: mobile node failed authentication (131)"}),
]


def save(img: Path, name: str, docs: bool = True) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(img, OUT / name)
    if docs and os.environ.get("TRUSTROAM_SCREENSHOTS") == "docs":
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(img, DOCS / name)


class XTray:
    """The trustroam command in a private X desktop with trayer."""

    def __init__(self, tmp: Path) -> None:
        self.procs = Procs(tmp)
        self.tmp = tmp
        system = self.procs.dbus("system")
        session = self.procs.dbus("session")
        self.display = self.procs.xvfb("900x560x24")
        self.env = base_env(DBUS_SYSTEM_BUS_ADDRESS=system, DBUS_SESSION_BUS_ADDRESS=session,
                            DISPLAY=self.display, QT_QPA_PLATFORM="xcb", HOME=str(tmp),
                            XDG_CONFIG_HOME=str(tmp / "config"))
        self.procs.trayer(self.display)
        self.double: Any = None
        self.tray = self.procs.add("trustroam", subprocess.Popen(
            [sys.executable, "-m", "ui.main", "--log-level", "info"], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, cwd=ROOT))
        self.lines: list[str] = []
        self.partial = ""
        self.seen = 0

    def start_double(self) -> None:
        self.double = self.procs.python("helper-double", "tests.ui.helper_double", self.env)

    def wait_log(self, text: str, timeout: float = 15) -> None:
        """Read the tray's log until a line contains ``text`` (the tray says what it drew)."""
        assert self.tray.stderr is not None
        fd = self.tray.stderr.fileno()  # raw reads: a buffered readline could hide lines
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines[self.seen:]):
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError(f"the tray never logged {text!r}: {self.lines[-5:]}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise RuntimeError(f"the tray exited: {''.join(self.lines[-20:])}")
            self.partial += chunk.decode(errors="replace")
            *done, self.partial = self.partial.split("\n")
            self.lines += done
        self.seen = next(i for i in range(self.seen, len(self.lines))
                         if text in self.lines[i]) + 1

    def x(self, *args: str) -> str:
        return subprocess.run(args, env=self.env, capture_output=True, text=True,
                              check=True).stdout

    def set(self, changes: dict[str, Any]) -> None:
        subprocess.run(["dbus-send", f"--bus={self.env['DBUS_SYSTEM_BUS_ADDRESS']}",
                        "--print-reply", "--dest=org.trustroam.Helper1", "/org/trustroam/Test",
                        "org.trustroam.Test1.Set", f"string:{json.dumps(changes)}"],
                       check=True, capture_output=True)

    def windows(self) -> list[str]:
        r = subprocess.run(["xdotool", "search", "--onlyvisible", "--class", "trustroam"],
                           env=self.env, capture_output=True, text=True, check=False)
        return r.stdout.split()

    def geometry(self, win: str) -> tuple[int, int, int, int]:
        out = self.x("xdotool", "getwindowgeometry", "--shell", win)
        g = dict(line.split("=") for line in out.split())
        return int(g["X"]), int(g["Y"]), int(g["WIDTH"]), int(g["HEIGHT"])

    def width(self, win: str) -> int:
        """A listed window's width; 0 if it is gone meanwhile (a tooltip that closed
        between the search and this question: X answers BadWindow)."""
        r = subprocess.run(["xdotool", "getwindowgeometry", "--shell", win], env=self.env,
                           capture_output=True, text=True, check=False)
        if r.returncode != 0 and "BadWindow" in r.stderr:
            return 0
        r.check_returncode()
        return int(dict(line.split("=") for line in r.stdout.split())["WIDTH"])

    def capture(self, path: Path, box: tuple[int, int, int, int]) -> bytes:
        x, y, w, h = box
        self.x("import", "-window", "root", "-crop", f"{w}x{h}+{x}+{y}", "+repage", str(path))
        return path.read_bytes()

    def capture_stable(self, path: Path, box: tuple[int, int, int, int], unlike: bytes
                       ) -> bytes:
        """X paints after Qt's setIcon with no event to wait for: capture until the
        picture differs from the previous state's and holds still."""
        last = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = self.capture(path, box)
            if data == last and data != unlike:
                return data
            last = data
        raise TimeoutError(f"{path.name}: the icon did not settle")


@pytest.fixture
def xtray(tmp_path: Path) -> Iterator[XTray]:
    from tests.ui.conftest import require_desktop_tools

    require_desktop_tools()
    t = XTray(tmp_path)
    try:
        yield t
    finally:
        t.procs.stop()


def test_icon_per_state_and_open_menu_in_an_x_tray(xtray: XTray, tmp_path: Path) -> None:
    wait_for(lambda: bool(xtray.windows()), 10, "the tray icon's window")
    icon_win = xtray.windows()[0]
    box = xtray.geometry(icon_win)
    assert box[2] <= 32 and box[3] <= 32  # an icon docked in trayer, not a window
    shots: list[Path] = []
    previous = b""
    for name, changes in STATES:
        if changes is not None:
            if xtray.double is None:
                xtray.start_double()
            xtray.set(changes)
        xtray.wait_log(f"icon trustroam-{name}")
        shot = tmp_path / f"tray-{name}.png"
        previous = xtray.capture_stable(shot, box, previous)
        shots.append(shot)
        save(shot, f"tray-{name}.png", docs=False)  # the README shows the strip
    # All nine states look different in the panel.
    assert len({s.read_bytes() for s in shots}) == len(STATES)
    strip = tmp_path / "tray-states.png"
    subprocess.run(["montage", *[str(s) for s in shots], "-tile", f"{len(shots)}x1",
                    "-geometry", "+6+4", "-background", "#303030", str(strip)], check=True)
    save(strip, "tray-states.png")

    # The menu, opened as a user does: right click on the icon.
    xtray.set({"state": "trusted", "mode": "h", "profile": "corp", "policy": "auto"})
    xtray.wait_log("icon trustroam-trusted-home")
    before = set(xtray.windows())
    x, y, w, h = box
    xtray.x("xdotool", "mousemove", str(x + w // 2), str(y + h // 2), "click", "3")
    wait_for(lambda: set(xtray.windows()) - before, 10, "the tray menu")
    menu = sorted(set(xtray.windows()) - before)[0]
    mx, my, mw, mh = xtray.geometry(menu)
    assert mh > 150  # every entry: profiles, policy, check again, status, profiles, quit
    shot = tmp_path / "tray-menu.png"
    left = max(0, mx - 10)
    xtray.capture_stable(shot, (left, 0, min(900 - left, mw + 60), my + mh + 10), b"")
    save(shot, "tray-menu.png")
    xtray.x("xdotool", "key", "Escape")
    # Quitting from the menu would end the tray, never the connection: the double saw
    # no Disconnect (the tray made none).
    assert xtray.tray.poll() is None


def test_tooltip_in_mc_and_when_blocked_in_an_x_tray(xtray: XTray, tmp_path: Path) -> None:
    """The untrusted side as the user hovers the icon: mc with the TIA, the gateway by
    name and its RTT; the never-vpn refusal with its reason."""
    wait_for(lambda: bool(xtray.windows()), 10, "the tray icon's window")
    icon_win = xtray.windows()[0]
    box = xtray.geometry(icon_win)
    x, y, w, h = box

    def popups() -> list[str]:  # balloons and tooltips: every other visible window
        return [v for v in xtray.windows() if v != icon_win and xtray.width(v)]

    xtray.start_double()
    now = time.time()
    for name, changes in (
            ("mc", {"state": "untrusted", "mode": "mc", "profile": "corp",
                    "home_address": "10.20.1.10", "care_of_address": "203.0.113.9",
                    "tunnel_inner_address": "10.99.0.5", "vpn_gateway": "vpn1.corp.example",
                    "vpn_probe": [True, 14.2, now], "home_agent_probe": [True, 21.7, now],
                    "binding_expires": now + 600, "nat_detected": True}),
            ("blocked", {"mode": "none", "tunnel_inner_address": "", "vpn_gateway": "",
                         "vpn_probe": [False, 14.2, now], "binding_expires": 0.0,
                         "nat_detected": False, "policy": "never-vpn",
                         "error": NEVER_VPN_REASON})):
        xtray.set(changes)
        xtray.wait_log("notify: ")  # the settled change's balloon: clicked away
        wait_for(lambda: bool(popups()), 10, "the notification")
        for v in popups():
            bx, by, bw, bh = xtray.geometry(v)
            xtray.x("xdotool", "mousemove", str(bx + bw // 2), str(by + bh // 2), "click", "1")
        xtray.x("xdotool", "mousemove", "5", "500")
        wait_for(lambda: not popups(), 10, "the popups closed")
        xtray.x("xdotool", "mousemove", str(x + w // 2), str(y + h // 2))
        wait_for(lambda: bool(popups()), 10, "the tooltip")
        tx, ty, tw, th = xtray.geometry(popups()[0])
        left, right = max(0, min(x, tx) - 8), min(900, max(x + w, tx + tw) + 8)
        shot = tmp_path / f"tray-tooltip-{name}.png"
        xtray.capture_stable(shot, (left, 0, right - left, min(560, max(y + h, ty + th) + 8)),
                             b"")
        save(shot, f"tray-tooltip-{name}.png")
        xtray.x("xdotool", "mousemove", "5", "500")
        wait_for(lambda: not popups(), 10, "the tooltip closed")
    assert xtray.tray.poll() is None


def _mask(name: str, size: int) -> list[bool]:
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    from ui.icons import icon_path

    img = QImage(size, size, QImage.Format.Format_ARGB32)
    img.fill(Qt.GlobalColor.transparent)
    p = QPainter(img)
    QSvgRenderer(str(icon_path(name))).render(p)
    p.end()
    return [img.pixelColor(x, y).alpha() > 128 for y in range(size) for x in range(size)]


def test_secure_and_insecure_icons_differ_in_shape(qapp: Any) -> None:
    """Not colour alone: the opaque outline of every secure icon (a shield) differs
    from every insecure one's by a good share of its pixels, at panel sizes."""
    from ui.presentation import SECURE_ICONS

    names = [f"trustroam-{n}" for n, _ in STATES]
    insecure = [n for n in names if n not in SECURE_ICONS]
    assert len(insecure) == 5 and len(SECURE_ICONS) == 4
    for size in (16, 22, 24):
        for s in SECURE_ICONS:
            ms = _mask(s, size)
            for i in insecure:
                mi = _mask(i, size)
                differ = sum(a != b for a, b in zip(ms, mi, strict=True))
                assert differ >= 0.15 * size * size, (s, i, size, differ)


def test_icon_sheet_on_dark_and_light_panels(qapp: Any, tmp_path: Path) -> None:
    """Every icon at 16, 22 and 24 px on a dark and a light panel (for the README)."""
    from PySide6.QtCore import QRect, Qt
    from PySide6.QtGui import QColor, QFont, QImage, QPainter

    from ui.icons import icon

    names = [n for n, _ in STATES]
    sizes = (16, 22, 24)
    cell, label_w = 34, 130
    img = QImage(label_w + cell * len(sizes) * 2, 20 + cell * len(names),
                 QImage.Format.Format_ARGB32)
    img.fill(QColor("#ffffff"))
    p = QPainter(img)
    p.setFont(QFont("DejaVu Sans", 8))
    for col, bg in enumerate(("#2b2b2b", "#f0f0f0")):
        x0 = label_w + col * cell * len(sizes)
        p.fillRect(QRect(x0, 0, cell * len(sizes), img.height()), QColor(bg))
    for row, name in enumerate(names):
        y = 20 + row * cell
        p.setPen(QColor("#000"))
        p.drawText(QRect(4, y, label_w - 8, cell), Qt.AlignmentFlag.AlignVCenter, name)
        for col in range(2):
            for k, size in enumerate(sizes):
                x = label_w + (col * len(sizes) + k) * cell + (cell - size) // 2
                p.drawPixmap(x, y + (cell - size) // 2,
                             icon(f"trustroam-{name}").pixmap(size, size))
    p.end()
    out = tmp_path / "icons.png"
    assert img.save(str(out))
    save(out, "icons.png")


def test_window_screenshots(double: Any, tray: Any, qloop: Any, qtbot: Any,
                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    now = time.time()

    async def drive() -> None:
        for kind, details in (("link-up", {"iface": "wlan0"}), ("mode", {"state": "probing"}),
                              ("handover", {"mode": "mc", "ms": "131.4"}),
                              ("registered", {"care_of": "10.99.0.5", "lifetime": "600"})):
            await double.call("Emit", "sa{ss}", [kind, details])
        await double.set(state="untrusted", mode="mc", profile="corp",
                         home_address="10.20.1.10", care_of_address="203.0.113.9",
                         tunnel_inner_address="10.99.0.5", vpn_gateway="vpn1.corp.example",
                         binding_expires=now + 420, last_handover_ms=131.4,
                         nat_detected=True)
        for i in range(60):
            await double.set(home_agent_probe=[True, 18 + (i % 7) * 0.8, now - 600 + i * 10],
                             vpn_probe=[True, 12 + (i % 5) * 0.6, now - 600 + i * 10])

    run(qloop, drive())
    tray.show_status()
    w = tray.status_window
    run(qloop, w.reload_history())
    qtbot.waitUntil(lambda: len(tray.rtt["vpn"]) >= 60)
    w._plot()  # now, not after the coalescing timer
    out = tmp_path / "status-window.png"
    assert w.grab().save(str(out))
    save(out, "status-window.png")
    w.tabs.setCurrentIndex(1)
    out = tmp_path / "status-history.png"
    assert w.grab().save(str(out))
    save(out, "status-history.png")

    tray.show_profiles()
    ed = tray.profile_dialog
    for k, v in (("name", "corp"), ("home_address", "10.20.1.10"),
                 ("home_network", "10.20.1.0/24"), ("home_agent", "10.30.0.1"),
                 ("spi", "256"), ("nai", "alice@corp.example")):
        ed.widgets[k].setText(v)
    assert ed.message.text().startswith("home_agent:")
    out = tmp_path / "profile-editor.png"
    assert ed.grab().save(str(out))
    save(out, "profile-editor.png")
    # The VPN page: the [vpn] table, checked by the helper's parser as you type.
    ed.widgets["home_agent"].setText("10.20.1.1")
    for k, v in (("vpn.gateways", "vpn1.corp.example, 192.0.2.x!"),
                 ("vpn.identity", "alice@corp.example")):
        ed.widgets[k].setText(v)
    ed.widgets["vpn.auth"].setCurrentText("eap-mschapv2")
    ed.pages.setCurrentIndex(1)
    assert ed.message.text().startswith("vpn.gateways[1]:")
    out = tmp_path / "profile-editor-vpn.png"
    assert ed.grab().save(str(out))
    save(out, "profile-editor-vpn.png")

    # Never use VPN on an untrusted network: blocked, and why.
    run(qloop, double.set(state="untrusted", mode="none", policy="never-vpn",
                          tunnel_inner_address="", vpn_gateway="", binding_expires=0.0,
                          error=NEVER_VPN_REASON))
    qtbot.waitUntil(lambda: tray.snapshot is not None and tray.snapshot.mode.value == "none")
    w.tabs.setCurrentIndex(0)
    out = tmp_path / "status-blocked.png"
    assert w.grab().save(str(out))
    save(out, "status-blocked.png")
