"""Mode mc on the wire (root, takes the lab lock itself): per-packet overhead next to
RFC 5265's two-layer arrangement, and charon's own MOBIKE delay.

    sudo python benchmarks/mc_overhead.py [--count 20] [--moves 5] [--sizes 64,512,1380,1400]

Mode mc by hand (tests/lab/vpn_walk.py ``mc_by_hand``, no helper): the MN on pub
gets a TIA from gateway 1 (strongSwan, kernel-libipsec: userspace ESP, always
UDP 4500), the lab MN driver registers the TIA with the HA as co-located care-of
address through the VPN and carries the home address's traffic in a userspace
IP-in-IP tunnel (app.net.ipip) from the TIA to the HA.  UDP datagrams of a known
IP size go from the home address to the CN (mc: IP-in-IP inside ESP), then the
same size from the TIA to the CN (plain IPsec on the same SA), and the ESP-in-UDP
frames the MN sends are read back by tshark from the bridge (pub; nat after a
MOBIKE move).

RFC 5265 (Mobile IP outside IPsec) has no external home agent in the lab: it is
derived from the plain-IPsec measurement, see ``derived_5265``.

MOBIKE: pub -> nat and nat -> pub, each ``--moves`` times; the delay is from the
DHCP address appearing on the MN's eth0 (rtnetlink, in the MN) to the first ESP
frame from the new address on the new link's bridge, while the MN sends a ping
every 2 ms through the VPN.  The CN's 20 ms ping stream to the home address runs
throughout and its losses are counted; the captures are judged by
tests/lab/leaks.py.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.lab.configs import CN, HA, HOME  # noqa: E402
from app.lab.topology import MN, MN_IFACE  # noqa: E402
from app.lab.world import Lab  # noqa: E402
from tests.lab.conftest import mn_address, ns_exec  # noqa: E402
from tests.lab.leaks import lab_policy, leaks, read_frames  # noqa: E402
from tests.lab.procs import Proc  # noqa: E402
from tests.lab.vpn_walk import PingStream, bridge_capture, mc_by_hand, ping_stream  # noqa: E402

LOCK = "/tmp/trustroam-lab.lock"
LINK_PREFIX = {"pub": "203.0.113.", "nat": "192.168.50."}
IPIP_HEADER = 20
UDP_HEADER = 8
RFC3519_HEADER = 4
"""The RFC 3519 tunnel data header (type 4, next header 4) before the inner packet."""

SENDER = """
import socket, sys, time
src, dst, size, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
for _ in range(count):
    s.sendto(b"o" * (size - 28), (dst, 9))  # 28: the inner IPv4 and UDP headers
    time.sleep(0.005)
"""

ADDRESSES = f"""
import time
from pyroute2 import IPRoute
with IPRoute() as ip:
    ip.bind()
    print("READY", flush=True)
    while True:
        for m in ip.get():
            if m.get_attr("IFA_LABEL") != "{MN_IFACE}":
                continue
            kind = {{"RTM_NEWADDR": "ADDR", "RTM_DELADDR": "GONE"}}.get(m.get("event"))
            if kind:
                print(kind, m.get_attr("IFA_LOCAL"), repr(time.time()), flush=True)
"""
"""New addresses on the MN's link, time-stamped when rtnetlink reports them."""


@dataclass(frozen=True)
class Sample:
    """What the MN sent for ``count`` inner packets of ``size`` bytes."""

    size: int
    count: int
    frames: int
    ip_bytes: int
    """Outer IPv4 bytes on the wire (ip.len), all frames; Ethernet adds 14 per frame."""

    @property
    def per_packet(self) -> float:
        return self.ip_bytes / self.count

    @property
    def frames_per_packet(self) -> float:
        return self.frames / self.count


def mac_of_mn() -> str:
    return ns_exec(MN, "cat", f"/sys/class/net/{MN_IFACE}/address").stdout.strip()


def send_batch(src: str, size: int, count: int) -> tuple[float, float]:
    t0 = time.time()
    out = ns_exec(MN, sys.executable, "-c", SENDER, src, CN, str(size), str(count))
    if out.returncode != 0:
        raise RuntimeError(f"sender from {src}: {out.stderr.strip()}")
    return t0, time.time()


