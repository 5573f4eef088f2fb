"""Run the real ``trustroam-ha`` as a subprocess on loopback for tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.lines import Lines

ROOT = Path(__file__).resolve().parent.parent

BASE_CONFIG = """
[home_agent]
address = "10.20.1.1"
listen = "127.0.0.1"
port = {port}
home_network = "10.20.1.0/24"
max_lifetime = {max_lifetime}
state_dir = "{state_dir}"
dataplane = "none"
sync = "{sync}"
{extra}

[[mobile_nodes]]
home_address = "10.20.1.10"
nai = "alice@corp.example"
spi = 256
key = "hex:00112233445566778899aabbccddeeff"

[[mobile_nodes]]
home_address = "10.20.1.11"
nai = "bob@corp.example"
spi = 257
algorithm = "keyed-md5"
key_file = "bob.key"
replay = "nonce"
"""


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.agents.ha_cli", *args], env=env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


class HaProcess:
    def __init__(self, directory: Path, *, max_lifetime: int = 600, extra: str = "",
                 sync: str = "full", mobile_nodes: str = "", log_level: str = "info") -> None:
        self.dir = directory
        self.port = free_udp_port()
        self.config = directory / "ha.toml"
        (directory / "bob.key").write_text("hex:ffeeddccbbaa99887766554433221100\n")
        self.config.write_text(BASE_CONFIG.format(
            port=self.port, max_lifetime=max_lifetime, state_dir=directory / "state",
            extra=extra, sync=sync) + mobile_nodes)
        self.log_level = log_level
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self._lines: Lines | None = None

    def start(self, timeout: float = 20) -> HaProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.agents.ha_cli", "--config", str(self.config),
             "--log-level", self.log_level], env=env(), stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self._lines = Lines(self.proc.stderr)
        self.log = self._lines.seen
        self.wait_log("serving registrations", timeout)
        return self

    def wait_log(self, needle: str, timeout: float = 10) -> str:
        """Read the HA's log until a line contains ``needle`` (no fixed sleeps)."""
        assert self._lines is not None
        try:
            return self._lines.wait(needle, timeout)[-1]
        except TimeoutError:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("home agent exited:\n" + "".join(self.log)) from None
            raise

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        rc = self.proc.wait(10)
        self.proc = None
        return rc

    def bindings(self) -> list[dict[str, object]]:
        out = cli("bindings", "--json", "--config", str(self.config))
        assert out.returncode == 0, out.stderr
        rows: list[dict[str, object]] = json.loads(out.stdout)
        return rows

    def exchange(self, data: bytes, timeout: float = 3.0) -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(data, ("127.0.0.1", self.port))
            reply, _ = s.recvfrom(4096)
            return reply
