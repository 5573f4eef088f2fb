"""Another application during a sign-in (run in tr-mn, outside the sign-in cgroup):
tries HTTP (TCP source port 40404) and DNS (UDP source port 40405) to the portal
every 50 ms until the file named by its first argument exists; prints how many."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time

PORTAL = "203.0.113.1"
TCP_PORT, UDP_PORT = 40404, 40405


def main(stop: str) -> None:
    n = 0
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", UDP_PORT))
    print("SENDING", flush=True)
    while not os.path.exists(stop):
        t = socket.socket()
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.settimeout(0.05)
        try:
            t.bind(("0.0.0.0", TCP_PORT))
            t.connect((PORTAL, 80))
            print("TCP CONNECTED", flush=True)  # the gate let it out: a leak
        except OSError:
            pass
        finally:
            t.close()
        with contextlib.suppress(OSError):
            u.sendto(b"\0" * 12, (PORTAL, 53))
        n += 1
        time.sleep(0.05)  # a paced stream, not a wait for an event
    print(f"SENT {n}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
