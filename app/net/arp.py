"""Gratuitous ARP (RFC 5944 section 4.6): tell a link that an address moved."""

from __future__ import annotations

import socket
import struct
from ipaddress import IPv4Address

ETH_P_ARP = 0x0806


def gratuitous_arp_frame(mac: bytes, address: IPv4Address) -> bytes:
    """An ARP reply, broadcast, with sender and target protocol address both ``address``."""
    eth = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 2, mac, address.packed,
                      b"\xff" * 6, address.packed)
    return eth + arp


def send_gratuitous_arp(ifname: str, mac: bytes, address: IPv4Address, count: int = 2) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as s:
        s.bind((ifname, ETH_P_ARP))
        frame = gratuitous_arp_frame(mac, address)
        for _ in range(count):
            s.send(frame)
