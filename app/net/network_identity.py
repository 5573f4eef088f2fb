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


def identity(address: IPv4Interface, gateway: IPv4Address, mac: bytes, context: str = "") -> str:
    """The digest that names a network: subnet, router address, router MAC, and
    ``context`` (the profile and its home agent: a verdict is "this home agent did not
    answer from here", never another profile's)."""
    text = f"{context}|{address.network}|{gateway}|{mac.hex(':')}"
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
    """The MAC the router answers ARP with on ``ifname`` (the first answer: a forged
    one can only make the network look new, and so probed as without the option);
    None if none answers."""
    own_mac = interface_mac(ifname)
    if own_mac is None:
        return None
    loop = asyncio.get_running_loop()
    try:
        # Protocol 0 until bound: no other interface's ARP queues on it meanwhile.
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    except OSError as exc:
        log.info("%s: cannot ask the router's MAC: %s", ifname, exc.strerror or exc)
        return None
    try:
        s.setblocking(False)
        s.bind((ifname, ETH_P_ARP))
        request = arp_request(own_mac, own, gateway)
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            s.send(request)
            resend = min(loop.time() + RESEND, deadline)
            while (left := resend - loop.time()) > 0:
                try:
                    async with asyncio.timeout(left):
                        frame = await loop.sock_recv(s, 2048)
                except TimeoutError:
                    break
                mac = arp_reply_sender(frame, gateway, own)
                if mac is not None:
                    return mac
        return None
    except OSError as exc:
        log.info("%s: no ARP answer from the router: %s", ifname, exc.strerror or exc)
        return None
    finally:
        # Closing a packet socket waits for an RCU grace period (20-35 ms): not on
        # the link-up's path, unless the loop is going away.
        try:
            loop.run_in_executor(None, s.close)
        except RuntimeError:
            s.close()


async def network_identity(ifname: str, address: IPv4Interface, gateway: IPv4Address | None,
                           context: str = "") -> str | None:
    """The identity of the network ``ifname`` is on, or None (no router, no answer)."""
    if gateway is None:
        return None
    mac = await router_mac(ifname, address.ip, gateway)
    return identity(address, gateway, mac, context) if mac is not None else None
