"""The tray as installed on a desktop (issue 19): an unprivileged user's tray, with its
own session bus and keyring, against the real ``trustroamd`` as root on a private
system bus with the distribution's system policy, our installed D-Bus policy and
the real polkitd with our installed actions.

- The policy is the user's: the tray's menu switches it (SetPolicy is
  org.trustroam.connect) and the helper takes it;
- saving a profile is the administrator's (org.trustroam.configure, auth_admin):
  the tray sets ALLOW_INTERACTIVE_AUTHORIZATION, polkit asks the user's
  authentication agent, a real ``pkttyagent`` registered for the tray's process,
  which the test answers with the administrator's password; without an agent the
  save is refused and the editor says why.

Doubles, and why:
- logind: tests/fake_logind.py on the private system bus says uid 1 ("daemon") is
  in an active local session (the helper asks it before accepting the tray's
  secret agent).  There is no systemd here, and polkitd reads sessions from
  logind's files, not its bus, so it cannot see that session: a polkit rule
  (added as an administrator would) grants that user org.trustroam.connect,
  which is what the installed action gives an active local session.  Nothing
  grants it org.trustroam.configure.
- the administrator's password: polkit's setuid helper checks it with PAM
  against /etc/shadow; pkttyagent runs in a private mount namespace in which
  /etc/shadow is a copy with a known password for root (the administrator named
  by the test's polkit rule), and /run/dbus/system_bus_socket is the private
  bus (a setuid program ignores DBUS_SYSTEM_BUS_ADDRESS).  The host's files are
  not touched.
- Python lives under /root (pyenv), which the user may not enter: the tray runs
  in a private mount namespace where /root is a world-readable tmpfs holding
  only Python's own directory.

Root only (the helper, the namespaces); no network namespace, no lab lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.lab import nm as lab_nm
from app.lab import polkit
from tests import fake_logind
from tests.dbus_client import hold_as, properties, run_as
from tests.requirements import require, require_root
from tests.ui.procs import BUS_CONF, ROOT, Procs, _name_has_owner, _read_line, base_env, wait_for
from tests.ui.shell import Shell

USER = 1  # "daemon": a local user other than root and nobody
ADMIN_PASSWORD = "trustroam-admin"
PROFILE = ('home_address = "10.20.1.10"\nhome_network = "10.20.1.0/24"\n'
           'home_agent = "10.20.1.1"\nspi = 256\n')


def as_user(argv: list[str], *, mounts: str = "") -> list[str]:
    """``argv`` as USER (no supplementary groups) in a private mount namespace: Python's
    prefix reachable under a world-readable /root, and ``mounts`` (shell) done first."""
    prefix = Path(sys.prefix)
    steps = [mounts] if mounts else []
    if prefix.is_relative_to("/root"):
        hold = Path(f"/run/trustroam-test-{os.getpid()}-{USER}")
        steps += [f"mkdir -p {hold}", f"mount --bind {prefix} {hold}",
                  "mount -t tmpfs -o mode=0755 tmpfs /root", f"mkdir -p {prefix}",
                  f"mount --move {hold} {prefix}", f"rmdir {hold}"]
    script = " && ".join([*steps, f'exec setpriv --reuid={USER} --regid={USER} '
                                  '--clear-groups "$@"'])
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv]


@pytest.fixture(scope="module")
def world() -> Iterator[dict[str, Any]]:
    require_root("trustroamd runs as root")
    for tool in ("Xvfb", "dbus-daemon", "gnome-keyring-daemon", "pkttyagent", "setpriv",
                 "unshare", "openssl"):
        require(shutil.which(tool) is not None, f"{tool} is not installed (scripts/install-deps)")
    require(polkit.POLKITD.exists(), "polkitd is not installed (scripts/install-deps)")
    # Not under pytest's 0700 base: polkitd (its own uid) and the user reach in here.
    d = Path(tempfile.mkdtemp(prefix="trustroam-tray-user-"))
    d.chmod(0o755)
    procs = Procs(d)
    held = None
    try:
        # The system side, root's: the bus as installed, polkitd, logind's double, trustroamd.
        sock = d / "system_bus"
        (d / "system_bus.conf").write_text(lab_nm.bus_conf(sock))
        bus = procs.add("system-bus", subprocess.Popen(
            ["dbus-daemon", f"--config-file={d / 'system_bus.conf'}", "--nofork",
             "--print-address=1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, text=True))
        system = _read_line(bus, "the system bus")
        rules = polkit.rules_dir(d)
        cmd = polkit.command(d)
        assert cmd is not None
        (rules / "40-trustroam-test.rules").write_text(
            'polkit.addAdminRule(function(action, subject) {\n'
            '  return ["unix-user:root"];\n});\n'
            'polkit.addRule(function(action, subject) {\n'
            '  if (action.id == "org.trustroam.connect" && subject.user == "daemon")\n'
            '    return polkit.Result.YES;\n});\n')
        procs.add("polkitd", subprocess.Popen(
            cmd, env=base_env(DBUS_SYSTEM_BUS_ADDRESS=system), stdout=subprocess.DEVNULL,
            stderr=(d / "polkitd.log").open("w"), stdin=subprocess.DEVNULL, text=True))
        wait_for(lambda: _name_has_owner(system, "org.freedesktop.PolicyKit1"), 20, "polkitd")
        active = d / "session-active"
        active.touch()

        async def logind(b: Any) -> Any:
            manager, session = fake_logind.Manager(USER), fake_logind.Session(active, USER)
            b.export("/org/freedesktop/login1", manager)
            b.export(fake_logind.SESSION_PATH, session)
            await b.request_name(fake_logind.NAME)
            return lambda: list(manager.asked)
        held = hold_as(None, system, logind)
        profiles = d / "profiles"
        profiles.mkdir()
        (profiles / "corp.toml").write_text(PROFILE)
        helper = procs.add("trustroamd", subprocess.Popen(
            [sys.executable, "-m", "app.service.daemon", "--profiles-dir", str(profiles),
             "--dataplane", "userspace", "--links", "rtnetlink", "--state-dir",
             str(d / "state"), "--config", str(d / "trustroamd.toml")],
            env=base_env(DBUS_SYSTEM_BUS_ADDRESS=system), stdout=subprocess.PIPE,
            stderr=(d / "trustroamd.log").open("w"), stdin=subprocess.DEVNULL, text=True,
            cwd=ROOT))
        assert _read_line(helper, "trustroamd").startswith("trustroamd: serving")

        # The user's side: its home, session bus, keyring; X is the test's Xvfb.
        home = d / "home"
        for sub in ("", ".local/share/keyrings", ".config", "runtime"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        for p in [home, *home.rglob("*")]:
            os.chown(p, USER, USER)
        (home / "runtime").chmod(0o700)
        session_sock = home / "runtime" / "bus"
        (d / "session_bus.conf").write_text(BUS_CONF.format(kind="session", sock=session_sock))
        sbus = procs.add("session-bus", subprocess.Popen(
            ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "dbus-daemon",
             f"--config-file={d / 'session_bus.conf'}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True))
        session = _read_line(sbus, "the user's session bus")
        display = procs.xvfb()
        user_env = base_env(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
                            XDG_DATA_HOME=str(home / ".local/share"),
                            XDG_RUNTIME_DIR=str(home / "runtime"), USER="daemon",
                            LOGNAME="daemon", DBUS_SESSION_BUS_ADDRESS=session,
                            DBUS_SYSTEM_BUS_ADDRESS=system, DISPLAY=display,
                            QT_QPA_PLATFORM="xcb")
        keyring = procs.add("gnome-keyring", subprocess.Popen(
            ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups",
             "gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            env=user_env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, text=True))
        assert keyring.stdin is not None
        keyring.stdin.write("user-login")
        keyring.stdin.close()
        keyring.stdin = None
        wait_for(lambda: _name_has_owner(session, "org.freedesktop.secrets"), 15,
                 "the user's keyring")
        procs.python("sni-watcher", "tests.ui.sni_watcher",
                     base_env(DBUS_SESSION_BUS_ADDRESS=session, DISPLAY=display))
        yield {"system": system, "socket": sock, "env": user_env, "procs": procs,
               "profiles": profiles, "dir": d, "logind": held}
    finally:
        if held is not None:
            held.stop()
        procs.stop()
        shutil.rmtree(d, ignore_errors=True)


class UserTray:
    """tests/ui/user_tray.py as USER: one command, one answer."""

    def __init__(self, world: dict[str, Any]) -> None:
        self.p = world["procs"].add("user-tray", subprocess.Popen(
            as_user([sys.executable, "-m", "tests.ui.user_tray"]), env=world["env"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=(world["dir"] / "user-tray.log").open("w"), text=True, cwd=ROOT))
        ready = _read_line(self.p, "the user's tray", 30)
        assert ready.startswith("ready "), ready
        self.pid = int(ready.split()[1])

    def ask(self, line: str, timeout: float = 60) -> str:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        return _read_line(self.p, f"the tray's answer to {line!r}", timeout)


class TtyAgent:
    """pkttyagent as USER for the tray's process, on a terminal of its own (it asks
    the password there), with the administrator's password known (see above)."""

    def __init__(self, world: dict[str, Any], pid: int) -> None:
        d: Path = world["dir"]
        hashed = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=ADMIN_PASSWORD,
                                capture_output=True, text=True, check=True).stdout.strip()
        lines = Path("/etc/shadow").read_text().splitlines()
        shadow = d / "shadow"
        shadow.write_text("".join(
            (f"root:{hashed}:" + ":".join(ln.split(":")[2:]) if ln.startswith("root:") else ln)
            + "\n" for ln in lines))
        shadow.chmod(0o640)
        mounts = (f"mount -t tmpfs -o mode=0755 tmpfs /run/dbus && "
                  f"touch /run/dbus/system_bus_socket && "
                  f"mount --bind {world['socket']} /run/dbus/system_bus_socket && "
                  f"mount --bind {shadow} /etc/shadow")
        self.master, slave = pty.openpty()
        notify_r, notify_w = os.pipe()

        def controlling_tty() -> None:
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        self.p = world["procs"].add("pkttyagent", subprocess.Popen(
            as_user(["pkttyagent", "--process", str(pid), "--notify-fd", str(notify_w)],
                    mounts=mounts),
            env=world["env"], stdin=slave, stdout=slave, stderr=slave,
            preexec_fn=controlling_tty, pass_fds=(notify_w,)))  # noqa: PLW1509
        os.close(slave)
        os.close(notify_w)
        ready, _, _ = select.select([notify_r], [], [], 20)
        os.close(notify_r)
        assert ready, "pkttyagent did not register in 20 s"
        self.seen = b""

    def answer(self, timeout: float = 30) -> str:
        """Read the terminal until the password prompt, type the password, and
        return what the agent showed."""
        deadline = time.monotonic() + timeout
        while not self.seen.rstrip().endswith(b"Password:"):
            ready, _, _ = select.select([self.master], [], [], deadline - time.monotonic())
            assert ready, f"no password prompt: {self.seen!r}"
            self.seen += os.read(self.master, 4096)
        # The agent turns echo off after the prompt with TCSAFLUSH, which drops what
        # was typed before: type only once it reads without echo (no event says so).
        wait_for(lambda: not termios.tcgetattr(self.master)[3] & termios.ECHO, 10,
                 "the agent reading the password without echo")
        os.write(self.master, ADMIN_PASSWORD.encode() + b"\n")
        return self.seen.decode(errors="replace")

    def stop(self) -> None:
        self.p.terminate()
        self.p.wait(5)
        os.close(self.master)


