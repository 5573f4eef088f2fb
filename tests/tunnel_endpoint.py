"""One end of a userspace IP-in-IP tunnel, for tests and benchmarks (root, in a netns).

    python -m tests.tunnel_endpoint LOCAL PEER MINE THEIRS ENGINE

TUN ``trte0`` holds MINE/32 with a route to THEIRS/32 into it; the tunnel's
peer is PEER (routes and accepts by default entry).  Prints ``READY <engine>``;
on SIGUSR1 prints ``STATS <json>``; on SIGTERM prints the stats and exits.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys

from app.net.ipip import MTU, Endpoint, EngineKind, Key, UserspaceTunnel

TUN = "trte0"


async def main() -> None:
    _local, peer, mine, theirs, engine = sys.argv[1:6]
    t = UserspaceTunnel(TUN, Key.DESTINATION, Key.SOURCE, engine=EngineKind(engine))
    t.set_route(None, Endpoint(peer))
    t.set_accept(None, socket.inet_aton(peer))
    for cmd in (["addr", "add", mine + "/32", "dev", TUN],
                ["link", "set", TUN, "up", "mtu", str(MTU)],
                ["route", "add", theirs + "/32", "dev", TUN, "src", mine]):
        subprocess.run(["ip", *cmd], check=True)
    t.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1,
                            lambda: print("STATS", json.dumps(t.stats), flush=True))
    print("READY", t.engine_kind.value, flush=True)
    await stop.wait()
    print("STATS", json.dumps(t.stats), flush=True)
    t.close()


if __name__ == "__main__":
    asyncio.run(main())
