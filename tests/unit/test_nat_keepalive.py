"""RFC 3519 4.9/4.10 keepalives of the mobile node, with a fake clock."""

from __future__ import annotations

from ipaddress import IPv4Address

from scapy.layers.inet import ICMP, IP

from app.mn.nat_keepalive import (
    RETRANSMISSIONS,
    Action,
    NatKeepalive,
    echo_request,
    parse_echo_reply,
)

HOME, HA = IPv4Address("10.20.1.10"), IPv4Address("10.20.1.1")


def test_rfc3519_4_9_first_keepalive_at_the_earliest_k_after_the_request():
    k = NatKeepalive.start(110, registered_at=1000.0)
    assert k.get_timer() == 1110.0
    assert k.handle_timer(1109.9) == []
    assert k.handle_timer(1110.0) == [Action.SEND_ECHO]


def test_rfc3519_4_9_two_way_an_answered_keepalive_waits_k_again():
    k = NatKeepalive.start(20, registered_at=0.0)
    assert k.handle_timer(20.0) == [Action.SEND_ECHO]
    assert not k.echo_reply(k.identifier, k.sequence + 1, 20.1)  # not ours
    assert k.echo_reply(k.identifier, k.sequence, 20.1)
    assert k.get_timer() == 40.1


def test_rfc3519_4_10_unanswered_keepalives_mean_register_again():
    k = NatKeepalive.start(20, registered_at=0.0)
    now, actions = 20.0, []
    while Action.REREGISTER not in actions:
        now = k.get_timer()
        actions += k.handle_timer(now)
    assert actions.count(Action.SEND_ECHO) == 1 + RETRANSMISSIONS
    assert now - 20.0 < 20  # detected within one interval, not after many
    assert k.handle_timer(k.get_timer()) == [Action.SEND_ECHO]  # and keeps going


def test_rfc3519_4_9_keepalive_is_an_icmp_echo_request_to_the_home_agent():
    pkt = IP(echo_request(HOME, HA, 0x5452, 7))
    assert (pkt.src, pkt.dst) == (str(HOME), str(HA))
    assert pkt[ICMP].type == 8 and (pkt[ICMP].id, pkt[ICMP].seq) == (0x5452, 7)
    # scapy recomputes both checksums: ours must equal them.
    again = IP(bytes(pkt.__class__(bytes(pkt))))
    del again.chksum
    del again[ICMP].chksum
    rebuilt = IP(bytes(again))
    assert rebuilt.chksum == pkt.chksum and rebuilt[ICMP].chksum == pkt[ICMP].chksum
    reply = bytes(IP(src=str(HA), dst=str(HOME)) / ICMP(type=0, id=0x5452, seq=7))
    assert parse_echo_reply(reply, HA) == (0x5452, 7)
    assert parse_echo_reply(reply, IPv4Address("10.20.1.2")) is None
    assert parse_echo_reply(bytes(pkt), HA) is None  # a request is no reply
