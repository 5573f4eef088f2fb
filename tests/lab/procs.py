"""Processes in lab namespaces whose output a test reads line by line."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.lab import charon as lab_charon
from app.lab.configs import HOME, fa_toml, ha_toml, write_helper_files
from app.lab.topology import MN, MN_IFACE
from app.lab.world import CHARON_DIR, Lab
from tests.haproc import env
from tests.lines import Lines

TCP_ECHO_SERVER = f"""
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("{HOME}", 7000)); s.listen(); print("LISTENING", flush=True)
c, _ = s.accept()
while (d := c.recv(4096)):
    c.sendall(d)
"""
"""A TCP echo server on the home address, port 7000, for one connection (run in tr-mn)."""

TCP_CLIENT = f"""
import os, socket, sys, time
c = socket.create_connection(("{HOME}", 7000), timeout=60)
print("CONNECTED", flush=True)
n = 0
while not os.path.exists(sys.argv[1]):
    msg = f"hello {{n}}".encode()
    c.sendall(msg)
    got = b""
    while len(got) < len(msg):
        got += c.recv(4096)
    assert got == msg, (got, msg)
    n += 1
    print(f"ECHO {{n}}", flush=True)
    time.sleep(0.05)  # a paced stream, not a wait for an event
print(f"TCP OK {{n}}", flush=True)
"""
"""The correspondent's side (run in tr-cn): echoes through the home address until
the file named by its argument exists, then prints "TCP OK n"."""


class Proc:
    """A process in a lab namespace whose output is read line by line."""

    def __init__(self, node: str, *argv: str, stderr_lines: bool = False,
                 extra_env: dict[str, str] | None = None) -> None:
        self.p = subprocess.Popen(["ip", "netns", "exec", node, *argv],
                                  env={**env(), **(extra_env or {})},
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE if stderr_lines else subprocess.STDOUT,
                                  text=True)
        assert self.p.stdout is not None
        self.out = Lines(self.p.stdout)
        self.err = Lines(self.p.stderr) if stderr_lines and self.p.stderr else None

    def wait(self, needle: str, timeout: float = 15) -> list[str]:
        return self.out.wait(needle, timeout)

    def stop(self) -> None:
        self.p.terminate()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def capture(node: str, iface: str, bpf: str) -> Proc:
    cap = Proc(node, "tcpdump", "-l", "-n", "-i", iface, bpf, stderr_lines=True)
    assert cap.err is not None
    cap.err.wait("listening on")
    return cap


MN_VICI = lab_charon.directory(CHARON_DIR, "tr-mn") / "charon.vici"
"""The MN's charon (the lab starts it), which trustroamd drives for mode mc."""


@contextmanager
def helper_world(bus: str, d: Path, profiles: Path, secrets: Path, *,
                 fa_advert_interval: float = 1.0, ha_extra: str = "",
                 ha_env: dict[str, str] | None = None, replay: str = "timestamp",
                 helper_prefix: tuple[str, ...] = (), helper_args: tuple[str, ...] = ()
                 ) -> Iterator[dict[str, object]]:
    """The HA, the FA on fa1 and trustroamd (profile ``corp`` connected), and a
    ``trustroamctl monitor`` whose lines are the helper's property changes.
    ``helper_prefix``, ``helper_args``: what wraps and extends trustroamd's command."""
    (d / "ha.toml").write_text(ha_toml(d / "ha-state", ha_extra, replay))
    (d / "fa.toml").write_text(fa_toml("fa1", advert_interval=fa_advert_interval))
    # DEBUG: renewals (a registration to the same care-of address, e.g. the same
    # TIA after the CHILD SA came back) are logged only at DEBUG; a failure dump
    # must show whether the home agent received and answered them.
    ha = Proc("tr-ha", sys.executable, "-m", "app.agents.ha_cli", "--config",
              str(d / "ha.toml"), "--log-level", "debug", extra_env=ha_env)
    fa = Proc("tr-fa1", sys.executable, "-m", "app.agents.fa_cli", "--config",
              str(d / "fa.toml"))
    helper = monitor = None
    try:
        ha.wait("serving registrations")
        fa.wait("foreign agent on fa")
        helper = Proc("tr-mn", *helper_prefix, sys.executable, "-m", "app.service.daemon",
                      "--profiles-dir", str(profiles), "--secrets", str(secrets), "--connect",
                      "corp", "--links", "rtnetlink", "--vici-socket", str(MN_VICI),
                      *helper_args, extra_env={"DBUS_SYSTEM_BUS_ADDRESS": bus})
        helper.wait("serving org.trustroam.Helper1")
        monitor = Proc("tr-mn", sys.executable, "-m", "app.ctl", "monitor",
                       extra_env={"DBUS_SYSTEM_BUS_ADDRESS": bus})
        world_procs.update(helper=helper, ha=ha, fa=fa)
        yield {"bus": bus, "helper": helper, "monitor": monitor, "dir": d,
               "profiles": profiles, "ha": ha, "fa": fa}
    finally:
        world_procs.clear()
        for p in (monitor, helper, fa, ha):
            if p is not None:
                p.stop()


