"""A visited network's identity, before anything of ours is sent there (RFC 5266 5).

What tells one network from another without NetworkManager's help: the router's
MAC address (asked by one ARP request from the link's own address, which DHCP
already showed the network) with the link's subnet and router address.  A
NetworkManager connection UUID alone would not do: one wired profile serves
every network a cable is plugged into.  The identity is a digest of those, so
the state file that keeps verdicts (``app/service/known_networks_store.py``)
lists no addresses of the places a laptop went.

The ARP request goes out through a packet socket, not the IP stack, so the
gate (shut while undecided) does not hold it and no neighbour entry is made;
it asks nothing but "who has the router's address".  No answer within
``timeout``: no identity, and the link is probed as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import struct
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

log = logging.getLogger("trustroam.net.identity")
ETH_P_ARP = 0x0806
TIMEOUT = 0.5
RESEND = 0.15
"""An ARP request lost on Wi-Fi is sent again after this long."""


def identity(address: IPv4Interface, gateway: IPv4Address, mac: bytes) -> str:
    """The digest that names a network: subnet, router address, router MAC."""
    text = f"{address.network}|{gateway}|{mac.hex(':')}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def arp_request(own_mac: bytes, own: IPv4Address, target: IPv4Address) -> bytes:
    eth = b"\xff" * 6 + own_mac + struct.pack("!H", ETH_P_ARP)
    return eth + struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, own_mac, own.packed,
                             b"\x00" * 6, target.packed)


def arp_reply_sender(frame: bytes, target: IPv4Address, own: IPv4Address) -> bytes | None:
    """The MAC ``target`` answered with, if ``frame`` is its ARP reply to ``own``."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    htype, ptype, hlen, plen, op, sha, spa, _tha, tpa = struct.unpack(
        "!HHBBH6s4s6s4s", frame[14:42])
    if (htype, ptype, hlen, plen, op) != (1, 0x0800, 6, 4, 2):
        return None
    if spa != target.packed or tpa != own.packed or sha in (b"\x00" * 6, b"\xff" * 6):
        return None
    return bytes(sha)


def interface_mac(ifname: str) -> bytes | None:
    try:
        text = (Path("/sys/class/net") / ifname / "address").read_text().strip()
        mac = bytes.fromhex(text.replace(":", ""))
    except (OSError, ValueError):
        return None
    return mac if len(mac) == 6 else None


async def router_mac(ifname: str, own: IPv4Address, gateway: IPv4Address,
                     timeout: float = TIMEOUT) -> bytes | None:
    """The MAC the router answers ARP with on ``ifname``; None if none answers."""
    own_mac = interface_mac(ifname)
    if own_mac is None:
        return None
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    try:
        s.setblocking(False)
        s.bind((ifname, ETH_P_ARP))
        request = arp_request(own_mac, own, gateway)
        got: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            while not got.done():
                try:
                    frame = s.recv(2048)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:  # the interface went away
                    got.set_exception(exc)
                    return
                mac = arp_reply_sender(frame, gateway, own)
                if mac is not None:
                    got.set_result(mac)

        loop.add_reader(s.fileno(), readable)
        try:
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                s.send(request)
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(
                        asyncio.shield(got), min(RESEND, deadline - loop.time()))
            return None
        finally:
            loop.remove_reader(s.fileno())
    except OSError as exc:
        log.info("%s: no ARP answer from the router %s: %s", ifname, gateway,
                 exc.strerror or exc)
        return None
    finally:
        # Closing a packet socket waits for an RCU grace period (20-35 ms): not on
        # the link-up's path.
        loop.run_in_executor(None, s.close)


async def network_identity(ifname: str, address: IPv4Interface,
                           gateway: IPv4Address | None) -> str | None:
    """The identity of the network ``ifname`` is on, or None (no router, no answer)."""
    if gateway is None:
        return None
    mac = await router_mac(ifname, address.ip, gateway)
    return identity(address, gateway, mac) if mac is not None else None
