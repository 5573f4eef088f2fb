"""``trustroam-lab demo``: every mode of RFC 5266 running in the lab, with the tray.

Builds the lab (the VPN gateways reachable only from outside, as in most
deployments), starts the reference home agent on the home link, a foreign agent
on fa1 and ``trustroamd`` in the MN (on the lab's private system bus, with a
profile that has a ``[vpn]`` table for gw1 and the MN's charon over VICI), and
the tray ``trustroam`` attached to that helper: on the current display when
there is one it can use, else on a private Xvfb with trayer as the X tray host,
saving a screenshot of the tray icon and its tooltip at every stop to a folder
it prints.  Then it walks the MN home -> t1 -> fa1 -> t2 -> pub -> nat -> home
(h, c, f, c, mc, mc through MOBIKE, h); on nat it sets the policy to never-vpn
(untrusted, nothing protected: the gate shuts, the tray says why) and back to
auto (mc again).  After each step it prints what ``trustroamctl status`` shows
(the helper's own state and mode) and a ping from the CN to the home address.
``--stay`` leaves it all running for ``trustroamctl`` and ``trustroam-lab move``
(Ctrl-C ends); otherwise it cleans up.  It needs no
stdin and no display.
"""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from app.lab import charon, configs
from app.lab.configs import CN, HOME
from app.lab.topology import MN
from app.lab.world import CHARON_DIR, Lab, LabError

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Stop:
    net: str
    state: str  # the helper's State when settled here
    mode: str  # its Mode
    icon: str  # the tray's icon (ui/presentation.py's icon_name)
    prefix: str  # the MN's DHCP address on this link starts with this
    policy: str = ""  # set this policy here instead of moving

    @property
    def name(self) -> str:
        return f"{self.net} (policy {self.policy})" if self.policy else self.net

    @property
    def file(self) -> str:
        return f"{self.net}-{self.policy}" if self.policy else self.net


TOUR = (
    Stop("home", "trusted", "h", "trustroam-trusted-home", "10.20.1."),
    Stop("t1", "trusted", "c", "trustroam-trusted-colocated", "10.30.1."),
    Stop("fa1", "trusted", "f", "trustroam-trusted-fa", "10.40.1."),
    Stop("t2", "trusted", "c", "trustroam-trusted-colocated", "10.30.2."),
    # Untrusted: Mobile IP inside the VPN through gw1 (mode mc, RFC 5266 3.3).
    Stop("pub", "untrusted", "mc", "trustroam-vpn", "203.0.113."),
    # Behind a NAT, still untrusted: MOBIKE moves the IKE SA, the TIA stays.
    Stop("nat", "untrusted", "mc", "trustroam-vpn", "192.168.50."),
    # The user forbids the VPN: untrusted with nothing protected, the gate shut, and
    # the tray says why; back to automatic, the VPN comes back.
    Stop("nat", "untrusted", "none", "trustroam-untrusted", "192.168.50.", "never-vpn"),
    Stop("nat", "untrusted", "mc", "trustroam-vpn", "192.168.50.", "auto"),
    Stop("home", "trusted", "h", "trustroam-trusted-home", "10.20.1."),
)
GATEWAY = charon.GATEWAYS[0].address  # gw1: the profile's only VPN gateway