def measure(directory: Path, net: str, tia: str, sizes: list[int], count: int
            ) -> dict[int, tuple[Sample, Sample]]:
    """(mc, plain IPsec) for each inner size, from a capture on ``net``'s bridge."""
    link = mn_address(prefix=LINK_PREFIX[net])
    pcap = directory / f"overhead-{net}.pcap"
    windows: list[tuple[int, str, float, float]] = []
    with bridge_capture(pcap, net, f"ether src {mac_of_mn()} and udp port 4500"):
        for size in sizes:
            for kind, src in (("mc", HOME), ("plain", tia)):
                t0, t1 = send_batch(src, size, count)
                windows.append((size, kind, t0, t1))
                time.sleep(0.3)  # frames of this batch drain before the next one starts
    esp = [f for f in read_frames(pcap) if f["esp.spi"] and f["ip.src"] == link]
    lens = ip_lengths(pcap)
    out: dict[int, dict[str, Sample]] = {}
    for size, kind, t0, t1 in windows:
        mine = [f for f in esp if t0 <= f.time <= t1 + 0.2]
        out.setdefault(size, {})[kind] = Sample(size, count, len(mine),
                                                sum(lens[f.number] for f in mine))
    return {s: (k["mc"], k["plain"]) for s, k in out.items()}


def ip_lengths(pcap: Path) -> dict[int, int]:
    """frame number -> the OUTER IPv4 total length (tshark's first ip.len)."""
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-T", "fields", "-E",
                          "occurrence=f", "-e", "frame.number", "-e", "ip.len"],
                         capture_output=True, text=True, check=True)
    return {int(a): int(b) for a, b in (line.split("\t") for line in out.stdout.splitlines())
            if b}


def derived_5265(plain: Sample, net: str) -> float:
    """RFC 5265's bytes per packet, derived from plain IPsec on the same SA.

    The ESP packet itself (tunnel mode, same proposals, same inner packet) is what
    was measured minus the 8-byte UDP header kernel-libipsec always adds: between
    the external home address and the gateway no NAT sits (the NAT is on the MN's
    side of the x-HA tunnel), so ESP is not UDP-encapsulated there.  The x-HA
    tunnel then adds an IP-in-IP header (20) on pub, and behind the NAT RFC 3519's
    UDP tunnelling (IP 20 + UDP 8 + tunnel header 4)."""
    esp = plain.per_packet - UDP_HEADER * plain.frames_per_packet
    outer = IPIP_HEADER if net == "pub" else IPIP_HEADER + UDP_HEADER + RFC3519_HEADER
    return esp + outer * plain.frames_per_packet


# -- MOBIKE ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Move:
    net: str
    address: str
    address_at: float
    gone_at: float
    """The old address went (charon's roam starts from here)."""
    flowing_at: float
    """The first reply of the CN's stream to a request sent after the address appeared."""


@contextmanager
def address_monitor() -> Iterator[Proc]:
    p = Proc(MN, sys.executable, "-c", ADDRESSES)
    try:
        p.wait("READY")
        yield p
    finally:
        p.stop()


def move(lab: Lab, monitor: Proc, net: str, cn_stream: PingStream) -> Move:
    before = len(monitor.out.seen)
    lab.move(net)
    gone = 0.0
    while True:
        for line in monitor.out.seen[before:]:
            kind, addr, at = [*line.split(), "", "", ""][:3]
            if kind == "GONE" and not gone:
                gone = float(at)
            if kind == "ADDR" and addr.startswith(LINK_PREFIX[net]):
                reply = cn_stream.wait_reply(after=float(at), timeout=20)
                return Move(net, addr, float(at), gone or float(at), reply[2])
        monitor.wait("ADDR", timeout=15)


def first_esp(pcap: Path, m: Move) -> float | None:
    for f in read_frames(pcap):
        if f["esp.spi"] and f["ip.src"] == m.address and f.time >= m.address_at:
            return f.time
    return None


# -- main -----------------------------------------------------------------------------


def ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def rtt(node: str, *argv: str) -> str:
    """ping's average RTT (10 pings, 0.1 s apart), or why there is none."""
    out = ns_exec(node, "ping", "-c10", "-i0.1", "-q", *argv).stdout.splitlines()
    line = next((x for x in out if x.startswith("rtt")), "")
    return f"{line.split('=')[1].split('/')[1]} ms" if line else f"no reply ({out[-1:]})"


