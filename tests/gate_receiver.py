"""Run in the mobile node's namespace: a mode's data plane and gate, and a receiver
bound to the home address.

    python -m tests.gate_receiver '{"mode": "mc"|"c", "gate": bool, "tia": addr}'

Sets up what the helper sets up for the mode (``MobileNodeRoutes`` with the
userspace tunnel, the gate of :mod:`tests.gate_probe`'s policy with that
decision when ``gate``), binds UDP ``HOME:9999``, prints ``READY`` and then
``GOT <payload>`` for every datagram; also a socket like the helper's direct
registration socket (its mark, bound to the link address, port ``REG_PORT``) that
prints ``REG <type> <payload>``; on SIGTERM it removes its routes and exits.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from app.api import Mode
from app.net.gate import TrafficGate, remove_table
from app.net.gate_rules import HELPER_MARK, ProvenPath
from app.net.mn_routes import Backend, LinkInfo, MobileNodeRoutes
from tests.gate_probe import POLICY

LINK = IPv4Interface("10.30.1.50/24")
ROUTER = IPv4Address("10.30.1.1")
PORT = 9999
REG_PORT = 43400


async def main() -> None:
    spec = json.loads(sys.argv[1])
    mode = Mode(spec["mode"])
    tia = IPv4Address(spec["tia"]) if mode is Mode.VPN else None
    routes = MobileNodeRoutes(POLICY.home_address, IPv4Network("10.20.1.0/24"),
                              POLICY.home_agent, Backend.USERSPACE)
    await routes.start()
    await routes.set_link(LinkInfo("eth0", LINK, ROUTER))
    await routes.configure(mode, tia=tia)
    if spec["gate"]:
        gate = TrafficGate(POLICY)
        await gate.install()
        await gate.decide(ProvenPath("eth0", LINK.ip, mode, None, tia))
    else:
        await remove_table()  # an earlier test's
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((str(POLICY.home_address), PORT))
    s.setblocking(False)

    def readable() -> None:
        while True:
            try:
                data = s.recv(2048)
            except BlockingIOError:
                return
            print("GOT", data.decode(errors="replace"), flush=True)

    loop.add_reader(s.fileno(), readable)
    reg = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reg.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, HELPER_MARK)
    reg.bind((str(LINK.ip), REG_PORT))
    reg.setblocking(False)

    def reg_readable() -> None:
        while True:
            try:
                data = reg.recv(2048)
            except BlockingIOError:
                return
            print("REG", data[0], data[1:].decode(errors="replace"), flush=True)

    loop.add_reader(reg.fileno(), reg_readable)
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    print("READY", flush=True)
    await done.wait()
    await routes.clear()
    routes.close()


if __name__ == "__main__":
    asyncio.run(main())
