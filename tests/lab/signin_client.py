"""A stand-in for the sign-in window in the lab (run in tr-mn): opens the sign-in
hole for itself (OpenSignIn), loads the portal's page, posts its form once the file
named by its first argument exists, then closes the hole (CloseSignIn)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import urllib.request

from app.service.bus import BusType, MessageBus
from tests.dbus_client import call


async def main(go: str) -> None:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    ok, body = await call(bus, "OpenSignIn")
    print(f"OPEN {ok} {body}", flush=True)
    if not ok:
        return
    portal = str(body[0])
    n = 0
    while not os.path.exists(go):
        with urllib.request.urlopen(portal, timeout=3) as r:
            n += 1
            print(f"PAGE {r.status} {n}", flush=True)
        time.sleep(0.1)  # a paced stream, not a wait for an event
    req = urllib.request.Request(portal, data=b"terms=accepted", method="POST")
    with urllib.request.urlopen(req, timeout=3) as r:
        print(f"POSTED {r.status} {r.read().decode()!r}", flush=True)
    ok, body = await call(bus, "CloseSignIn")
    print(f"CLOSED {ok} {body}", flush=True)
    bus.disconnect()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
