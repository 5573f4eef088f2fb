"""Gateway failover time for trustroamd in the lab (root).

    sudo python benchmarks/failover_bench.py [--rounds 6]

The real helper with a profile listing both lab gateways, the lab's charon on
the MN and the gateways (charon's retransmissions as packaged: given up after
7.1 s), the HA; the MN on pub (untrusted).  Each round connects the profile
afresh (it starts on the gateway remembered for pub: the one the last round
moved to), waits for mc, then makes the gateway in use dead by dropping all its
traffic with nftables (its host and charon stay: reversible), and times from
that moment:

* detection: until the helper's ``vpn-down`` (charon's DPD gave up);
* failover: until mode mc again via the other gateway (a new IKE SA, a new TIA,
  a new registration through it; the helper's ``mode`` entry).

The dead gateway's traffic is let through again before the next round.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.lab import charon  # noqa: E402
from app.lab.configs import ha_toml, write_helper_files  # noqa: E402
from app.lab.world import Lab  # noqa: E402
from app.vpn.profile import VpnConfig  # noqa: E402
from tests.dbus_client import call, run_as  # noqa: E402
from tests.lab.procs import MN_VICI, Proc, history, wait_history  # noqa: E402

NODE = {g.address: g.node for g in charon.GATEWAYS}
GW1, GW2 = (g.address for g in charon.GATEWAYS)
DROP = """table inet trfail {
  chain in { type filter hook input priority -300; policy drop; }
  chain out { type filter hook output priority -300; policy drop; }
}
"""


def dead(gateway: str, on: bool) -> None:
    """All of ``gateway``'s traffic dropped (or let through again)."""
    node = NODE[gateway]
    if on:
        subprocess.run(["ip", "netns", "exec", node, "nft", "-f", "-"], input=DROP, text=True,
                       check=True)
    else:
        subprocess.run(["ip", "netns", "exec", node, "nft", "delete", "table", "inet",
                        "trfail"], check=False, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("failover_bench: needs root")
    bound = VpnConfig(gateways=(GW1,), identity="x").dead_gateway_after
    lab = Lab()
    lab.down()
    lab.up(at="pub", gw_inside=False)
    d = Path(tempfile.mkdtemp(prefix="tr-failover-bench-"))
    (d / "ha.toml").write_text(ha_toml(d / "ha"))
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1, GW2))
    bus = lab.nm_bus()
    procs: list[Proc] = []
    detect: list[float] = []
    failover: list[float] = []
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
        for i in range(args.rounds):
            t = time.time() if i else 0.0  # the first: since the helper's start
            if i:  # a fresh driver: its order is the memory's, no gateway marked dead
                ok, value = run_as(None, bus, lambda b: call(b, "Connect", "s", ["corp"]))
                assert ok, value
            up = wait_history(world, t, "vpn-up", timeout=60)
            wait_history(world, t, "mode", {"mode": "mc"}, timeout=60)
            gw = up["gateway"]
            other = GW2 if gw == GW1 else GW1
            time.sleep(1.0)  # mc settled (its registration answered) before the death
            t0 = time.time()
            dead(gw, True)
            try:
                down = wait_history(world, t0, "vpn-down", timeout=60)
                wait_history(world, t0, "vpn-up", {"gateway": other}, timeout=60)
                wait_history(world, t0, "mode", {"mode": "mc"}, timeout=60)
            finally:
                dead(gw, False)

            hist = history(world, 200)
            t_down = next(tm for tm, k, dd in hist if tm >= t0 and k == "vpn-down"
                          and dd == down)
            t_mc = next(tm for tm, k, dd in hist if tm >= t_down and k == "mode"
                        and dd.get("mode") == "mc")
            detect.append(t_down - t0)
            failover.append(t_mc - t0)
            print(f"round {i + 1}: {gw} dead -> mc via {other}: detected "
                  f"{t_down - t0:.2f} s, mc {t_mc - t0:.2f} s", flush=True)
    finally:
        for p in reversed(procs):
            p.stop()
        for g in NODE:
            dead(g, False)
        lab.down()

    def row(v: list[float]) -> str:
        return f"{statistics.median(v):.2f} s | {max(v):.2f} s"

    print("\n| measure | rounds | median | worst | bound (dead_gateway_after) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| dead gateway → charon's DPD gives up (`vpn-down`) | {len(detect)} | "
          f"{row(detect)} | {bound} s |")
    print(f"| dead gateway → mc via the next gateway | {len(failover)} | {row(failover)} | "
          f"{bound} s + set-up |")


if __name__ == "__main__":
    main()
