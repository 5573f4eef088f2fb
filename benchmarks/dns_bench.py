"""Names after a handover into mode mc (issue 19), in the lab (root).

    sudo python benchmarks/dns_bench.py [--cycles 10]

The lab as a desktop (real NetworkManager and systemd-resolved in the MN), the
real helper with a VPN profile (gw1) and a ``[dns]`` table (the intranet's
resolver).  Each cycle: home (h: the home link's DHCP gives the intranet's
resolver, nothing of ours is installed) -> pub (mc: the helper puts the resolver on
the tunnel with ``~.``) -> home.  A prober in the MN starts a lookup of a new
intranet name (``n<i>.probe.corp.example``, no lookup waits on another's
transaction) every 5 ms, through resolved's stub, each in its own thread; the
result is the time from the helper's ``mode mc`` (history) to the first lookup
that succeeded after it, and that lookup's own duration if it started after the
mode (else the lookup was one the gate held while undecided, answered when
resolved sent it again).
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

from app.lab import dns as lab_dns  # noqa: E402
from app.lab.configs import ha_toml, write_helper_files  # noqa: E402
from app.lab.world import Lab  # noqa: E402
from benchmarks.handover_bench import history  # noqa: E402
from tests.lab.procs import MN_VICI, Proc, wait_history  # noqa: E402

GW1 = "172.16.0.11"
PROBER = f"""
import os, socket, threading, time
def one(i):
    t0 = time.time()
    try:
        socket.getaddrinfo(f"n{{i}}.{lab_dns.PROBE_ZONE}", None, socket.AF_INET)
    except OSError:
        return
    os.write(1, f"OK {{t0:.6f}} {{time.time():.6f}}\\n".encode())  # one write: whole lines
i = 0
while True:
    threading.Thread(target=one, args=(i,), daemon=True).start()
    i += 1
    time.sleep(0.005)  # a paced stream of lookups, not a wait for an event
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=10)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("dns_bench: needs root")
    lab = Lab()
    lab.down()
    lab.up(at="home", nm=True, gw_inside=False)
    d = Path(tempfile.mkdtemp(prefix="tr-dns-bench-"))
    (d / "ha.toml").write_text(ha_toml(d / "ha"))
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1,))
    profile = profiles / "corp.toml"
    profile.write_text(profile.read_text() + f'[dns]\nservers = ["{lab_dns.INTRANET_RESOLVER}"]'
                       f'\ndomains = ["{lab_dns.CORP_DOMAIN}"]\n')
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
        wait_history(world, 0, "mode", {"mode": "h"}, timeout=30)
        prober = Proc("tr-mn", sys.executable, "-c", PROBER)
        procs.append(prober)
        prober.wait("OK", timeout=30)
        t_start = time.time()
        for _ in range(args.cycles):
            for net, mode in (("pub", "mc"), ("home", "h")):
                t = time.time()
                lab.move(net)
                wait_history(world, t, "mode", {"mode": mode}, timeout=30)
                time.sleep(1.0)  # lookups settle on the new path before the next move
        prober.stop()
        oks = sorted((float(b), float(a)) for a, b in
                     (line.split()[1:3] for line in prober.out.rest(timeout=1.0)
                      if line.startswith("OK ")))
        hist = asyncio.run(history(bus))
    finally:
        for p in reversed(procs):
            p.stop()
        lab.down()
    modes = [t for t, k, dd in hist if k == "mode" and dd.get("mode") == "mc" and t >= t_start]
    after: list[float] = []
    own: list[float] = []
    for t_mode in modes:
        first = next(((done, began) for done, began in oks if done >= t_mode), None)
        if first is None:
            continue
        after.append((first[0] - t_mode) * 1000)
        if first[1] >= t_mode:
            own.append((first[0] - first[1]) * 1000)

    def stats(v: list[float]) -> str:
        return (f"median {statistics.median(v):.1f} ms, worst {max(v):.1f} ms (n={len(v)})"
                if v else "-")

    print(f"home -> pub: mode mc -> first intranet lookup answered: {stats(after)}")
    print(f"   of which the lookup started after the mode (its own time): {stats(own)}")


if __name__ == "__main__":
    main()