GW1 = "172.16.0.11"
"""The lab's first VPN gateway (the mc profiles' only one)."""


def vpn_helper_world(lab: Lab, d: Path) -> Iterator[dict[str, object]]:
    """:func:`helper_world` with profile ``corp`` going through gw1 (mode mc): the
    module fixture of the lab tests in mc."""
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1,))
    with helper_world(lab.nm_bus(), d, profiles, secrets) as w:
        yield w


def mac_of_mn() -> str:
    """The mobile node's link-layer address (forged frames are sent to it)."""
    out = subprocess.run(["ip", "-n", MN, "-br", "link", "show", MN_IFACE],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[2]


def history(world: dict[str, object], n: int = 200) -> list[tuple[float, str, dict[str, str]]]:
    """The helper's last ``n`` history entries: (time, kind, details)."""
    from tests.dbus_client import call, run_as
    ok, value = run_as(None, str(world["bus"]), lambda bus: call(bus, "GetHistory", "u", [n]))
    assert ok, value
    return [(float(t), str(k), dict(v)) for t, k, v in value[0]]


world_procs: dict[str, Proc] = {}
"""The current :func:`helper_world`'s processes, for :func:`dump_world`."""


def dump_world(why: str) -> None:
    """Print (pytest shows it on failure) what the next failure needs to tell its
    cause: the helper's, HA's and FA's last log lines, and the MN's addresses,
    table 220, rules, sockets and SAs as the kernel and charon see them now."""
    print(f"===== world at failure: {why}", flush=True)
    for name, n in (("helper", 120), ("ha", 60), ("fa", 20)):
        p = world_procs.get(name)
        if p is not None:
            print(f"----- {name} log (last {n} lines)\n" + "".join(p.out.printed[-n:]))
    for cmd in (["ip", "-n", MN, "-4", "addr"], ["ip", "-n", MN, "route", "show", "table", "220"],
                ["ip", "-n", MN, "rule"], ["ip", "netns", "exec", MN, "ss", "-uanp"],
                ["ip", "-n", MN, "xfrm", "policy"], ["ip", "-n", MN, "xfrm", "state"],
                ["swanctl", "--list-sas", "--uri", f"unix://{MN_VICI}"],
                ["swanctl", "--list-sas", "--uri",
                 f"unix://{lab_charon.directory(CHARON_DIR, 'tr-gw1') / 'charon.vici'}"],
                ["ip", "-n", "tr-ha", "route", "get", "10.99.1.1"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        print(f"----- {' '.join(cmd)}\n{r.stdout}{r.stderr}", flush=True)
    for node in (MN, "tr-gw1"):
        log_file = lab_charon.directory(CHARON_DIR, node) / "charon.log"
        with contextlib.suppress(OSError):
            lines = log_file.read_text(errors="replace").splitlines()[-150:]
            print(f"----- {log_file} (last 150 lines)\n" + "\n".join(lines), flush=True)


def wait_history(world: dict[str, object], since: float, kind: str,
                 match: dict[str, str] | None = None, timeout: float = 15
                 ) -> dict[str, str]:
    """The first history entry of ``kind`` (with ``match``'s values) after ``since``;
    woken by the monitor's next line (a property change), not by a poll interval."""
    deadline = time.monotonic() + timeout
    monitor = world["monitor"]
    assert isinstance(monitor, Proc)
    while time.monotonic() < deadline:
        for t, k, d in history(world, 60):
            if t >= since and k == kind and all(d.get(a) == b for a, b in (match or {}).items()):
                return d
        with contextlib.suppress(TimeoutError):
            monitor.wait("", timeout=max(0.05, min(1.0, deadline - time.monotonic())))
    dump_world(f"no {kind} {match or ''} since {since}")
    raise AssertionError(f"no {kind} {match or ''} since {since}: {history(world, 60)}")


@contextmanager
def echo_session(directory: Path) -> Iterator[Proc]:
    """A TCP session from the CN to the home address (TCP_ECHO_SERVER in the MN,
    TCP_CLIENT in the CN), yielded once it echoed three times; on a clean exit the
    client must end it with "TCP OK"."""
    server = Proc("tr-mn", sys.executable, "-c", TCP_ECHO_SERVER)
    stop = directory / "stop-tcp"
    client = None
    try:
        server.wait("LISTENING")
        client = Proc("tr-cn", sys.executable, "-c", TCP_CLIENT, str(stop))
        client.wait("ECHO 3")
        yield client
        stop.touch()
        client.wait("TCP OK", timeout=30)
    finally:
        stop.touch()
        server.stop()
        if client is not None:
            client.stop()


def carries_data_again(client: Proc, timeout: float = 30) -> None:
    """The session echoes again: lines that arrive after this call."""
    before = len(client.out.seen)
    while len(client.out.seen) <= before + 2:
        client.wait("ECHO", timeout=timeout)