async def click_and_wait(session: str, label: str) -> None:
    """Click ``label`` in the tray's menu and wait for its radio to show it checked
    (the tray checks it from the helper's Policy property, not from the click)."""
    shell = Shell(session)
    await shell.connect()
    try:
        await shell.find_item()

        async def checked() -> bool:
            radios = {e["label"]: e.get("toggle-state") for e in await shell.layout()
                      if e.get("toggle-type") == "radio"}
            return radios.get(label) == 1 and sum(v == 1 for v in radios.values()) == 1

        await shell.click(label)
        await shell.until(checked, timeout=20, what=f"{label!r} checked")
    finally:
        shell.close()


def test_a_desktop_user_switches_the_policy_in_the_menu_and_saves_a_profile_as_administrator(
        world: dict[str, Any]) -> None:
    tray = UserTray(world)
    assert fake_logind.uid_of(tray.pid) == USER  # the tray is the user's, not root's

    # The menu's radio entry, clicked as the desktop shell does (StatusNotifierItem's
    # menu on the user's session bus): the helper takes it, with no password.
    for label, policy in (("Always use VPN", "always-vpn"), ("Automatic", "auto")):
        asyncio.run(click_and_wait(world["env"]["DBUS_SESSION_BUS_ADDRESS"], label))

        async def taken(bus: Any, policy: str = policy) -> str:
            async with asyncio.timeout(10):  # the helper's answer to the tray's call
                while (p := (await properties(bus))["Policy"]) != policy:
                    await asyncio.sleep(0.05)
            return str(p)
        assert run_as(None, world["system"], taken) == policy
    assert "problem" not in tray.ask("policy auto")  # nothing refused on the way

    # No authentication agent: refused, and the editor says why.
    answer = tray.ask("save corp2")
    assert answer == ("not-saved Not saved: authentication is required for "
                      "org.trustroam.configure (no polkit authentication agent answered "
                      "for this session)"), answer
    assert not (world["profiles"] / "corp2.toml").exists()

    # With the user's agent: polkit asks for the administrator's password.
    agent = TtyAgent(world, tray.pid)
    try:
        assert tray.p.stdin is not None
        tray.p.stdin.write("save corp2\n")
        tray.p.stdin.flush()
        shown = agent.answer()
        saved = _read_line(tray.p, "the tray's answer to the save", 60)
    finally:
        agent.stop()
    assert "org.trustroam.configure" in shown and "root" in shown, shown
    assert saved == "saved corp2", saved
    assert 'home_agent = "10.20.2.1"' in (world["profiles"] / "corp2.toml").read_text()


