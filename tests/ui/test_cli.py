"""The ``trustroam`` command: --version, --help, one instance per session, quitting
leaves the connection alone.  Runs the real command in a private desktop."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ui.procs import ROOT, Procs, _name_has_owner, base_env, wait_for
from tests.ui.shell import Shell


def trustroam(*args: str, env: dict[str, str] | None = None, timeout: float = 30
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ui.main", *args], env=env or base_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL, check=False)


def test_version_and_help_need_no_display() -> None:
    r = trustroam("--version")
    assert r.returncode == 0 and r.stdout.startswith("trustroam "), r
    r = trustroam("--help")
    assert r.returncode == 0 and "Quitting the tray leaves the connection" in r.stdout
    r = trustroam("--log-level", "loud")
    assert r.returncode == 2 and "invalid choice: 'loud'" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def session(tmp_path: Path) -> Iterator[tuple[Procs, dict[str, str]]]:
    from tests.ui.conftest import require_desktop_tools

    require_desktop_tools()
    procs = Procs(tmp_path)
    try:
        env = base_env(DBUS_SYSTEM_BUS_ADDRESS=procs.dbus("system"),
                       DBUS_SESSION_BUS_ADDRESS=procs.dbus("session"),
                       DISPLAY=procs.xvfb(), QT_QPA_PLATFORM="xcb", HOME=str(tmp_path),
                       XDG_CONFIG_HOME=str(tmp_path / "config"))
        procs.python("sni-watcher", "tests.ui.sni_watcher", env)
        procs.python("helper-double", "tests.ui.helper_double", env)
        yield procs, env
    finally:
        procs.stop()


def test_single_instance_and_quit_never_disconnects(session: tuple[Procs, dict[str, str]]
                                                    ) -> None:
    procs, env = session
    first = procs.add("trustroam", subprocess.Popen(
        [sys.executable, "-m", "ui.main", "--log-level", "info"], env=env, cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    wait_for(lambda: _name_has_owner(env["DBUS_SESSION_BUS_ADDRESS"], "org.trustroam.Tray"),
             20, "the first tray's name")
    second = trustroam(env=env)
    assert second.returncode == 0
    assert second.stderr.strip() == "trustroam: already running in this session"
    assert first.poll() is None
    # A second start asking for the status window (the .desktop entry's Exec) opens it
    # in the running tray instead.
    again = trustroam("--status", env=env)
    assert again.returncode == 0 and again.stderr == "", again

    async def go() -> list[str]:
        from dbus_fast.aio import MessageBus
        from dbus_fast.message import Message

        shell = Shell(env["DBUS_SESSION_BUS_ADDRESS"])
        await shell.connect()
        sysbus = await MessageBus(bus_address=env["DBUS_SYSTEM_BUS_ADDRESS"]).connect()

        async def test1(member: str, sig: str = "", body: list[Any] | None = None) -> Any:
            reply = await sysbus.call(Message(
                destination="org.trustroam.Helper1", path="/org/trustroam/Test",
                interface="org.trustroam.Test1", member=member, signature=sig,
                body=body or []))
            return reply.body[0] if reply.body else None

        try:
            await shell.find_item()
            await test1("Set", "s", ['{"state": "trusted", "mode": "h", "profile": "corp"}'])

            async def shows_it() -> bool:
                return "mode h" in await shell.tooltip()

            await shell.until(shows_it, what="trusted in the tooltip")
            await shell.click("Quit")
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, first.wait, 20)
            return list(await test1("Calls"))
        finally:
            shell.close()
            sysbus.disconnect()

    calls = asyncio.run(go())
    assert first.returncode == 0
    assert "Disconnect" not in calls and any(c.startswith("RegisterSecretAgent") for c in calls)
    assert first.stderr is not None
    log = first.stderr.read()
    assert "Traceback" not in log and "status window shown" in log, log


# -- trustroamctl against the helper double ------------------------------------------------

PROFILE = """home_address = "10.20.1.10"
home_network = "10.20.1.0/24"
home_agent = "10.20.1.1"
spi = 256

[probe]
retries = 2
"""
CANARY = "5eC7e7c4a9a7c4a9a7c4a9a7c4a9a7c4"  # typed at the --ask prompt: never seen again


@pytest.fixture
def helper_double(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private system bus with the helper double on it (no desktop needed)."""
    procs = Procs(tmp_path)
    try:
        env = base_env(DBUS_SYSTEM_BUS_ADDRESS=procs.dbus("system"), HOME=str(tmp_path))
        procs.python("helper-double", "tests.ui.helper_double", env)
        yield env
    finally:
        procs.stop()


