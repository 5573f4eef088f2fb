"""Processes in lab namespaces whose output a test reads line by line."""

from __future__ import annotations

import subprocess

from app.lab.configs import HOME
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
