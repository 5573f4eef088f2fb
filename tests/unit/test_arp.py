"""Gratuitous ARP as scapy (an independent decoder) and Linux's arp_is_garp() read it."""

from __future__ import annotations

from ipaddress import IPv4Address

from scapy.layers.l2 import ARP, Ether

from app.net.arp import gratuitous_arp_frame

MAC = bytes.fromhex("020000000001")


def test_announcement_is_a_broadcast_request_for_its_own_address():
    f = Ether(gratuitous_arp_frame(MAC, IPv4Address("10.20.1.10")))
    assert f.dst == "ff:ff:ff:ff:ff:ff" and f.src == "02:00:00:00:00:01"
    arp = f[ARP]
    # A request with sender IP == target IP: Linux treats it as gratuitous and lets
    # it override a neighbour entry even within locktime.
    assert arp.op == 1 and arp.psrc == arp.pdst == "10.20.1.10"
    assert arp.hwsrc == "02:00:00:00:00:01" and arp.hwdst == "00:00:00:00:00:00"