def ctl(env: dict[str, str], *args: str, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.ctl", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def double_call(env: dict[str, str], member: str, sig: str = "",
                body: list[Any] | None = None) -> Any:
    async def go() -> Any:
        from dbus_fast.aio import MessageBus
        from dbus_fast.message import Message

        bus = await MessageBus(bus_address=env["DBUS_SYSTEM_BUS_ADDRESS"]).connect()
        try:
            reply = await bus.call(Message(
                destination="org.trustroam.Helper1", path="/org/trustroam/Test",
                interface="org.trustroam.Test1", member=member, signature=sig,
                body=body or []))
            return reply.body[0] if reply.body else None
        finally:
            bus.disconnect()
    return asyncio.run(go())


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def test_ctl_imports_sets_shows_and_deletes_a_profile_through_the_helper(
        helper_double: dict[str, str], tmp_path: Path) -> None:
    env = helper_double
    f = tmp_path / "road.toml"
    f.write_text(PROFILE)
    r = ctl(env, "profile", "import", str(f))
    assert r.returncode == 0 and r.stdout == "saved road\n", r  # named after its file
    r = ctl(env, "profile", "set", "road", "lifetime=900", "probe.retries=3",
            "features.gate=false", "nai=me@corp.example")
    assert r.returncode == 0 and r.stdout == "saved road\n", r
    shown = ctl(env, "profile", "show", "road").stdout
    for line in ('name = "road"', "lifetime = 900", "[probe]", "retries = 3", "[features]",
                 "gate = false", 'nai = "me@corp.example"'):
        assert line in shown.splitlines(), (line, shown)
    assert "road" in ctl(env, "profile", "list").stdout.split()
    r = ctl(env, "profile", "set", "road", "nai=")  # an empty value removes the key
    assert r.returncode == 0 and "nai" not in ctl(env, "profile", "show", "road").stdout
    r = ctl(env, "profile", "delete", "road")
    assert r.returncode == 0 and r.stdout == "deleted road\n", r
    assert "road" not in ctl(env, "profiles").stdout.split()
    calls = double_call(env, "Calls")
    assert [c for c in calls if c.split()[0] in ("SaveProfile", "DeleteProfile")] == [
        "SaveProfile", "SaveProfile", "SaveProfile", "DeleteProfile road"]


def test_ctl_profile_mistakes_are_one_line_naming_the_key_and_nothing_is_sent(
        helper_double: dict[str, str], tmp_path: Path) -> None:
    env = helper_double
    f = tmp_path / "road.toml"
    f.write_text(PROFILE)
    assert ctl(env, "profile", "import", str(f)).returncode == 0
    saves = len([c for c in double_call(env, "Calls") if c == "SaveProfile"])
    one_line_error(ctl(env, "profile", "set", "road", "home_agent=10.9.9.9"), "home_agent",
                   "not inside home_network")
    one_line_error(ctl(env, "profile", "set", "road", "lifetime=soon"),
                   "lifetime: must be an integer")
    one_line_error(ctl(env, "profile", "set", "road", "probe.retries=many"),
                   "probe.retries: must be a whole number")
    one_line_error(ctl(env, "profile", "set", "road", "lifetime=0"), "lifetime",
                   "between 1 and 65534")
    one_line_error(ctl(env, "profile", "set", "road", "colour=blue"), "colour",
                   "not a known setting")
    one_line_error(ctl(env, "profile", "set", "road", "probe=3"), "probe", "is a table")
    one_line_error(ctl(env, "profile", "set", "road", "lifetime"), "key=value")
    one_line_error(ctl(env, "profile", "set", "road", "name=other"), "name:", "renamed")
    secret = tmp_path / "secret.toml"
    secret.write_text(f'mn_ha_key = "hex:{CANARY}"\n' + PROFILE)
    r = ctl(env, "profile", "import", str(secret))
    one_line_error(r, "mn_ha_key", "secrets do not belong in a profile")
    assert CANARY not in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("home_address = [\n")
    one_line_error(ctl(env, "profile", "import", str(bad)), "bad.toml", "not valid TOML")
    one_line_error(ctl(env, "profile", "import", str(tmp_path / "none.toml")), "none.toml",
                   "cannot read")
    one_line_error(ctl(env, "profile", "import", str(tmp_path)), "cannot read")
    assert len([c for c in double_call(env, "Calls") if c == "SaveProfile"]) == saves
    # The helper's own refusal (it stays the judge) comes back as its one line.
    double_call(env, "Fail", "ss", ["SaveProfile", "SaveProfile: spi: 7 is reserved"])
    one_line_error(ctl(env, "profile", "import", str(f)), "spi: 7 is reserved")
    one_line_error(ctl(env, "profile", "show", "nope"), "no profile 'nope'")
    one_line_error(ctl(env, "profile", "delete", "nope"), "no profile 'nope'")


