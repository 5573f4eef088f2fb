"""The registration client's vocabulary (RFC 5944 3.6): its configuration, the
datagrams it emits and the outcomes it reports.

Pure data: the client (:mod:`app.mn.registration`) makes them, the machine and the
driver read them.  Re-exported by :mod:`app.mn.registration`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address

from app.mip.auth import Algorithm

MIN_RETRANSMIT_INTERVAL = 1.0
"""RFC 5944 3.6.3: "The minimum time between Registration Requests MUST NOT be
less than 1 second"."""


class ReplayMode(Enum):
    """How requests are protected against replay (RFC 5944 5.7): timestamps or nonces."""

    TIMESTAMP = "timestamp"
    NONCE = "nonce"


class UdpTunnelling(Enum):
    """Whether co-located registrations carry an RFC 3519 UDP Tunnel Request."""

    AUTO = "auto"
    """Ask without F: the home agent tunnels over UDP only if it sees a NAT."""
    FORCE = "force"
    """Ask with F: UDP tunnelling whatever the home agent sees."""
    OFF = "off"
    """Never ask (IP-in-IP only; through a NAT the home agent refuses)."""


@dataclass(frozen=True)
class RegistrationConfig:
    """One home registration's profile: who we are, whom we register with, the
    mobility security association (SPI, algorithm, key) and the timing."""

    home_address: IPv4Address
    home_agent: IPv4Address
    spi: int
    algorithm: Algorithm
    key: bytes = field(repr=False)
    nai: str | None = None
    lifetime: int = 600
    replay: ReplayMode = ReplayMode.TIMESTAMP
    initial_timeout: float = MIN_RETRANSMIT_INTERVAL
    """Seconds before the first retransmission (never below 1 s); doubled after each."""
    retries: int = 2
    """Retransmissions after the first request before giving up."""
    max_timeout: float = 8.0
    renew_fraction: float = 0.75
    udp_tunnelling: UdpTunnelling = UdpTunnelling.OFF


class ClientState(Enum):
    """Where the registration client is: what it last asked, and whether it was answered."""

    IDLE = "idle"
    REGISTERING = "registering"
    REGISTERED = "registered"
    RENEWING = "renewing"
    DEREGISTERING = "deregistering"


@dataclass(frozen=True, slots=True)
class Datagram:
    """A request to put on the wire: its bytes, where to, and from which source and TTL."""

    data: bytes
    destination: tuple[IPv4Address, int]
    source: IPv4Address | None = None
    """The IP source the request must leave with (RFC 5944 3.6.1.1): the care-of
    address when co-located, the home address through a foreign agent or at home."""
    ttl: int | None = None
    """IP TTL to set, or None for the system default: 255 through a foreign
    agent (RFC 3024 4.1.1; the agent answers 76 otherwise)."""


@dataclass(frozen=True, slots=True)
class Registered:
    """The home agent accepted: ``care_of_address`` is bound until ``expires_at``."""

    care_of_address: IPv4Address
    lifetime: int
    expires_at: float
    """When the request that was answered was sent, plus the granted lifetime."""
    rtt: float
    """Seconds from the request that was answered (its first copy) to its reply."""
    renewal: bool
    udp_tunnel: bool
    keepalive_interval: int
    via: IPv4Address | None = None
    """The foreign agent the request went through, None when co-located."""


@dataclass(frozen=True, slots=True)
class Denied:
    """The home agent (or, unauthenticated, the foreign agent) refused the request."""

    code: int
    text: str
    """e.g. "denied by home agent: identification mismatch (133)"."""
    via: IPv4Address | None = None


@dataclass(frozen=True, slots=True)
class TimedOut:
    """No valid reply after every retransmission: the agent is not reachable."""

    attempts: int
    waited: float
    discarded: int = 0
    """Replies that echoed our requests but did not authenticate, silently discarded
    (RFC 5944 3.6.2.1 b): forged, or our key is not the home agent's.  A count for
    the history only: the outcome is that of any timeout."""
    via: IPv4Address | None = None
    """The foreign agent the requests went to (None: straight to the home agent)."""


@dataclass(frozen=True, slots=True)
class BindingLost:
    """Renewals failed and the granted lifetime ran out."""


@dataclass(frozen=True, slots=True)
class Deregistered:
    """The home agent accepted a deregistration (lifetime 0): no binding stands."""


Event = Registered | Denied | TimedOut | BindingLost | Deregistered
"""What :meth:`RegistrationClient.next_event` reports."""
