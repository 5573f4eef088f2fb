"""iperf3 between two network namespaces, as both benchmarks run it.

TCP: Gbit/s received.  UDP: 64-byte payloads, offered at paced rates and then
unpaced; the best rate received counts (unpaced, the iperf3 sender takes a
whole core of the two and starves the forwarders being measured).  iperf3
gets 4 MiB socket buffers (``-w``), else its own receiver drops
(UdpRcvbufErrors) before the path under test does.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tests.lab.procs import Proc

RATES_KPPS = (60, 80, 100, 120, 0)
"""Offered UDP rates in thousands of packets per second; 0 = unpaced."""


@dataclass(frozen=True)
class Udp:
    pps: float
    """packets received per second"""
    lost_pct: float
    offered_kpps: int
    packets_per_cpu_second: float | None = None
    """of the processes given as ``cpu_of`` (their kernel work included), at that rate"""


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system time of these processes so far (softirq work done in their
    syscalls, such as a veth delivery, is charged to them)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def run(client_ns: str, server_ns: str, server_ip: str, seconds: float, *,
        udp_kpps: int | None = None) -> dict[str, float]:
    """One iperf3 run; ``udp_kpps`` None = TCP, else UDP at that rate (0 = unpaced)."""
    srv = Proc(server_ns, "iperf3", "-s", "-1", "--forceflush", "-B", server_ip)
    srv.wait("Server listening")
    args = ["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-t", str(seconds),
            "-w", "4M", "--json"]
    if udp_kpps is not None:
        args += ["-u", "-l", "64", "-b", f"{udp_kpps * 64 * 8}K" if udp_kpps else "0"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30, check=True)
    srv.stop()
    end = json.loads(out.stdout)["end"]
    if udp_kpps is None:
        return {"gbit": end["sum_received"]["bits_per_second"] / 1e9}
    s = end["sum"]
    return {"pps": (s["packets"] - s["lost_packets"]) / s["seconds"],
            "lost_pct": s["lost_percent"]}


def tcp_gbit(client_ns: str, server_ns: str, server_ip: str, seconds: float) -> float:
    return run(client_ns, server_ns, server_ip, seconds)["gbit"]


def udp_best(client_ns: str, server_ns: str, server_ip: str, seconds: float,
             cpu_of: Sequence[int] = ()) -> Udp:
    best: Udp | None = None
    for k in RATES_KPPS:
        cpu0, t0 = cpu_seconds(cpu_of), time.monotonic()
        r = run(client_ns, server_ns, server_ip, seconds, udp_kpps=k)
        cpu, wall = cpu_seconds(cpu_of) - cpu0, time.monotonic() - t0
        # Packets over the CPU the processes used meanwhile (iperf3's set-up
        # seconds included in both, at idle).
        per_cpu = r["pps"] * seconds / cpu if cpu_of and cpu > 0 and wall > 0 else None
        if best is None or r["pps"] > best.pps:
            best = Udp(r["pps"], r["lost_pct"], k, per_cpu)
    assert best is not None
    return best