def test_ctl_profile_edit_checks_the_editors_result_before_saving(
        helper_double: dict[str, str], tmp_path: Path) -> None:
    env = helper_double
    f = tmp_path / "road.toml"
    f.write_text(PROFILE)
    assert ctl(env, "profile", "import", str(f)).returncode == 0
    good = tmp_path / "good-editor"
    good.write_text("#!/bin/sh\nsed -i 's/^spi = 256$/spi = 4096/' \"$1\"\n")
    bad = tmp_path / "bad-editor"
    bad.write_text("#!/bin/sh\nsed -i 's/^spi = .*$/spi = 7/' \"$1\"\n")
    for e in (good, bad):
        e.chmod(0o755)
    r = ctl({**env, "EDITOR": str(good), "VISUAL": ""}, "profile", "edit", "road")
    assert r.returncode == 0 and r.stdout == "saved road\n", r
    assert "spi = 4096" in ctl(env, "profile", "show", "road").stdout.splitlines()
    saves = len([c for c in double_call(env, "Calls") if c == "SaveProfile"])
    one_line_error(ctl({**env, "EDITOR": str(bad)}, "profile", "edit", "road"), "spi",
                   "reserved")
    rename = tmp_path / "rename-editor"
    rename.write_text("#!/bin/sh\nsed -i 's/^name = .*$/name = \"trip\"/' \"$1\"\n")
    rename.chmod(0o755)
    r = ctl({**env, "EDITOR": str(rename)}, "profile", "edit", "road")
    assert r.returncode == 0 and r.stdout == (
        "saved trip (road is still there: trustroamctl profile delete road)\n"), r
    saves += 1
    r = ctl({**env, "EDITOR": "true"}, "profile", "edit", "road")
    assert r.returncode == 0 and r.stdout == "road: unchanged\n", r
    assert len([c for c in double_call(env, "Calls") if c == "SaveProfile"]) == saves


