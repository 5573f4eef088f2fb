"""Lab benchmarks (root): `trustroam-lab up` time, and the userspace tunnel's
throughput next to the bare path in the same run.

    sudo python benchmarks/lab_bench.py [--ups 5] [--seconds 3]

Tunnel: to the home address through the home agent's userspace IP-in-IP
tunnel and the lab MN driver's (mode c on t1), from the CN (the HA forwards:
two forwarders in series, and the CN -> HA hop) and from the HA itself (one
tunnel).  Bare: to the MN's care-of address from the same node over the same
links, no tunnel.  iperf3 as in benchmarks/iperf.py.
"""

from __future__ import annotations

import argparse
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
from benchmarks import iperf  # noqa: E402
from tests.lab.conftest import mn_address  # noqa: E402
from tests.lab.procs import Proc  # noqa: E402


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
            paths = (("bare (CN -> care-of address)", "tr-cn", coa),
                     ("IP-in-IP, two forwarders in series (CN -> HA -> home address)", "tr-cn",
                      HOME),
                     ("bare (HA -> care-of address)", "tr-ha", coa),
                     ("IP-in-IP, one tunnel (HA -> home address)", "tr-ha", HOME))
            try:
                rows = [(name, iperf.tcp_gbit(client, "tr-mn", ip, args.seconds),
                         iperf.udp_best(client, "tr-mn", ip, args.seconds))
                        for name, client, ip in paths]
            finally:
                mn.stop()
                ha.stop()
    finally:
        lab.down()
    print(f"`trustroam-lab up`: median {statistics.median(ups):.2f} s, "
          f"worst {max(ups):.2f} s over {len(ups)} runs")
    print()
    print("| path | TCP | UDP 64-byte packets received/s, at the best offered rate |")
    print("|---|---:|---:|")
    for name, tcp, udp in rows:
        offered = f"{udp.offered_kpps} k offered" if udp.offered_kpps else "unpaced"
        print(f"| {name} | {tcp:.2f} Gbit/s | {udp.pps:.0f} ({offered}, "
              f"{udp.lost_pct:.0f} % lost) |")


if __name__ == "__main__":
    main()
