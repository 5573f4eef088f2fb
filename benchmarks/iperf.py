"""iperf3 between two network namespaces, as both benchmarks run it.

TCP: Gbit/s received.  UDP: 64-byte payloads, offered at paced rates and then
unpaced; the best rate received counts (unpaced, the iperf3 sender takes a
whole core of the two and starves the forwarders being measured).  iperf3
gets 4 MiB socket buffers (``-w``), else its own receiver drops
(UdpRcvbufErrors) before the path under test does.
"""

from __future__ import annotations

import json
import subprocess
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


def udp_best(client_ns: str, server_ns: str, server_ip: str, seconds: float) -> Udp:
    runs = [(k, run(client_ns, server_ns, server_ip, seconds, udp_kpps=k)) for k in RATES_KPPS]
    k, best = max(runs, key=lambda r: r[1]["pps"])
    return Udp(best["pps"], best["lost_pct"], k)
