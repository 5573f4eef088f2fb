"""The foreign agent's configuration file (``trustroam-fa --config fa.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path

from app.config import Section, load_toml, parse_security_association
from app.mip.auth import Algorithm
from app.mip.messages import MIP_PORT


@dataclass(frozen=True)
class HomeAgentSA:
    """A security association with a home agent: the FA adds a Foreign-Home
    authenticator to what it relays there and checks the one on the replies."""

    address: IPv4Address
    spi: int
    algorithm: Algorithm
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class ForeignAgentConfig:
    care_of_address: IPv4Address
    """The FA's address on the visitor link: the CoA it advertises and relays from."""
    interface: str
    """The visitor link."""
    port: int = MIP_PORT
    max_lifetime: int = 600
    advert_interval: float = 1.0
    """MaxAdvertisementInterval: each gap is drawn from [0.75, 1] times it."""
    advert_lifetime: int = 1800
    reverse_tunnelling: bool = True
    gre: bool = True
    """Offer GRE encapsulation (RFC 5944 3.3's G bit, RFC 2784) next to IP-in-IP, and
    advertise it (2.1.1's G); off, a request asking for it is denied 72."""
    reverse_tunnel_required: bool = False
    registration_timeout: float = 7.0
    """Seconds a relayed request waits for the home agent's reply before 78; at
    least 7 (RFC 5944 3.7.1), so a slow home agent's acceptance is relayed."""
    max_visitors: int = 1000
    require_ttl_255: bool = True
    """RFC 3024 4.2.1: a request with T must arrive with IP TTL 255, else 76.  Off
    only for mobile nodes that send with the default TTL (not RFC 3024 conformant)."""
    dataplane: str = "userspace"
    source: str = "<built-in>"
    home_agents: tuple[HomeAgentSA, ...] = ()


def load(path: Path) -> ForeignAgentConfig:
    doc = Section(str(path), "", load_toml(path))
    fa = doc.sub("foreign_agent", required=True)
    cfg = ForeignAgentConfig(
        care_of_address=fa.ipv4("care_of_address", required=True),
        interface=fa.str_("interface", required=True),
        port=fa.int_("port", 434, lo=1, hi=65535),
        max_lifetime=fa.int_("max_lifetime", 600, lo=1, hi=65534),
        advert_interval=fa.float_("advert_interval", 1.0, lo=0.05, hi=600.0),
        advert_lifetime=fa.int_("advert_lifetime", 1800, lo=1, hi=65535),
        reverse_tunnelling=fa.bool_("reverse_tunnelling", True),
        gre=fa.bool_("gre", True),
        reverse_tunnel_required=fa.bool_("reverse_tunnel_required", False),
        registration_timeout=fa.float_("registration_timeout", 7.0, lo=7.0, hi=60.0),
        max_visitors=fa.int_("max_visitors", 1000, lo=1, hi=1_000_000),
        require_ttl_255=fa.bool_("require_ttl_255", True),
        dataplane=fa.str_("dataplane", "userspace"),
        source=str(path),
    )
    if cfg.dataplane not in ("userspace", "none"):
        raise fa.error("dataplane", f"must be \"userspace\" or \"none\", got {cfg.dataplane!r}")
    if cfg.reverse_tunnel_required and not cfg.reverse_tunnelling:
        raise fa.error("reverse_tunnel_required", "needs reverse_tunnelling = true")
    fa.done()
    has: list[HomeAgentSA] = []
    for ha in doc.table_list("home_agents"):
        addr = ha.ipv4("address", required=True)
        if any(h.address == addr for h in has):
            raise ha.error("address", f"{addr} is configured twice")
        spi, algorithm, key = parse_security_association(ha, path.parent)
        ha.done()
        has.append(HomeAgentSA(addr, spi, algorithm, key))
    doc.done()
    return replace(cfg, home_agents=tuple(has))
