"""A NAT rebinding in mode mc, per layer, for trustroamd in the lab (root).

    sudo python benchmarks/mc_nat_rebind_bench.py [--rounds 5] [--keepalive 3]

The lab with gateways that NAT their pools (RFC 5266 4, ``gw_pool_nat``), the
real helper (``--dataplane kernel`` forced: the UDP-tunnelled binding takes the
userspace plane), charon and the home agent (its RFC 3519 keepalive interval
``--keepalive``).  The MN in mc on ``nat``: behind the lab's NAT and the
gateway's, both layers.  Each round both NATs forget their mappings and pick new
ports (``tests/lab/nat_rebind.py``) while the correspondent holds a TCP session
to the home address; printed: how long IPsec (the gateway's SA on the new port:
the MN's DPD, ``dpd_delay`` 10 s), Mobile IP (registered again after unanswered
keepalives, RFC 3519 4.10) and the TCP session took to recover, and a markdown
table for ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.lab.configs import write_helper_files  # noqa: E402
from app.lab.world import Lab  # noqa: E402
from tests.lab.nat_rebind import Recovery, rebind  # noqa: E402
from tests.lab.procs import GW1, echo_session, helper_world, wait_history  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--keepalive", type=int, default=3,
                    help="the home agent's RFC 3519 keepalive interval, seconds")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("mc_nat_rebind_bench: needs root")
    lab = Lab()
    lab.down()
    lab.up(at="home", gw_inside=False, gw_pool_nat=True)
    d = Path(tempfile.mkdtemp(prefix="tr-natrebind-"))
    results: list[Recovery] = []
    try:
        profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1,))
        with helper_world(lab.nm_bus(), d, profiles, secrets,
                          ha_extra=f"keepalive_interval = {args.keepalive}\n",
                          helper_args=("--dataplane", "kernel")) as world:
            wait_history(world, 0, "mode", {"mode": "h"}, timeout=30)
            t = time.time()
            lab.move("pub")
            wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)
            t = time.time()
            lab.move("nat")  # by MOBIKE: charon's baseline of the NAT mapping
            wait_history(world, t, "mobike", timeout=30)
            for i in range(args.rounds):
                run = d / f"round{i}"
                run.mkdir()
                with echo_session(run) as client:
                    r = rebind(lab, world, client)
                print(f"round {i + 1}: IPsec {r.ipsec_s} s, Mobile IP {r.mobile_ip_s} s, "
                      f"TCP {r.tcp_s} s", flush=True)
                results.append(r)
    finally:
        lab.down()

    def row(name: str, values: list[float]) -> str:
        return (f"| {name} | {len(values)} | {statistics.median(values):.2f} s | "
                f"{max(values):.2f} s |")

    print(f"| layer (keepalive {args.keepalive} s, DPD 10 s) | rebindings | median | worst |")
    print("|---|---:|---:|---:|")
    print(row("IPsec (gateway follows the new outer port)", [r.ipsec_s for r in results]))
    print(row("Mobile IP (registered again, RFC 3519 4.10)", [r.mobile_ip_s for r in results]))
    print(row("TCP session echoes again", [r.tcp_s for r in results]))


if __name__ == "__main__":
    main()
