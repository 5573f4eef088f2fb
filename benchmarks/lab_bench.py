"""Lab benchmarks (root): `trustroam-lab up` time, and the userspace tunnel's
throughput next to the bare path in the same run.

    sudo python benchmarks/lab_bench.py [--ups 5] [--seconds 5]

Tunnel: CN -> home address through the home agent's userspace IP-in-IP
forwarder and the lab MN driver's (mode c on t1).  Bare: CN -> the MN's
care-of address over the same links, no tunnel.  iperf3 TCP for Gbit/s, iperf3
UDP with 64-byte payloads for packets per second received.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.lab.configs import HA, HOME, ha_toml  # noqa: E402
from app.lab.configs import MN_HA_KEY as KEY  # noqa: E402
from app.lab.world import Lab  # noqa: E402
from tests.lab.conftest import mn_address, ns_exec  # noqa: E402
from tests.lab.procs import Proc  # noqa: E402

RATES_KPPS = (40, 60, 80, 100, 0)
"""Offered UDP rates (0: unpaced); as in tunnel_bench.py, the best received counts."""


def iperf(server_ip: str, seconds: float, udp: bool, kpps: int = 0) -> dict[str, float]:
    srv = Proc("tr-mn", "iperf3", "-s", "-1", "--forceflush", "-B", server_ip)
    srv.wait("Server listening")
    # 4 MiB socket buffers: else iperf3's own receiver drops first.
    args = ["iperf3", "-c", server_ip, "-t", str(seconds), "-w", "4M", "--json"]
    if udp:
        args += ["-u", "-l", "64", "-b", f"{kpps * 64 * 8}K" if kpps else "0"]
    out = ns_exec("tr-cn", *args, timeout=seconds + 30)
    srv.stop()
    end = json.loads(out.stdout)["end"]
    if udp:
        s = end["sum"]
        received = s["packets"] - s["lost_packets"]
        return {"pps": received / s["seconds"], "lost_pct": s["lost_percent"]}
    return {"gbit": end["sum_received"]["bits_per_second"] / 1e9}


def udp_best(server_ip: str, seconds: float) -> dict[str, float]:
    return max((iperf(server_ip, seconds, True, k) for k in RATES_KPPS), key=lambda r: r["pps"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ups", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("lab_bench: needs root")
    lab = Lab()
    lab.down()
    ups = []
    for _ in range(args.ups):
        ups.append(lab.up(at="t1"))
        lab.down()
    lab.up(at="t1")
    try:
        coa = mn_address(prefix="10.30.1.")
        with tempfile.TemporaryDirectory() as d:
            cfg = Path(d) / "ha.toml"
            cfg.write_text(ha_toml(Path(d) / "state"))
            ha = Proc("tr-ha", sys.executable, "-m", "app.agents.ha_cli", "--config", str(cfg))
            ha.wait("serving registrations")
            mn = Proc("tr-mn", sys.executable, "-m", "tests.lab.mn_driver", "--ha", HA,
                      "--home", HOME, "--key", KEY)
            mn.wait("REGISTERED")
            try:
                bare_tcp = iperf(coa, args.seconds, udp=False)
                tun_tcp = iperf(HOME, args.seconds, udp=False)
                bare_udp = udp_best(coa, args.seconds)
                tun_udp = udp_best(HOME, args.seconds)
            finally:
                mn.stop()
                ha.stop()
    finally:
        lab.down()
    print(f"`trustroam-lab up`: median {statistics.median(ups):.2f} s, "
          f"worst {max(ups):.2f} s over {len(ups)} runs")
    print()
    print("| path | TCP | UDP 64-byte packets received/s, best offered rate (loss there) |")
    print("|---|---:|---:|")
    print(f"| bare (CN -> care-of address) | {bare_tcp['gbit']:.2f} Gbit/s | "
          f"{bare_udp['pps']:.0f} ({bare_udp['lost_pct']:.0f} %) |")
    print(f"| userspace IP-in-IP (CN -> home address) | {tun_tcp['gbit']:.2f} Gbit/s | "
          f"{tun_udp['pps']:.0f} ({tun_udp['lost_pct']:.0f} %) |")


if __name__ == "__main__":
    main()
