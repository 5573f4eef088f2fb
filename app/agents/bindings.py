"""Binding cache entries and the replay state the home agent keeps per mobile node."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address

from app.mip.messages import RegFlags


@dataclass(frozen=True, slots=True)
class Binding:
    """One mobility binding: where packets for ``home_address`` go now."""

    home_address: IPv4Address
    care_of_address: IPv4Address
    lifetime: int
    """Seconds granted in the reply."""
    registered_at: float
    """Unix time the binding was (re)registered."""
    expires_at: float
    """Unix time the binding lapses; wall-clock so it survives a restart."""
    flags: RegFlags
    source_address: IPv4Address
    """Where the request came from: the NAT's public address when one is in the path."""
    source_port: int
    udp_tunnel: bool = False
    """RFC 3519: tunnel to ``source_address:source_port`` over UDP 434."""
    keepalive_interval: int = 0
    nat_detected: bool = False
    nai: str | None = None

    @property
    def reverse_tunnel(self) -> bool:
        return bool(self.flags & RegFlags.T)

    @property
    def gre(self) -> bool:
        """Tunnelled in GRE (RFC 2784), as the request's G bit asked: the home agent
        accepts G only when it offers GRE, and UDP tunnels carry IP-in-IP only."""
        return bool(self.flags & RegFlags.G) and not self.udp_tunnel

    def seconds_left(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


@dataclass(frozen=True, slots=True)
class HaReplayState:
    """What the home agent remembers to refuse replayed requests."""

    last_identification: int | None = None
    """Timestamp mode: the newest identification accepted."""
    ha_nonce: int | None = None
    """Nonce mode: the nonce the mobile node must echo next."""


class ChangeKind(Enum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class BindingChange:
    kind: ChangeKind
    binding: Binding
    previous: Binding | None = None
