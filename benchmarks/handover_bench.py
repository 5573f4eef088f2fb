"""Handover benchmark for trustroamd in the lab (root).

    sudo python benchmarks/handover_bench.py [--cycles 20]

Each cycle moves the MN t1 -> t2 -> home -> t1 -> fa1 -> t1, i.e. one move of
each trusted transition: c->c, c->h, h->c, c->f, f->c.  The CN sends a UDP
stream (1 packet per ms) to the home address; a receiver bound to the home
address in the MN timestamps what arrives.  Handover = the helper's link-up
(the address appeared) until the first packet of the CN's stream delivered
after it, i.e. on the new path; clocks are one clock (namespaces of one host).
Next to it: the RTT to the home agent (ping from the MN on t1, same run), the
helper's own LastHandoverMs (link up until the new path is configured and the
gate open), its RSS and its idle CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.dbus import BusType, MessageBus  # noqa: E402
from app.lab.configs import HA, HOME, fa_toml, ha_toml, write_helper_files  # noqa: E402
from app.lab.world import Lab  # noqa: E402
from tests.dbus_client import call  # noqa: E402
from tests.lab.conftest import ns_exec  # noqa: E402
from tests.lab.procs import Proc  # noqa: E402

MOVES = (("t2", "c->c"), ("home", "c->h"), ("t1", "h->c"), ("fa1", "c->f"), ("t1", "f->c"))

SENDER = f"""
import socket, struct, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = 0
next_t = time.monotonic()
while True:
    n += 1
    try:
        s.sendto(struct.pack("!Q", n), ("{HOME}", 9000))
    except OSError:
        pass
    next_t += 0.001
    d = next_t - time.monotonic()
    if d > 0:
        time.sleep(d)
"""

RECEIVER = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND: the home address comes and goes
s.bind(("{HOME}", 9000))
out = open(sys.argv[1], "w")
import signal
signal.signal(signal.SIGTERM, lambda *_: (out.flush(), sys.exit(0)))  # keep the last arrivals
print("RECEIVING", flush=True)
while True:
    s.recv(64)
    out.write(f"{{time.time():.6f}}\\n")
"""


def start_stream(d: Path, procs: list[Proc]) -> tuple[Path, Proc, Proc]:
    """The CN's 1 ms stream to the home address and the MN's timestamping receiver
    (both added to ``procs``); returns the arrivals file, the receiver, the sender."""
    arrivals = d / "arrivals.txt"
    rx = Proc("tr-mn", sys.executable, "-c", RECEIVER, str(arrivals))
    procs.append(rx)
    rx.wait("RECEIVING")
    tx = Proc("tr-cn", sys.executable, "-c", SENDER)
    procs.append(tx)
    return arrivals, rx, tx


async def history(bus_address: str) -> list[tuple[float, str, dict[str, str]]]:
    os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus_address
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    ok, body = await call(bus, "GetHistory", "u", [100000])
    bus.disconnect()
    assert ok, body
    return [(float(t), str(k), dict(d)) for t, k, d in body[0]]


def pid_of(pattern: str) -> int:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU sampling")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("handover_bench: needs root")
    lab = Lab()
    lab.down()
    lab.up(at="t1")
    d = Path(tempfile.mkdtemp(prefix="tr-bench-"))
    (d / "ha.toml").write_text(ha_toml(d / "ha"))
    (d / "fa.toml").write_text(fa_toml("fa1"))
    profiles, secrets = write_helper_files(d, "corp")
    bus = lab.nm_bus()
    procs: list[Proc] = []
    try:
        ha = Proc("tr-ha", sys.executable, "-m", "app.agents.ha_cli", "--config",
                  str(d / "ha.toml"))
        fa = Proc("tr-fa1", sys.executable, "-m", "app.agents.fa_cli", "--config",
                  str(d / "fa.toml"))
        procs += [ha, fa]
        ha.wait("serving registrations")
        fa.wait("foreign agent on fa")
        helper = Proc("tr-mn", sys.executable, "-m", "app.service.daemon", "--profiles-dir",
                      str(profiles), "--secrets", str(secrets), "--connect",
                      "corp", "--links", "rtnetlink",
                      extra_env={"DBUS_SYSTEM_BUS_ADDRESS": bus})
        procs.append(helper)
        helper.wait("serving org.trustroam.Helper1")
        helper_pid = pid_of("app.service.daemon --profiles-dir " + str(d))
        monitor = Proc("tr-mn", sys.executable, "-m", "app.ctl", "monitor",
                       extra_env={"DBUS_SYSTEM_BUS_ADDRESS": bus})
        procs.append(monitor)
        if "mode c" not in "".join(monitor.wait("trustroam: ")):
            monitor.wait("Mode=c", 15)
        ping = ns_exec("tr-mn", "ping", "-c", "20", "-i", "0.05", "-q", HA)
        rtt_line = next(ln for ln in ping.stdout.splitlines() if "min/avg" in ln)
        rtt_avg = float(rtt_line.split("=")[1].split("/")[1])

        arrivals, rx, tx = start_stream(d, procs)
        t_start = time.time()
        for _ in range(args.cycles):
            for net, _kind in MOVES:
                lab.move(net)
                want = "f" if net == "fa1" else ("h" if net == "home" else "c")
                while True:
                    tokens = monitor.wait(f"Mode={want}", 30)[-1].split()
                    if f"Mode={want}" in tokens:
                        break
                time.sleep(0.3)  # let the stream settle on the new path before moving on
        tx.stop()
        rx.stop()
        hist = asyncio.run(history(bus))
        rx_times = sorted(float(x) for x in arrivals.read_text().split())

        # Idle: no moves, stream stopped.
        cpu0, t0 = cpu_seconds(helper_pid), time.monotonic()
        time.sleep(args.idle)
        idle_pct = (cpu_seconds(helper_pid) - cpu0) / (time.monotonic() - t0) * 100
        rss = rss_mb(helper_pid)
    finally:
        for p in reversed(procs):
            p.stop()
        lab.down()

    ups = [t for t, k, _ in hist if k == "link-up" and t >= t_start]
    own = [(t, float(dd["ms"])) for t, k, dd in hist if k == "handover" and t >= t_start]
    results: dict[str, list[float]] = {kind: [] for _, kind in MOVES}
    helper_ms: dict[str, list[float]] = {kind: [] for _, kind in MOVES}
    for i, t_up in enumerate(ups):
        kind = MOVES[i % len(MOVES)][1]
        j = bisect.bisect_right(rx_times, t_up)
        if j < len(rx_times):
            results[kind].append((rx_times[j] - t_up) * 1000)
        mine = [ms for t, ms in own if t >= t_up]
        if mine:
            helper_ms[kind].append(mine[0])
    print(f"RTT to the home agent (ping from t1, avg of 20): {rtt_avg:.3f} ms")
    print("| transition | moves | handover median | worst | helper's own median | target "
          "(1 RTT + 15 ms) |")
    print("|---|---|---|---|---|---|")
    for _, kind in MOVES:
        v, h = results[kind], helper_ms[kind]
        if not v:
            print(f"| {kind} | 0 | - | - | - | - |")
            continue
        print(f"| {kind} | {len(v)} | {statistics.median(v):.1f} ms | {max(v):.1f} ms | "
              f"{statistics.median(h) if h else float('nan'):.1f} ms | "
              f"{rtt_avg + 15:.1f} ms |")
    print(f"helper RSS after {len(ups)} moves: {rss:.1f} MB; idle CPU over {args.idle:.0f} s: "
          f"{idle_pct:.3f} %")


if __name__ == "__main__":
    main()
