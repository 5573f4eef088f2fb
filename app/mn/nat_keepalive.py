"""RFC 3519 two-way keepalives for a UDP-tunnelled binding, sans-I/O.

Section 4.9: the mobile node sends a UDP-encapsulated ICMP Echo Request to the
home agent at least every K seconds (the interval the home agent's UDP Tunnel
Reply gave, default 110 s; the RFC asks for one only when nothing else went to
the home agent, sending it regardless costs one small packet per K), from the
registration's own source port.  Section 4.10: if no Echo Reply comes back even after a number of
retransmissions while the node is still on the same link, the NAT mapping may
be lost and the node SHOULD re-register, which teaches the home agent the new
mapping (it never learns one from tunnel data).

Like the registration client: events in with a time, actions out, one timer.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address

RETRANSMISSIONS = 2
"""Echo Requests resent before the mapping is called lost."""
MIN_REPLY_WAIT = 1.0
MAX_REPLY_WAIT = 5.0


class Action(Enum):
    SEND_ECHO = "send-echo"
    REREGISTER = "reregister"


@dataclass
class NatKeepalive:
    interval: float
    """K, from the home agent's UDP Tunnel Reply."""
    next_due: float
    identifier: int = 0x5452  # "TR"
    sequence: int = 0
    _waiting_since: float | None = None
    _tries: int = 0

    @classmethod
    def start(cls, interval: float, registered_at: float) -> NatKeepalive:
        """First keepalive at the earliest K seconds after the request (4.9)."""
        return cls(interval=float(interval), next_due=registered_at + interval)

    @property
    def reply_wait(self) -> float:
        return min(max(self.interval / 4, MIN_REPLY_WAIT), MAX_REPLY_WAIT)

    def echo_reply(self, identifier: int, sequence: int, now: float) -> bool:
        """An Echo Reply from the home agent; True if it answers ours."""
        if identifier != self.identifier or self._waiting_since is None or (
                sequence != self.sequence):
            return False
        self._waiting_since = None
        self._tries = 0
        self.next_due = now + self.interval
        return True

    def handle_timer(self, now: float) -> list[Action]:
        if now < self.get_timer():
            return []
        if self._waiting_since is not None and self._tries > RETRANSMISSIONS:
            # 4.10: no reply after the retransmissions: the mapping may be gone.
            self._waiting_since = None
            self._tries = 0
            self.next_due = now + self.interval
            return [Action.REREGISTER]
        self.sequence = (self.sequence + 1) & 0xFFFF
        self._waiting_since = now
        self._tries += 1
        return [Action.SEND_ECHO]

    def get_timer(self) -> float:
        if self._waiting_since is not None:
            return self._waiting_since + self.reply_wait
        return self.next_due


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    return int(~(s + (s >> 16)) & 0xFFFF)


def echo_request(source: IPv4Address, home_agent: IPv4Address, identifier: int,
                 sequence: int) -> bytes:
    """The inner packet of a keepalive: an ICMP Echo Request from the home address."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, identifier, sequence) + b"trustroam-keepalive"
    icmp = icmp[:2] + struct.pack("!H", _checksum(icmp)) + icmp[4:]
    total = 20 + len(icmp)
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 1, 0,
                       source.packed, home_agent.packed)
    head = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
    return head + icmp


def parse_echo_reply(packet: bytes, home_agent: IPv4Address) -> tuple[int, int] | None:
    """(identifier, sequence) if ``packet`` is an ICMP Echo Reply from the home agent."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 1:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if packet[12:16] != home_agent.packed or len(packet) < ihl + 8 or packet[ihl] != 0:
        return None
    identifier, sequence = struct.unpack("!HH", packet[ihl + 4:ihl + 8])
    return identifier, sequence
