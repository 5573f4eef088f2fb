"""A profile's ``[dns]`` table: the intranet's resolvers and search domains.

    [dns]
    servers = ["10.0.0.1"]             # IPv4 addresses of the intranet's resolvers
    domains = ["corp.example"]         # search domains (single-label names get them)

Both keys are optional.  In modes c, f and mc (and h where the home link's DHCP
gave no resolver) the helper puts the servers on the link that carries the home
address, as the resolver of every name (``app.net.resolver``).  Errors name the
key; nothing here is secret.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address

from app.config import Section, toml_string

MAX_SERVERS = 8
MAX_DOMAINS = 16
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


@dataclass(frozen=True)
class DnsConfig:
    servers: tuple[IPv4Address, ...] = ()
    domains: tuple[str, ...] = ()


def parse(section: Section) -> DnsConfig:
    servers: list[IPv4Address] = []
    raw = section.str_list("servers")
    if len(raw) > MAX_SERVERS:
        raise section.error("servers", f"has {len(raw)} entries; at most {MAX_SERVERS}")
    for text in raw:
        try:
            addr = IPv4Address(text)
        except ValueError:
            raise section.error("servers", f"{_short(text)} is not an IPv4 address") from None
        if (addr.is_unspecified or addr.is_loopback or addr.is_multicast
                or addr == IPv4Address("255.255.255.255")):
            raise section.error("servers", f"{addr} cannot be a resolver reached through the "
                                           "tunnel (loopback, multicast or unspecified)")
        if addr in servers:
            raise section.error("servers", f"{addr} is listed twice")
        servers.append(addr)
    domains: list[str] = []
    raw = section.str_list("domains")
    if len(raw) > MAX_DOMAINS:
        raise section.error("domains", f"has {len(raw)} entries; at most {MAX_DOMAINS}")
    for text in raw:
        name = text.removesuffix(".").lower()
        why = domain_problem(name)
        if why:
            raise section.error("domains", f"{_short(text)} is not a domain name: {why}")
        if name not in domains:
            domains.append(name)
    section.done()
    return DnsConfig(tuple(servers), tuple(domains))


def domain_problem(name: str) -> str:
    """Why ``name`` is not a DNS domain name (labels of letters, digits, '-' and
    '_', 1-63 bytes each, 253 in all), or "" if it is one."""
    if not name:
        return "it is empty"
    if len(name) > 253:
        return f"it is {len(name)} characters; at most 253"
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            return (f"label {_short(label)} must be 1-63 letters, digits, '-' or '_', "
                    "not starting or ending with '-'")
    return ""


def dump(cfg: DnsConfig) -> list[str]:
    """The table's lines (without its header), as ``parse`` reads them back."""
    return [f"servers = [{', '.join(toml_string(str(s)) for s in cfg.servers)}]",
            f"domains = [{', '.join(toml_string(d) for d in cfg.domains)}]"]


def _short(text: str, limit: int = 64) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
