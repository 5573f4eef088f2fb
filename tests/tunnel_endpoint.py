"""One end of a userspace IP-in-IP tunnel, for tests and benchmarks (root, in a netns).

    python -m tests.tunnel_endpoint LOCAL PEER MINE THEIRS ENGINE [ipip|gre]

TUN ``trte0`` holds MINE/32 with a route to THEIRS/32 into it; the tunnel's
peer is PEER (routes and accepts by default entry), in IP-in-IP or GRE.  Prints ``READY <engine>``;
on SIGUSR1 prints ``STATS <json>``; on SIGTERM prints the stats and exits.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys

from app.net.ipip import GRE_MTU, MTU, Endpoint, EngineKind, Key, UserspaceTunnel

TUN = "trte0"


async def main() -> None:
    _local, peer, mine, theirs, engine = sys.argv[1:6]
    gre = sys.argv[6:7] == ["gre"]
    # Both raw sockets open whichever the binding uses: what arrives in the other
    # encapsulation must be refused (RFC 3024 4.3.2), and the tests check that.
    t = UserspaceTunnel(TUN, Key.DESTINATION, Key.SOURCE, engine=EngineKind(engine), gre=True)
    t.set_route(None, Endpoint(peer, gre=gre))
    t.set_accept(None, socket.inet_aton(peer), gre)
    for cmd in (["addr", "add", mine + "/32", "dev", TUN],
                ["link", "set", TUN, "up", "mtu", str(GRE_MTU if gre else MTU)],
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
