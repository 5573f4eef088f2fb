"""The direct registration socket against charon-like XFRM policies, judged by the kernel.

RFC 5266 3.4: the direct request goes "without any VPN encapsulation", and only its
direct answer proves trust.  With kernel ESP, charon's policies take whatever their
selectors match; the driver's direct socket carries a socket policy that bypasses
them both ways.  In a private network namespace (loopback only, its IPsec exemption
lifted) an XFRM policy that demands ESP between two addresses stands in for
charon's: a plain socket's datagram is held by it (the control), the direct
socket's goes through.  This kernel has no ESP, so no SA exists: a datagram the
policy takes is never delivered.

No waiting for what does not come: after the datagram under test, a marker datagram
from an address no policy names follows on loopback, which delivers in order; the
first one read tells whether the datagram under test got through.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requirements import require_root

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = r"""
import socket, subprocess, sys
from ipaddress import IPv4Address
from app.mn.sockets import direct_socket

direction, kind = sys.argv[1], sys.argv[2]
A, B, OTHER = "10.9.0.1", "10.9.0.2", "10.9.0.3"
def ip(*a):
    subprocess.run(["ip", *a], check=True)
ip("link", "set", "lo", "up")
# Loopback is exempt from IPsec by default; here it stands for the physical link.
for knob in ("disable_xfrm", "disable_policy"):
    with open(f"/proc/sys/net/ipv4/conf/lo/{knob}", "w") as f:
        f.write("0")
for a in (A, B, OTHER):
    ip("addr", "add", a + "/32", "dev", "lo")
# As charon installs them: A -> B only through an ESP tunnel to a gateway.
ip("xfrm", "policy", "add", "src", A + "/32", "dst", B + "/32", "dir", direction,
   "tmpl", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "mode", "tunnel")

def plain(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 0))
    return s

def made(addr):
    return direct_socket("lo", IPv4Address(addr)) if kind == "direct" else plain(addr)

tx, rx = (made(A), plain(B)) if direction == "out" else (plain(A), made(B))
rx.setblocking(True)
rx.settimeout(30)  # only against a hang: the marker always comes
try:
    tx.sendto(b"under-test", (B, rx.getsockname()[1]))
except OSError as e:  # the policy's refusal may also be said at once
    print("SEND-REFUSED", e.errno, flush=True)
plain(OTHER).sendto(b"marker", (B, rx.getsockname()[1]))
print("FIRST", rx.recv(100).decode(), flush=True)
"""


def first_datagram(direction: str, kind: str) -> str:
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", SCRIPT, direction, kind],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), check=False)
    assert out.returncode == 0, out.stderr
    first = next(line for line in out.stdout.splitlines() if line.startswith("FIRST"))
    return first.split()[1]


@pytest.fixture(autouse=True)
def _root() -> None:
    require_root("network namespaces and XFRM policies need root")


@pytest.mark.parametrize("direction", ["out", "in"])
def test_a_plain_socket_is_taken_by_the_policy_the_control(direction: str) -> None:
    assert first_datagram(direction, "plain") == "marker"


def test_rfc5266_3_4_the_direct_request_leaves_outside_every_ipsec_policy() -> None:
    assert first_datagram("out", "direct") == "under-test"


def test_rfc5266_3_4_the_direct_socket_carries_its_own_inbound_ipsec_policy() -> None:
    """The inbound half: a clear datagram an inbound policy would refuse is the
    direct socket's own business; its policy (no template) is also what makes the
    kernel refuse anything decrypted from a tunnel-mode SA (app.net.ipsec_bypass)."""
    assert first_datagram("in", "direct") == "under-test"
