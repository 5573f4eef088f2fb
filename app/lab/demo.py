"""``trustroam-lab demo``: the whole trusted side running in the lab.

Builds the lab, starts the reference home agent on the home link, a foreign
agent on fa1 and ``trustroamd`` in the MN (on the lab's private system bus),
then walks the MN home -> t1 -> fa1 -> t2 -> home, printing what
``trustroamctl status`` shows after each move and a ping from the CN to the
home address.  ``--stay`` leaves it all running for ``trustroamctl`` and
``trustroam-lab move`` (Ctrl-C ends); otherwise it cleans up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.lab import configs
from app.lab.configs import HOME
from app.lab.world import Lab, LabError

TOUR = ("t1", "fa1", "t2", "home")


class _Proc:
    def __init__(self, node: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.log = log
        self.p = subprocess.Popen(["ip", "netns", "exec", node, *argv], env=env,
                                  stdout=log.open("w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def wait_for(self, text: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log.read_text():
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{self.log.name}: no {text!r}; see {self.log}")
            time.sleep(0.05)  # the agents report readiness only in their log

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()


def run(*, stay: bool) -> int:
    lab = Lab()
    lab.down()
    took = lab.up(at="home")
    print(f"lab up in {took:.2f} s; mobile node on the home link")
    d = Path(tempfile.mkdtemp(prefix="tr-demo-"))
    (d / "ha.toml").write_text(configs.ha_toml(d / "ha-state"))
    (d / "fa.toml").write_text(configs.fa_toml("fa1"))
    profiles, secrets = configs.write_helper_files(d, "lab")
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=lab.nm_bus(),
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    py = sys.executable
    procs: list[_Proc] = []
    try:
        procs.append(_Proc("tr-ha", [py, "-m", "app.agents.ha_cli", "--config",
                                     str(d / "ha.toml")], d / "ha.log", env))
        procs.append(_Proc("tr-fa1", [py, "-m", "app.agents.fa_cli", "--config",
                                      str(d / "fa.toml")], d / "fa.log", env))
        procs[0].wait_for("serving registrations")
        procs[1].wait_for("foreign agent on fa")
        procs.append(_Proc("tr-mn", [py, "-m", "app.service.daemon", "--profiles-dir",
                                     str(profiles), "--secrets", str(secrets),
                                     "--connect", "lab"], d / "trustroamd.log", env))
        procs[2].wait_for("mode=h", 20)
        _show(env, "home")
        for net in TOUR:
            lab.move(net)
            procs[2].wait_for(f"link-up interface=eth0 address=10.{_net_prefix(net)}", 20)
            _settle(env, "f" if net == "fa1" else ("h" if net == "home" else "c"))
            _show(env, net)
        print(f"logs in {d}")
        if stay:
            print("everything keeps running: try `trustroamctl status` with "
                  f"DBUS_SYSTEM_BUS_ADDRESS={lab.nm_bus()}, or `trustroam-lab move t2`; "
                  "Ctrl-C ends")
            procs[2].p.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            p.stop()
        lab.down()
    return 0


def _net_prefix(net: str) -> str:
    return {"home": "20.1.", "t1": "30.1.", "t2": "30.2.", "fa1": "40.1."}[net]


def _ctl(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "app.ctl", *args], env=env,
                         capture_output=True, text=True, timeout=20, check=False)
    return out.stdout + out.stderr


def _settle(env: dict[str, str], mode: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while f'"Mode": "{mode}"' not in _ctl(env, "status", "--json") or (
            '"State": "trusted"' not in _ctl(env, "status", "--json")):
        if time.monotonic() > deadline:
            raise LabError(f"the helper did not reach mode {mode}: "
                           + _ctl(env, "status"))
        time.sleep(0.1)  # polling the D-Bus status, as a person would


def _show(env: dict[str, str], net: str) -> None:
    print(f"\n== on {net} ==")
    print(_ctl(env, "status").rstrip())
    ping = subprocess.run(["ip", "netns", "exec", "tr-cn", "ping", "-c", "3", "-i", "0.2",
                           "-q", HOME], capture_output=True, text=True, check=False)
    summary = next((ln for ln in ping.stdout.splitlines() if "packets transmitted" in ln),
                   ping.stderr.strip())
    print(f"  CN -> home address {HOME}: {summary}")
