"""Known-untrusted -> mc against unknown -> mc (RFC 5266 5), trustroamd in the lab (root).

    sudo python benchmarks/known_networks_bench.py [--cycles 10]

The real helper with a VPN profile (gw1) and ``[probe] skip_known_untrusted``,
the lab's charon on both ends, the HA.  The MN moves t1 -> pub ``--cycles``
times; the first visit to pub is an unknown network (probed), the others known
untrusted (no probe).  Per visit, from the helper's history: link-up -> the
first ``mode`` entry in state untrusted (the decision the user sees), link-up
-> mode mc, and the direct probes sent in clear.  The identity's ARP is in
both: link-up is logged after it.  Then the same with the option off (every
visit unknown).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.lab.configs import ha_toml, write_helper_files  # noqa: E402
from app.lab.world import Lab  # noqa: E402
from benchmarks.handover_bench import history  # noqa: E402
from tests.lab.procs import MN_VICI, Proc, wait_history  # noqa: E402

GW1 = "172.16.0.11"


def run(lab: Lab, skip: bool, cycles: int) -> list[tuple[float, float, int]]:
    """(decision ms, mc ms, direct probes) per visit to pub."""
    d = Path(tempfile.mkdtemp(prefix="tr-known-bench-"))
    (d / "ha.toml").write_text(ha_toml(d / "ha"))
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1,))
    f = profiles / "corp.toml"
    f.write_text(f.read_text().replace(
        "retries = 1\n", f"retries = 1\nskip_known_untrusted = {str(skip).lower()}\n", 1))
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
                      "--state-dir", str(d / "state"),
                      extra_env={"DBUS_SYSTEM_BUS_ADDRESS": bus})
        procs.append(helper)
        helper.wait("serving org.trustroam.Helper1")
        monitor = Proc("tr-mn", sys.executable, "-m", "app.ctl", "monitor",
                       extra_env={"DBUS_SYSTEM_BUS_ADDRESS": bus})
        procs.append(monitor)
        world: dict[str, object] = {"bus": bus, "monitor": monitor}
        wait_history(world, 0, "mode", {"mode": "c"}, timeout=30)
        visits = []
        for _ in range(cycles):
            t = time.time()
            lab.move("pub")
            wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)
            # The probe's budget (1 + 2 s) runs out where it was sent: judged untrusted.
            time.sleep(3.5)
            visits.append(t)
            t = time.time()
            lab.move("t1")
            wait_history(world, t, "mode", {"mode": "c"}, timeout=30)
        hist = asyncio.run(history(bus))
    finally:
        for p in reversed(procs):
            p.stop()
    out = []
    for i, t in enumerate(visits):
        end = visits[i + 1] if i + 1 < len(visits) else float("inf")
        within = [(tm, k, dd) for tm, k, dd in hist if t <= tm < end]
        up = next(tm for tm, k, dd in within if k == "link-up" and dd.get("gateway") ==
                  "203.0.113.1")
        decided = next(tm for tm, k, dd in within
                       if tm >= up and k == "mode" and dd.get("state") == "untrusted")
        mc = next(tm for tm, k, dd in within if tm >= up and k == "mode"
                  and dd.get("mode") == "mc")
        back = next((tm for tm, k, dd in within if tm > up and k == "link-up"), end)
        probes = sum(1 for tm, k, dd in within if up <= tm < back and k == "probe-sent"
                     and dd.get("vpn") != "true")
        out.append(((decided - up) * 1000, (mc - up) * 1000, probes))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("known_networks_bench: needs root")
    lab = Lab()
    lab.down()
    lab.up(at="t1", gw_inside=False)
    try:
        on = run(lab, True, args.cycles)
        off = run(lab, False, args.cycles)
    finally:
        lab.down()

    def row(name: str, v: list[tuple[float, float, int]]) -> str:
        dec = [x[0] for x in v]
        mc = [x[1] for x in v]
        probes = [x[2] for x in v]
        return (f"| {name} | {len(v)} | {statistics.median(dec):.1f} ms ({max(dec):.1f}) | "
                f"{statistics.median(mc):.1f} ms ({max(mc):.1f}) | {sum(probes)} |")

    print("| visit to pub | visits | link-up -> untrusted, median (worst) | "
          "link-up -> mc, median (worst) | direct probes in clear |")
    print("|---|---:|---:|---:|---:|")
    print(row("unknown (option off)", off))
    print(row("first visit (option on)", on[:1]))
    print(row("known untrusted (option on)", on[1:]))


if __name__ == "__main__":
    main()