def run(args: argparse.Namespace, lab: Lab, d: Path) -> None:
    lab.up(at="pub")
    # IPv6 is not part of mode mc (the helper's gate drops it on managed links):
    # without the gate, the MN's link-local chatter would fill the leak report.
    ns_exec(MN, "sysctl", "-qw", f"net.ipv6.conf.{MN_IFACE}.disable_ipv6=1")
    mn_address(prefix=LINK_PREFIX["pub"])
    sizes = [int(s) for s in args.sizes.split(",")]
    mac = mac_of_mn()
    pcaps = {n: d / f"mobike-{n}.pcap" for n in ("pub", "nat")}
    moves: list[Move] = []
    with mc_by_hand(d) as mc, address_monitor() as monitor:
        # The sizes are measured with nothing else flowing: every ESP frame the MN
        # sends in a batch's window belongs to the batch.
        results = {"pub": measure(d, "pub", mc.tia, sizes, args.count)}
        with ping_stream() as cn:
            first = move(lab, monitor, "nat", cn)
        results["nat"] = measure(d, "nat", mc.tia, sizes, args.count)
        with ping_stream() as cn, ping_stream(target=CN, node=MN, interval=0.002) as fast, \
                bridge_capture(pcaps["pub"], "pub", f"ether host {mac}"), \
                bridge_capture(pcaps["nat"], "nat", f"ether host {mac}"):
            for _ in range(args.moves):
                moves.append(move(lab, monitor, "pub", cn))
                moves.append(move(lab, monitor, "nat", cn))
            time.sleep(0.5)
        rtts = {"CN -> home address (mc)": rtt("tr-cn", HOME),
                "MN -> HA (TIA, through the VPN)": rtt(MN, "-I", mc.tia, HA),
                "MN -> gateway (link, behind the NAT)": rtt(MN, "172.16.0.11")}
    assert fast.result is not None and cn.result is not None
    print(f"mc by hand: TIA {mc.tia}; first move to nat flowing again "
          f"{ms(first.flowing_at - first.address_at)} after the address")
    print()
    print("| link | inner IP packet | mc (measured): IP bytes/packet (frames) | "
          "plain IPsec (measured) | RFC 5265 (derived) | mc - RFC 5265 |")
    print("|---|---:|---:|---:|---:|---:|")
    for net, rows in results.items():
        for size, (mcs, plain) in rows.items():
            r5265 = derived_5265(plain, net)
            print(f"| {net} | {size} | {mcs.per_packet:.0f} ({mcs.frames_per_packet:g}) "
                  f"= +{mcs.per_packet - size:.0f} | {plain.per_packet:.0f} "
                  f"({plain.frames_per_packet:g}) = +{plain.per_packet - size:.0f} | "
                  f"{r5265:.0f} = +{r5265 - size:.0f} | {mcs.per_packet - r5265:+.0f} |")
    print()
    for net in ("nat", "pub"):
        mine = [mv for mv in moves if mv.net == net]
        esp = [(t, mv) for mv in mine if (t := first_esp(pcaps[net], mv)) is not None]
        new = [t - mv.address_at for t, mv in esp]
        old = [t - mv.gone_at for t, mv in esp]
        flows = [mv.flowing_at - mv.address_at for mv in mine]
        other = "pub" if net == "nat" else "nat"
        print(f"MOBIKE {other} -> {net}, {len(mine)} moves ({len(esp)} with ESP seen): "
              f"first ESP from the new address, after it appeared: median "
              f"{ms(statistics.median(new))}, worst {ms(max(new))}; after the old one went: "
              f"median {ms(statistics.median(old))}, worst {ms(max(old))}; the CN's stream "
              f"flowing after the address appeared: median {ms(statistics.median(flows))}, "
              f"worst {ms(max(flows))}")
    print(f"CN -> home address ping stream (20 ms) over the moves: sent {cn.result.sent}, "
          f"lost {cn.result.lost} in {len(cn.result.lost_runs)} runs, longest "
          f"{cn.result.longest_run}; MN -> CN (2 ms): sent {fast.result.sent}, lost "
          f"{fast.result.lost}")
    print("RTT: " + "; ".join(f"{k} {v}" for k, v in rtts.items()))
    for path in sorted(d.glob("*.pcap")):
        bad = leaks(path, lab_policy(mac))
        print(f"leaks in {path.name}: {len(bad)}" + "".join(f"\n  {o}" for o in bad[:10]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=20, help="packets per size and kind")
    ap.add_argument("--moves", type=int, default=5, help="pub -> nat (and back) moves")
    ap.add_argument("--sizes", default="64,512,1380,1400", help="inner IP packet sizes")
    ap.add_argument("--keep", action="store_true", help="keep the captures' directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("mc_overhead: needs root (the lab)")
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lab = Lab()
        lab.down()
        d = Path(tempfile.mkdtemp(prefix="trustroam-mc-"))
        try:
            run(args, lab, d)
        finally:
            lab.down()
            if args.keep:
                print(f"captures kept in {d}")
            else:
                subprocess.run(["rm", "-rf", str(d)], check=False)


if __name__ == "__main__":
    main()
