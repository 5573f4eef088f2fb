"""Gratuitous ARP (RFC 5944 section 4.6): tell a link that an address moved."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address

log = logging.getLogger("trustroam.net.arp")
ETH_P_ARP = 0x0806


def gratuitous_arp_frame(mac: bytes, address: IPv4Address) -> bytes:
    """A broadcast ARP request with sender and target protocol address both ``address``.

    The request form (RFC 5227's announcement) rather than a reply: Linux takes a
    reply as gratuitous only if its target hardware address equals the sender's,
    and otherwise applies ``locktime``, ignoring the update for up to a second
    after the neighbour last changed its entry (e.g. just before a move).
    """
    eth = b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, address.packed,
                      b"\x00" * 6, address.packed)
    return eth + arp


_SOCKETS: dict[str, socket.socket] = {}
"""One packet socket per interface, kept open: closing a packet socket waits for an
RCU grace period (synchronize_net), 20-35 ms here, which was on the critical path
of every binding change."""


def _packet_socket(ifname: str) -> socket.socket:
    s = _SOCKETS.get(ifname)
    if s is None:
        # Protocol 0: this socket only sends, it never receives a copy of traffic.
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            s.bind((ifname, 0))
        except OSError:
            s.close()
            raise
        _SOCKETS[ifname] = s
    return s


def send_gratuitous_arp(ifname: str, mac: bytes, address: IPv4Address, count: int = 2) -> None:
    frame = gratuitous_arp_frame(mac, address)
    try:
        s = _packet_socket(ifname)
        for _ in range(count):
            s.send(frame)
    except OSError:
        stale = _SOCKETS.pop(ifname, None)  # the interface went away: reopen next time
        if stale is not None:
            stale.close()
        raise


ANNOUNCE_REPEATS = (1.1, 2.2)
"""Seconds after the first gratuitous ARP to send it again.  Linux ignores an
ARP update within ``locktime`` (1 s) of the entry's last change, so a neighbour
that resolved the address just before a move would miss a single announcement
and keep sending to the old MAC until its entry goes stale (15-45 s)."""


class ArpAnnouncer:
    """Gratuitous ARP now and again after the neighbours' lock time, per address.

    A packet socket bypasses nftables, so the gate's decision is asked here
    instead: ``permit(ifname)`` before every frame, the repeats included (the
    mobile node may have left the home link between two of them).
    """

    def __init__(self, permit: Callable[[str], bool] = lambda ifname: True) -> None:
        self._pending: dict[IPv4Address, list[asyncio.TimerHandle]] = {}
        self.permit = permit

    def announce(self, ifname: str, mac: bytes, address: IPv4Address) -> None:
        self.cancel(address)
        if not self.permit(ifname):
            log.info("no gratuitous ARP for %s on %s: not the proven home link",
                     address, ifname)
            return
        send_gratuitous_arp(ifname, mac, address)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._pending[address] = [loop.call_later(t, self._again, ifname, mac, address)
                                  for t in ANNOUNCE_REPEATS]

    def _again(self, ifname: str, mac: bytes, address: IPv4Address) -> None:
        if not self.permit(ifname):
            self.cancel(address)
            return
        try:
            send_gratuitous_arp(ifname, mac, address, count=1)
        except OSError as exc:
            log.debug("repeated gratuitous ARP for %s failed: %s", address, exc)

    def cancel(self, address: IPv4Address) -> None:
        for h in self._pending.pop(address, []):
            h.cancel()

    def cancel_all(self) -> None:
        for address in list(self._pending):
            self.cancel(address)
