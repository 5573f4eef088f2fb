"""Handovers across the trust boundary (mode mc) for trustroamd in the lab (root).

    sudo python benchmarks/mc_handover_bench.py [--cycles 10]

The real helper with a VPN profile (gw1), the lab's charon on both ends (VPN
gateways reachable only from outside), the HA.  Each cycle moves the MN
t1 -> pub -> nat -> pub -> t1 -> pub -> home -> t1: c->mc (a new VPN), mc->mc
(MOBIKE, behind the NAT and back), mc->c, c->mc, mc->h, h->c.  The CN sends a
UDP stream (one packet per ms) to the home address; a receiver bound to it in
the MN timestamps arrivals.  Handover = the helper's link-up until the first
packet of the stream delivered after it.  Next to it, from the same run: the
RTT to the home agent (from t1) and to the gateway (from pub), the VPN's
set-up (link-up to charon's CHILD SA up, the helper's ``vpn-up``) and charon's
own MOBIKE delay (link-up to its ``ike-update``, the helper's ``mobike``).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.lab.configs import HA, ha_toml, write_helper_files  # noqa: E402
from app.lab.world import Lab  # noqa: E402
from app.net.gate_rules import HELPER_MARK  # noqa: E402
from benchmarks.handover_bench import history, start_stream  # noqa: E402
from tests.lab.conftest import ns_exec  # noqa: E402
from tests.lab.procs import MN_VICI, Proc, wait_history  # noqa: E402

GW1 = "172.16.0.11"
MOVES = (("pub", "c->mc"), ("nat", "mc->mc"), ("pub", "mc->mc"), ("t1", "mc->c"),
         ("pub", "c->mc"), ("home", "mc->h"), ("t1", "h->c"))
MODE_AT = {"pub": "mc", "nat": "mc", "t1": "c", "home": "h"}


def ping_avg(node: str, target: str, mark: int | None = None) -> float:
    """Average of 20 pings; ``mark``: as the helper's own sockets (the gate lets only
    its echo to the gateway out of an untrusted link)."""
    opts = ["-m", str(mark)] if mark is not None else []
    out = ns_exec(node, "ping", *opts, "-c", "20", "-i", "0.05", "-q", target).stdout
    line = next(ln for ln in out.splitlines() if "min/avg" in ln)
    return float(line.split("=")[1].split("/")[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("mc_handover_bench: needs root")
    lab = Lab()
    lab.down()
    lab.up(at="t1", gw_inside=False)
    d = Path(tempfile.mkdtemp(prefix="tr-mc-bench-"))
    (d / "ha.toml").write_text(ha_toml(d / "ha"))
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1,))
    bus = lab.nm_bus()
    procs: list[Proc] = []
    try:
        ha = Proc("tr-ha", sys.executable, "-m", "app.agents.ha_cli", "--config",
                  str(d / "ha.toml"))
        procs.append(ha)
        ha.wait("serving registrations")
        helper = Proc("tr-mn", sys.executable, "-m", "app.service.daemon", "--profiles-dir",
                      str(profiles), "--secrets", str(secrets), "--connect", "corp",
                      "--links", "rtnetlink", "--vici-socket", str(MN_VICI),
                      extra_env={"DBUS_SYSTEM_BUS_ADDRESS": bus})
        procs.append(helper)
        helper.wait("serving org.trustroam.Helper1")
        monitor = Proc("tr-mn", sys.executable, "-m", "app.ctl", "monitor",
                       extra_env={"DBUS_SYSTEM_BUS_ADDRESS": bus})
        procs.append(monitor)
        world: dict[str, object] = {"bus": bus, "monitor": monitor}
        wait_history(world, 0, "mode", {"mode": "c"}, timeout=30)
        rtt_ha = ping_avg("tr-mn", HA)
        t = time.time()
        lab.move("pub")
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)
        rtt_gw = ping_avg("tr-mn", GW1, mark=HELPER_MARK)
        t = time.time()
        lab.move("t1")
        wait_history(world, t, "mode", {"mode": "c"}, timeout=30)

        arrivals, rx, tx = start_stream(d, procs)
        t_start = time.time()
        for _ in range(args.cycles):
            for net, kind in MOVES:
                t = time.time()
                lab.move(net)
                if kind == "mc->mc":
                    wait_history(world, t, "mobike", timeout=30)
                else:
                    wait_history(world, t, "mode", {"mode": MODE_AT[net]}, timeout=30)
                time.sleep(0.4)  # the stream settles on the new path before the next move
        tx.stop()
        rx.stop()
        hist = asyncio.run(history(bus))
        rx_times = sorted(float(x) for x in arrivals.read_text().split())
    finally:
        for p in reversed(procs):
            p.stop()
        lab.down()

    ups = [t for t, k, _ in hist if k == "link-up" and t >= t_start]
    results: dict[str, list[float]] = {kind: [] for _, kind in MOVES}
    setup: list[float] = []
    mobike: list[float] = []
    over_setup: list[float] = []
    for i, t_up in enumerate(ups):
        kind = MOVES[i % len(MOVES)][1]
        nxt = ups[i + 1] if i + 1 < len(ups) else float("inf")
        j = bisect.bisect_right(rx_times, t_up)
        if j >= len(rx_times):
            continue
        ms = (rx_times[j] - t_up) * 1000
        results[kind].append(ms)
        within = [(t, k) for t, k, _ in hist if t_up <= t < nxt]
        if kind == "c->mc":
            up = next((t for t, k in within if k == "vpn-up"), None)
            if up is not None:
                setup.append((up - t_up) * 1000)
                over_setup.append(ms - (up - t_up) * 1000)
        if kind == "mc->mc":
            moved = next((t for t, k in within if k == "mobike"), None)
            if moved is not None:
                mobike.append((moved - t_up) * 1000)

    def med(v: list[float]) -> str:
        return f"{statistics.median(v):.1f} ms" if v else "-"

    def worst(v: list[float]) -> str:
        return f"{max(v):.1f} ms" if v else "-"

    floor = (statistics.median(mobike) if mobike else 100.0) + rtt_gw
    vpn_setup = statistics.median(setup) if setup else float("nan")
    targets = {"mc->mc": f"≤ {floor + 10:.1f} ms (MOBIKE {floor - rtt_gw:.1f} + RTT gw + 10)",
               "mc->c": f"≤ {rtt_ha + 15:.1f} ms", "mc->h": f"≤ {rtt_ha + 15:.1f} ms",
               "h->c": f"≤ {rtt_ha + 15:.1f} ms",
               "c->mc": f"≤ {vpn_setup + rtt_gw + 15:.1f} ms (set-up {vpn_setup:.1f} + RTT + 15)"}
    print(f"RTT to the home agent (from t1): {rtt_ha:.3f} ms; to the gateway (from pub): "
          f"{rtt_gw:.3f} ms")
    print(f"VPN set-up (link-up -> CHILD SA up), median {med(setup)}, worst {worst(setup)}; "
          f"charon's MOBIKE (link-up -> ike-update), median {med(mobike)}, "
          f"worst {worst(mobike)}")
    print(f"c->mc beyond the VPN's set-up: median {med(over_setup)}, worst {worst(over_setup)}")
    print("| transition | moves | handover median | worst | target |")
    print("|---|---:|---:|---:|---|")
    for kind in dict.fromkeys(k for _, k in MOVES):
        v = results[kind]
        print(f"| {kind} | {len(v)} | {med(v)} | {worst(v)} | {targets[kind]} |")


if __name__ == "__main__":
    main()
