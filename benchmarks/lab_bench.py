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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.lab.configs import HA, HOME, ha_toml  # noqa: E402
from app.lab.configs import MN_HA_KEY as KEY  # noqa: E402
from app.lab.world import Lab  # noqa: E402
from tests.lab.conftest import mn_address, ns_exec  # noqa: E402
from tests.lab.procs import Proc  # noqa: E402


def iperf(server_ip: str, seconds: float, udp: bool) -> dict[str, float]:
    srv = subprocess.Popen(["ip", "netns", "exec", "tr-mn", "iperf3", "-s", "-1", "-B",
                            server_ip], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # iperf3 prints nothing we can await before it listens
    args = ["iperf3", "-c", server_ip, "-t", str(seconds), "--json"]
    if udp:
        args += ["-u", "-b", "0", "-l", "64"]
    out = ns_exec("tr-cn", *args, timeout=seconds + 30)
    srv.wait(10)
    end = json.loads(out.stdout)["end"]
    if udp:
        s = end["sum"]
        received = s["packets"] - s["lost_packets"]
        return {"pps": received / s["seconds"], "lost_pct": s["lost_percent"]}
    return {"gbit": end["sum_received"]["bits_per_second"] / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ups", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5)
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
                bare_udp = iperf(coa, args.seconds, udp=True)
                tun_udp = iperf(HOME, args.seconds, udp=True)
            finally:
                mn.stop()
                ha.stop()
    finally:
        lab.down()
    print(f"`trustroam-lab up`: median {statistics.median(ups):.2f} s, "
          f"worst {max(ups):.2f} s over {len(ups)} runs")
    print()
    print("| path | TCP | UDP 64-byte packets received/s (loss) |")
    print("|---|---:|---:|")
    print(f"| bare (CN -> care-of address) | {bare_tcp['gbit']:.2f} Gbit/s | "
          f"{bare_udp['pps']:.0f} ({bare_udp['lost_pct']:.0f} %) |")
    print(f"| userspace IP-in-IP (CN -> home address) | {tun_tcp['gbit']:.2f} Gbit/s | "
          f"{tun_udp['pps']:.0f} ({tun_udp['lost_pct']:.0f} %) |")


if __name__ == "__main__":
    main()
