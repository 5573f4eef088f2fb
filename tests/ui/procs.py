"""Private desktops for the tray's tests and benchmark: buses, X, keyring, doubles.

Every process is started here, owned by the caller, and ended by ``stop``;
nothing uses the machine's own buses or display.  Qt-free, so the benchmark
uses it too.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>{kind}</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "DBUS_SESSION_BUS_ADDRESS",
                        "DBUS_SYSTEM_BUS_ADDRESS", "QT_QPA_PLATFORM")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def _read_line(proc: subprocess.Popen[str], what: str, timeout: float = 20.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"{what} did not start in {timeout:.0f} s")
    line = proc.stdout.readline()
    if not line:
        err = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"{what} exited at start: {err.strip()[-500:]}")
    return line.strip()


@dataclass
class Procs:
    """Started processes, ended in reverse order."""

    tmp: Path
    procs: list[tuple[str, subprocess.Popen[str]]] = field(default_factory=list)

    def add(self, name: str, proc: subprocess.Popen[str]) -> subprocess.Popen[str]:
        self.procs.append((name, proc))
        return proc

    def stop_one(self, proc: subprocess.Popen[str]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for s in (proc.stdout, proc.stderr, proc.stdin):
            if s is not None:
                s.close()

    def stop(self) -> None:
        for _name, p in reversed(self.procs):
            self.stop_one(p)
        self.procs.clear()

    # -- buses ------------------------------------------------------------------------

    def dbus(self, kind: str) -> str:
        """A private bus daemon (kind: system or session); returns its address."""
        sock = self.tmp / f"{kind}_bus"
        conf = self.tmp / f"{kind}_bus.conf"
        conf.write_text(BUS_CONF.format(kind=kind, sock=sock))
        p = self.add(f"dbus-{kind}", subprocess.Popen(
            ["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, env=base_env()))
        return _read_line(p, f"dbus-daemon ({kind})")

    # -- X ---------------------------------------------------------------------------

    def xvfb(self, size: str = "1024x600x24") -> str:
        r, w = os.pipe()
        p = self.add("Xvfb", subprocess.Popen(
            ["Xvfb", "-displayfd", str(w), "-screen", "0", size, "-nolisten", "tcp",
             "-noreset"], pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True))
        os.close(w)
        # Xvfb writes the number and the newline in two writes: read to the newline
        # before closing, or Xvfb may die of SIGPIPE.
        buf = b""
        deadline = time.monotonic() + 20
        while not buf.endswith(b"\n"):
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Xvfb did not report its display in 20 s")
            chunk = os.read(r, 16)
            if not chunk:
                raise RuntimeError(f"Xvfb exited at start: {p.stderr.read() if p.stderr else ''}")
            buf += chunk
        os.close(r)
        return ":" + buf.decode().strip()

    def trayer(self, display: str) -> subprocess.Popen[str]:
        p = self.add("trayer", subprocess.Popen(
            ["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel",
             "--width", "160", "--heighttype", "pixel", "--height", "32",
             "--SetDockType", "true", "--tint", "0x303030", "--transparent", "true",
             "--alpha", "0"],
            env=base_env(DISPLAY=display), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True))
        wait_for(lambda: _x_has_window(display, "panel"), 10, "trayer's window")
        return p

    # -- python helpers -------------------------------------------------------------------

    def python(self, name: str, module: str, env: dict[str, str],
               args: Iterable[str] = ()) -> subprocess.Popen[str]:
        p = self.add(name, subprocess.Popen(
            [sys.executable, "-m", module, *args], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=ROOT))
        line = _read_line(p, name)
        if line != "ready":
            raise RuntimeError(f"{name} said {line!r} instead of ready")
        return p

    def keyring(self, session_address: str, password: str = "test-login") -> dict[str, str]:
        """gnome-keyring's Secret Service, unlocked headless, data under tmp."""
        home = self.tmp / "home"
        (home / ".local/share/keyrings").mkdir(parents=True, exist_ok=True)
        home.chmod(0o700)
        runtime = self.tmp / "runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env = base_env(DBUS_SESSION_BUS_ADDRESS=session_address, HOME=str(home),
                       XDG_DATA_HOME=str(home / ".local/share"),
                       XDG_RUNTIME_DIR=str(runtime))
        p = self.add("gnome-keyring", subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
        assert p.stdin is not None
        p.stdin.write(password)
        p.stdin.close()
        p.stdin = None
        wait_for(lambda: _name_has_owner(session_address, "org.freedesktop.secrets"), 15,
                 "gnome-keyring on the session bus")
        return env


def wait_for(pred: object, timeout: float, what: str) -> None:
    """Poll a condition a process offers no event for (process start-up only)."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():  # type: ignore[operator]
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not appear in {timeout:.0f} s")
        time.sleep(0.05)


def _name_has_owner(address: str, name: str) -> bool:
    r = subprocess.run(["dbus-send", f"--bus={address}", "--print-reply",
                        "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
                        "org.freedesktop.DBus.NameHasOwner", f"string:{name}"],
                       capture_output=True, text=True, check=False)
    return "boolean true" in r.stdout


def _x_has_window(display: str, name: str) -> bool:
    if shutil.which("xdotool") is None:
        return True
    r = subprocess.run(["xdotool", "search", "--name", name], capture_output=True, text=True,
                       env=base_env(DISPLAY=display), check=False)
    return bool(r.stdout.strip())
