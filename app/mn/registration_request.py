"""What a registration request carries and where it goes (RFC 5944 3.6.1), sans-I/O.

:class:`Attempt` is one request and its copies; the functions build its flags and
extensions, its authenticated bytes and the datagram that carries it.  The client
(:mod:`app.mn.registration`) decides when each leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from app.mip.auth import append_authenticator
from app.mip.extensions import Extension, ExtType, NaiExtension, UdpTunnelRequest
from app.mip.messages import MIP_PORT, RegFlags, RegistrationRequest
from app.mn.registration_types import Datagram, RegistrationConfig, UdpTunnelling

REVERSE_TUNNEL_TTL = 255
"""RFC 3024 2 and 4.1.1: requests asking for a reverse tunnel carry TTL 255."""


@dataclass(slots=True)
class Attempt:
    """One request and its copies, from the first send to its answer or timeout."""

    care_of: IPv4Address
    lifetime: int
    flags: RegFlags
    via: IPv4Address | None
    extensions: tuple[Extension, ...]
    source: IPv4Address
    data: bytes = b""
    """The most recent request (nonce mode resends it unchanged)."""
    identification: int = 0
    """... and its identification: only replies echoing its low 32 bits count."""
    first_sent: float = 0.0
    """When a request with this identification first left (the binding timer's start)."""
    last_sent: float = 0.0
    started: float = 0.0
    copies: int = 0
    timeout: float = 0.0
    deadline: float = 0.0
    repairs: int = 0
    discarded: int = 0
    """Matching replies whose authenticator was missing or did not verify."""


def flags_and_extensions(config: RegistrationConfig, via: IPv4Address | None,
                         reverse_tunnel: bool, udp_tunnel: bool,
                         ) -> tuple[RegFlags, tuple[Extension, ...]]:
    """A registration's flags and the extensions before its authenticator."""
    flags = RegFlags.T if reverse_tunnel else RegFlags(0)
    if via is None:
        flags |= RegFlags.D
    exts: list[Extension] = []
    if config.nai:
        exts.append(NaiExtension(config.nai))
    mode = UdpTunnelling.FORCE if udp_tunnel else config.udp_tunnelling
    # RFC 3519 4.4: only with a co-located care-of address, placed before the MHAE.
    if via is None and mode is not UdpTunnelling.OFF:
        exts.append(UdpTunnelRequest(force=mode is UdpTunnelling.FORCE))
    return flags, tuple(exts)


def encode(config: RegistrationConfig, a: Attempt) -> bytes:
    """The request for ``a`` with its identification, Mobile-Home authenticated."""
    req = RegistrationRequest(a.flags, a.lifetime, config.home_address, config.home_agent,
                              a.care_of, a.identification, a.extensions)
    return append_authenticator(req.encode(), ExtType.MOBILE_HOME_AUTH, config.spi,
                                config.key, config.algorithm)


def datagram(config: RegistrationConfig, a: Attempt) -> Datagram:
    """``a``'s latest bytes to the foreign agent or else the home agent (3.6.1.1)."""
    dest = a.via or config.home_agent
    ttl = REVERSE_TUNNEL_TTL if a.via is not None or a.flags & RegFlags.T else None
    return Datagram(a.data, (dest, MIP_PORT), a.source, ttl)
