"""A transparent delaying forwarder for a lab router (run in its namespace, root).

    python -m tests.lab.delay --to 10.20.1.1 --port 434 --one-way 0.2

Makes a home agent look far away without netem (this kernel has none): the
router marks the registration traffic to and from ``--to`` (UDP ``--port``),
routes what it marked into a TUN device, and this process writes each packet
back into the same device ``--one-way`` seconds later, whence the kernel
forwards it on as before.  Nothing is rewritten: addresses and ports are
untouched, so the home agent sees the mobile node's own address (no NAT).
Prints "DELAYING" when ready; SIGTERM removes the marks, rule and device.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess

from app.net.tun import open_tun

DEV, MARK, TABLE = "trdelay0", "0x434", "434"


def sh(*cmd: str, check: bool = True) -> None:
    subprocess.run(cmd, check=check, capture_output=True)


def setup(to: str, port: int) -> None:
    sh("ip", "link", "set", DEV, "up")
    for conf in ("all", DEV):
        sh("sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0")
    sh("ip", "route", "replace", "default", "dev", DEV, "table", TABLE)
    sh("ip", "rule", "add", "fwmark", MARK, "lookup", TABLE, "priority", "50")
    rules = f"""
table ip trdelay {{
  chain pre {{
    type filter hook prerouting priority mangle;
    iifname "{DEV}" return
    ip daddr {to} udp dport {port} meta mark set {MARK}
    ip saddr {to} udp sport {port} meta mark set {MARK}
  }}
}}
"""
    subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)


def teardown() -> None:
    sh("nft", "delete", "table", "ip", "trdelay", check=False)
    sh("ip", "rule", "del", "fwmark", MARK, "lookup", TABLE, check=False)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True)
    ap.add_argument("--port", type=int, default=434)
    ap.add_argument("--one-way", type=float, required=True)
    args = ap.parse_args()
    fd = open_tun(DEV)
    setup(args.to, args.port)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    def readable() -> None:
        while True:
            try:
                packet = os.read(fd, 65535)
            except BlockingIOError:
                return
            loop.call_later(args.one_way, os.write, fd, packet)

    loop.add_reader(fd, readable)
    print("DELAYING", flush=True)
    try:
        await stop.wait()
    finally:
        teardown()
        os.close(fd)


if __name__ == "__main__":
    asyncio.run(main())