def _controlling_tty() -> None:
    import fcntl
    import termios

    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """trustroamctl on a pseudo-terminal of its own (its controlling terminal, where
    getpass asks), as a person runs it."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        master, slave = os.openpty()
        self.master = master
        self.p = subprocess.Popen([sys.executable, "-m", "app.ctl", *args], env=env,
                                  cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
                                  preexec_fn=_controlling_tty)  # noqa: PLW1509
        os.close(slave)
        self.seen = b""

    def until(self, text: str, timeout: float = 20, count: int = 1) -> str:
        end = time.monotonic() + timeout
        while self.seen.count(text.encode()) < count:
            left = end - time.monotonic()
            assert left > 0, f"no {text!r} on the terminal: {self.seen!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the program closed the terminal
                    chunk = b""
                if not chunk:
                    break
                self.seen += chunk
        return self.seen.decode(errors="replace")

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def finish(self) -> tuple[int, str]:
        if self.p.poll() is None:
            self.until("\0", timeout=20)  # never sent: reads until the terminal closes
        rc = self.p.wait(10)
        os.close(self.master)
        return rc, self.seen.decode(errors="replace")


def _proc_text(pid: int) -> str:
    out = ""
    for part in ("cmdline", "environ"):
        with open(f"/proc/{pid}/{part}", "rb") as f:
            out += f.read().decode(errors="replace")
    return out


def test_connect_ask_reads_a_missing_secret_on_the_terminal_without_echo(
        helper_double: dict[str, str]) -> None:
    env = helper_double
    term = Terminal(env, "connect", "corp", "--ask")
    term.until("Mobile-Home key (hex:...) for profile corp: ")
    term.type(f"hex:{CANARY}zz")  # not hex: named, asked again, never repeated
    term.until("has characters that are not hex digits")
    term.until("for profile corp: ", count=2)  # echo is off again only from here
    process_text = _proc_text(term.p.pid)  # while it holds the secret's prompt
    term.type(CANARY)  # bare hex digits, as pasted
    rc, screen = term.finish()
    assert rc == 0 and "connected corp" in screen, screen
    assert CANARY not in screen and CANARY.lower() not in screen.lower(), screen  # no echo
    assert "Traceback" not in screen
    assert CANARY.lower() not in process_text.lower()  # never in argv or environment
    assert double_call(env, "SecretsGot") == ["mn_ha_key"]
    calls = double_call(env, "Calls")
    assert "RegisterSecretAgent /org/trustroam/ctl/agent" in calls
    assert not any(CANARY.lower() in c.lower() for c in calls)
    # The agent lived for that call only: its connection is gone with the command.
    assert double_call(env, "AskSecrets", "sas", ["corp", ["mn_ha_key"]]) == {}


def _echo_on(fd: int) -> bool:
    import termios
    return bool(termios.tcgetattr(fd)[3] & termios.ECHO)


@pytest.mark.parametrize("key", ["\x03", "\x1c"])  # Ctrl-C, Ctrl-\\
def test_connect_ask_interrupted_at_the_prompt_exits_at_once_with_echo_back_and_sends_nothing(
        helper_double: dict[str, str], key: str) -> None:
    """Review finding 4: the first Ctrl-C (or Ctrl-\\) at the prompt ends
    trustroamctl (130), puts the echo back, leaves no traceback and no core, and no
    secret is sent (what is typed afterwards goes nowhere)."""
    env = helper_double
    term = Terminal(env, "connect", "corp", "--ask")
    term.until("for profile corp: ")
    os.write(term.master, key.encode())
    try:
        term.p.wait(20)
    except subprocess.TimeoutExpired:  # the press was swallowed: a person types on
        term.type(CANARY)
        term.p.wait(20)
    echo = _echo_on(term.master)
    rc, screen = term.finish()
    assert rc == 130, (rc, screen)
    assert "Traceback" not in screen and "connected corp" not in screen, screen
    assert echo, "the terminal's echo was left off"
    assert double_call(env, "SecretsGot") == []


def test_connect_ask_non_utf8_input_is_answered_and_named_without_a_traceback(
        helper_double: dict[str, str]) -> None:
    env = helper_double
    term = Terminal(env, "connect", "corp", "--ask")
    term.until("for profile corp: ")
    os.write(term.master, b"\xff\xfe" + CANARY.encode() + b"\r")
    rc, screen = term.finish()
    assert rc == 1, (rc, screen)
    assert "Traceback" not in screen and "UnicodeDecodeError" not in screen, screen
    assert "not UTF-8" in screen, screen
    assert CANARY not in screen
    assert double_call(env, "SecretsGot") == []


def test_connect_ask_asks_nothing_when_an_agent_has_the_secret(
        helper_double: dict[str, str], tmp_path: Path) -> None:
    env = helper_double
    tray = subprocess.Popen([sys.executable, "-c", TRAY_AGENT], env=env, cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert tray.stdout is not None and tray.stdout.readline().strip() == "ready"
        term = Terminal(env, "connect", "corp", "--ask")
        rc, screen = term.finish()
        assert rc == 0 and "connected corp" in screen, screen
        assert "for profile" not in screen, screen  # the tray's agent had it
        assert double_call(env, "SecretsGot") == ["mn_ha_key"]
    finally:
        tray.kill()
        tray.wait(10)
    # No agent at all, and no --ask: the helper's refusal, in one line.
    one_line_error(ctl(env, "connect", "corp"), "no key for profile 'corp'")


TRAY_AGENT = f"""
import asyncio, sys
from dbus_fast.aio import MessageBus
from dbus_fast.constants import BusType
from dbus_fast.message import Message
from tests.secret_agent import SecretAgent

async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    bus.export("/tray/agent", SecretAgent({{"corp": {{"mn_ha_key": "hex:{"ab" * 16}"}}}}))
    await bus.call(Message(destination="org.trustroam.Helper1", path="/org/trustroam/Helper1",
                           interface="org.trustroam.Helper1", member="RegisterSecretAgent",
                           signature="o", body=["/tray/agent"]))
    print("ready", flush=True)
    await bus.wait_for_disconnect()

asyncio.run(main())
"""