class _Proc:
    def __init__(self, argv: list[str], log: Path, env: dict[str, str],
                 node: str | None = None, pass_fds: tuple[int, ...] = ()) -> None:
        self.log = log
        self.seen = 0  # wait_for looks after what it found last
        prefix = ["ip", "netns", "exec", node] if node else []
        with log.open("w") as out:
            self.p = subprocess.Popen([*prefix, *argv], env=env, stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True, pass_fds=pass_fds)

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        """Until a line with ``text`` appears after the one found by the last call."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.log.read_text(errors="replace").find(text, self.seen)
            if found >= 0:
                self.seen = found + len(text)
                return
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{self.log.name}: no {text!r}; see {self.log}")
            time.sleep(0.05)  # these processes report only in their log

    def stop(self) -> None:
        if self.p.poll() is None:
            # The whole session: `ip netns exec` and what it runs.
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)


class _Desktop:
    """Where the tray shows: the current display, or a private Xvfb with trayer."""

    def __init__(self, d: Path, helper_bus: str) -> None:
        self.d = d
        self.procs: list[_Proc] = []
        self.shots: Path | None = None
        self.tray: _Proc | None = None
        self.icon_win: str | None = None
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("DBUS_SYSTEM_BUS_ADDRESS", "QT_QPA_PLATFORM")}
        self.env.update(DBUS_SYSTEM_BUS_ADDRESS=helper_bus, PYTHONPATH=str(ROOT),
                        QT_QPA_PLATFORM="xcb")

    def start(self) -> str:
        """Start the tray; returns where it shows, or why it does not."""
        if importlib.util.find_spec("PySide6") is None:
            return "no tray: PySide6 is not installed (pip install -e '.[ui]')"
        if self.env.get("DISPLAY") and self._display_usable():
            where = f"on display {self.env['DISPLAY']}"
        else:
            missing = [t for t in ("Xvfb", "trayer", "dbus-daemon") if not shutil.which(t)]
            if missing:
                return f"no tray: no display and {', '.join(missing)} missing " \
                       "(scripts/install-deps installs them)"
            self._private_desktop()
            where = f"under Xvfb {self.env['DISPLAY']} (trayer as the tray)"
        self.tray = _Proc([sys.executable, "-m", "ui.main", "--log-level", "info"],
                          self.d / "tray.log", self.env)
        self.procs.append(self.tray)
        return where

    def _display_usable(self) -> bool:
        if not shutil.which("xdotool"):
            return True  # cannot check: let the tray try
        r = subprocess.run(["xdotool", "getdisplaygeometry"], env=self.env,
                           capture_output=True, check=False, stdin=subprocess.DEVNULL)
        return r.returncode == 0

    def _private_desktop(self) -> None:
        # Xvfb tells its display number on a pipe; read to the newline.
        r, w = os.pipe()
        xvfb = _Proc(["Xvfb", "-displayfd", str(w), "-screen", "0", "640x400x24",
                      "-nolisten", "tcp", "-noreset"], self.d / "xvfb.log", dict(os.environ),
                     pass_fds=(w,))
        self.procs.append(xvfb)
        os.close(w)
        buf = b""
        try:
            while not buf.endswith(b"\n"):
                ready, _, _ = select.select([r], [], [], 20)
                chunk = os.read(r, 16) if ready else b""
                if not chunk:
                    raise LabError(f"Xvfb did not start; see {self.d / 'xvfb.log'}")
                buf += chunk
        finally:
            os.close(r)
        self.env["DISPLAY"] = ":" + buf.decode().strip()
        # A session bus of its own (single instance, notifications); no
        # StatusNotifierWatcher on it, so Qt docks the icon in trayer (the X tray).
        bus = self.d / "session_bus"
        session = _Proc(["dbus-daemon", "--session", "--nofork",
                         f"--address=unix:path={bus}"], self.d / "session-bus.log", self.env)
        self.procs.append(session)
        self.env["DBUS_SESSION_BUS_ADDRESS"] = f"unix:path={bus}"
        self.env["XDG_RUNTIME_DIR"] = str(self.d)
        self.procs.append(_Proc(
            ["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel",
             "--width", "120", "--heighttype", "pixel", "--height", "32",
             "--SetDockType", "true", "--tint", "0x303030", "--transparent", "true",
             "--alpha", "0"], self.d / "trayer.log", self.env))
        if shutil.which("import") and shutil.which("xdotool"):
            self.shots = Path(tempfile.mkdtemp(prefix="trustroam-demo-shots-"))
        deadline = time.monotonic() + 10
        while not bus.exists():
            if time.monotonic() > deadline:
                raise LabError(f"the demo's session bus did not start; see {self.d}")
            time.sleep(0.05)  # dbus-daemon says it is ready only by its socket

    # -- screenshots ------------------------------------------------------------------

    def _x(self, *argv: str) -> str:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True,
                              check=False, stdin=subprocess.DEVNULL, timeout=20).stdout

    def _windows(self) -> list[str]:
        return self._x("xdotool", "search", "--onlyvisible", "--class", "trustroam").split()

    def _geometry(self, win: str) -> tuple[int, int, int, int]:
        """x, y, width, height; all 0 for a window that has just gone."""
        g = dict(line.split("=", 1) for line in
                 self._x("xdotool", "getwindowgeometry", "--shell", win).split())
        try:
            return int(g["X"]), int(g["Y"]), int(g["WIDTH"]), int(g["HEIGHT"])
        except (KeyError, ValueError):
            return 0, 0, 0, 0

    def _until(self, what: str, check: object, timeout: float = 10.0) -> object:
        deadline = time.monotonic() + timeout
        while True:
            got = check()  # type: ignore[operator]
            if got:
                return got
            if time.monotonic() > deadline:
                wins = {v: self._geometry(v) for v in self._windows()}
                raise LabError(f"demo screenshots: {what} not seen in {timeout:.0f} s "
                               f"(windows {wins})")
            time.sleep(0.1)  # X gives no event to a client that does not own the window

    def shows(self, stop: Stop, n: int, news: bool) -> list[Path]:
        """Wait for the tray to draw the stop's icon; screenshot its notification (a
        settled change) and the icon with its tooltip.  ``news``: the helper's state or
        mode differs from the last stop's (else the icon stays and the tray, rightly,
        announces nothing: pub -> nat is a MOBIKE move inside mode mc)."""
        if self.tray is None:
            return []
        if news:
            self.tray.wait_for(f"icon {stop.icon}", 20)
        if self.shots is None:
            return []
        if self.icon_win is None:
            found = self._until("the tray icon in trayer", lambda: [
                v for v in self._windows() if 0 < self._geometry(v)[2] <= 48
                and 0 < self._geometry(v)[3] <= 48] or None)
            assert isinstance(found, list)
            self.icon_win = found[0]
        icon_win = self.icon_win
        box = self._geometry(icon_win)
        x, y, w, h = box

        def popups() -> list[str]:  # notification balloons and tooltips
            return [v for v in self._windows() if v != icon_win and self._geometry(v)[2]]

        shots = []
        if n and news:  # a settled change the tray announces
            self.tray.wait_for("notify: ", 10)
            balloon = self._until("the notification", lambda: popups() or None)
            assert isinstance(balloon, list)
            shots.append(self._capture(f"{n}-{stop.file}-notification", box,
                                       self._geometry(balloon[0])))
        # Close balloons (a click does), and leave the icon: the tooltip is read
        # when the pointer arrives, so it is then the state's tooltip.
        for v in popups():
            bx, by, bw, bh = self._geometry(v)
            self._x("xdotool", "mousemove", str(bx + bw // 2), str(by + bh // 2), "click", "1")
        self._x("xdotool", "mousemove", "5", "390")
        self._until("the popups closed", lambda: not popups())
        # Two steps: a warp alone may reach Qt as an enter without a motion, and Qt
        # wakes the tooltip on motion (seen on pub -> nat, where no balloon was clicked).
        self._x("xdotool", "mousemove", str(x + w // 2 - 2), str(y + h // 2))
        self._x("xdotool", "mousemove", str(x + w // 2), str(y + h // 2))
        tip = self._until("the tooltip", lambda: popups() or None)
        assert isinstance(tip, list)
        shots.append(self._capture(f"{n}-{stop.file}", box, self._geometry(tip[0])))
        self._x("xdotool", "mousemove", "5", "390")  # the next notice alone on screen
        return shots

    def screenshots(self, stop: Stop, n: int, news: bool) -> list[Path]:
        """``shows``; a screenshot that cannot be taken ends the screenshots, not the demo."""
        try:
            return self.shows(stop, n, news)
        except (LabError, OSError, subprocess.SubprocessError) as exc:
            print(f"  tray: not followed any more ({exc})", flush=True)
            self.shots = None
            self.tray = None
            return []

    def _capture(self, name: str, *bs: tuple[int, int, int, int]) -> Path:
        """The part of the screen holding boxes (x, y, w, h), once it holds still."""
        assert self.shots is not None
        left = max(0, min(b[0] for b in bs) - 8)
        right = min(640, max(b[0] + b[2] for b in bs) + 8)
        bottom = min(400, max(b[1] + b[3] for b in bs) + 8)
        out = self.shots / f"{name}.png"
        last = b""
        for _ in range(50):  # until the picture holds still (X paints asynchronously)
            self._x("import", "-window", "root", "-crop", f"{right - left}x{bottom}+{left}+0",
                    "+repage", str(out))
            data = out.read_bytes() if out.exists() else b""
            if data and data == last:
                break
            last = data
        return out

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()


def _terminated(_sig: int, _frame: object) -> None:
    raise SystemExit(143)  # SIGTERM (e.g. CI's timeout): clean up as for Ctrl-C


def run(*, stay: bool) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    lab = Lab()
    lab.down()
    d = Path(tempfile.mkdtemp(prefix="tr-demo-"))
    procs: list[_Proc] = []
    desktop: _Desktop | None = None
    try:
        took = lab.up(at="home", gw_inside=False)
        print(f"lab up in {took:.2f} s; mobile node on the home link", flush=True)
        (d / "ha.toml").write_text(configs.ha_toml(d / "ha-state"))
        (d / "fa.toml").write_text(configs.fa_toml("fa1"))
        profiles, secrets = configs.write_helper_files(d, "lab", vpn_gateways=(GATEWAY,))
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=lab.nm_bus(), PYTHONPATH=str(ROOT))
        py = sys.executable
        procs.append(_Proc([py, "-m", "app.agents.ha_cli", "--config", str(d / "ha.toml")],
                           d / "ha.log", env, "tr-ha"))
        procs.append(_Proc([py, "-m", "app.agents.fa_cli", "--config", str(d / "fa.toml")],
                           d / "fa.log", env, "tr-fa1"))
        procs[0].wait_for("serving registrations")
        procs[1].wait_for("foreign agent on fa")
        helper = _Proc([py, "-m", "app.service.daemon", "--profiles-dir", str(profiles),
                        "--secrets", str(secrets), "--connect", "lab",
                        "--vici-socket", str(charon.directory(CHARON_DIR, MN) / "charon.vici")],
                       d / "trustroamd.log", env, "tr-mn")
        procs.append(helper)
        helper.wait_for("serving org.trustroam.Helper1", 20)
        desktop = _Desktop(d, lab.nm_bus())
        print(f"tray: {desktop.start()}", flush=True)
        if desktop.shots is not None:
            print(f"screenshots of the tray at each stop go to {desktop.shots}", flush=True)
        started = time.monotonic()
        for n, stop in enumerate(TOUR):
            t = time.monotonic()
            if stop.policy:
                print(f"\n$ trustroamctl policy {stop.policy}\n"
                      f"{_ctl(env, 'policy', stop.policy).rstrip()}", flush=True)
            elif n:
                lab.move(stop.net)
                helper.wait_for(f"link-up interface=eth0 address={stop.prefix}", 20)
            _settle(env, stop, TOUR[n - 1] if n else None, helper)
            took = time.monotonic() - t
            news = not n or (TOUR[n - 1].state, TOUR[n - 1].mode) != (stop.state, stop.mode)
            print(f"\n== on {stop.name} ==", flush=True)
            _show(env, stop, took, desktop.screenshots(stop, n, news))
        print(f"\nwalk: {len(TOUR) - 1} steps in {time.monotonic() - started:.1f} s")
        print(f"\nlogs in {d}")
        if desktop.shots is not None:
            print(f"screenshots in {desktop.shots}")
        if stay:
            print("everything keeps running: try `trustroamctl status` with "
                  f"DBUS_SYSTEM_BUS_ADDRESS={lab.nm_bus()}, or `trustroam-lab move t2`; "
                  "Ctrl-C ends", flush=True)
            helper.p.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if desktop is not None:
            desktop.stop()
        for p in reversed(procs):
            p.stop()
        lab.down()
    return 0


def _ctl(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "app.ctl", *args], env=env,
                         capture_output=True, text=True, timeout=20, check=False,
                         stdin=subprocess.DEVNULL)
    return out.stdout + out.stderr


def _settle(env: dict[str, str], stop: Stop, previous: Stop | None, helper: _Proc,
            timeout: float = 30.0) -> None:
    if previous is not None and previous.mode == stop.mode == "mc" and not stop.policy:
        # The status is mc before and after: only the helper's mobike event says the
        # VPN moved to the new link (RFC 5266 3.3).
        helper.wait_for("mobike ", timeout)
    deadline = time.monotonic() + timeout
    want = (f'"Mode": "{stop.mode}"', f'"State": "{stop.state}"')
    while not all(w in (st := _ctl(env, "status", "--json")) for w in want):
        if time.monotonic() > deadline:
            raise LabError(f"the helper did not reach {stop.state}/{stop.mode} on "
                           f"{stop.name}: {st.strip()}")
        time.sleep(0.1)  # polling the D-Bus status, as a person would


_SEND = ("import socket\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "try:\n    s.sendto(b'demo', ('" + CN + "', 9999)); print('SENT')\n"
         "except PermissionError:\n    print('REFUSED')\n")


def _show(env: dict[str, str], stop: Stop, took: float, shots: list[Path]) -> None:
    print(_ctl(env, "status").rstrip())
    print(f"  settled {took:.1f} s after the "
          f"{'policy change' if stop.policy else 'move'}")
    ping = subprocess.run(["ip", "netns", "exec", "tr-cn", "ping", "-c", "3", "-i", "0.2",
                           "-W", "1", "-q", HOME], capture_output=True, text=True, check=False)
    summary = next((ln for ln in ping.stdout.splitlines() if "packets transmitted" in ln),
                   ping.stderr.strip())
    print(f"  CN -> home address {HOME}: {summary}")
    if stop.mode == "none":
        # The gate: with nothing proven, normal traffic may not leave the MN (a
        # netfilter drop of a local packet is EPERM for the sender).
        out = subprocess.run(["ip", "netns", "exec", "tr-mn", sys.executable, "-c", _SEND],
                             capture_output=True, text=True, check=False)
        refused = "REFUSED" in out.stdout
        print(f"  gate: {'shut' if refused else 'OPEN?'}: a UDP packet MN -> CN {CN} "
              f"{'refused (EPERM)' if refused else 'was not refused'}")
    for shot in shots:
        print(f"  tray: {shot}")
    sys.stdout.flush()
