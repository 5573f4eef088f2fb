"""A connection profile (``trustroamd --profile corp.toml``) and its validation.

A profile says who the mobile node is and how eagerly to probe; it never holds
a secret (the Mobile-Home key comes from the keyring through the tray's secret
agent, or from the root-only secrets file).  Errors name the file and key.

    name = "corp"                  # optional, defaults to the file's stem
    home_address = "10.20.1.10"
    home_network = "10.20.1.0/24"
    home_agent = "10.20.1.1"
    nai = "alice@corp.example"     # optional
    spi = 256
    algorithm = "hmac-md5"         # or "keyed-md5"
    lifetime = 600
    renew_fraction = 0.75
    interface = "eth0"             # optional: the link to manage (default: any)
    replay = "timestamp"           # or "nonce": as the home agent's [[mobile_nodes]] says
    udp_tunnelling = "auto"        # RFC 3519: "auto" (HA decides), "force" or "off"
    autoconnect = false            # true: the helper connects it at its start (boot)

    [probe]
    initial_timeout = 1.0          # seconds before the first retransmission (>= 1, doubles)
    retries = 2                    # retransmissions before "untrusted" (1 + 2 + 4 = 7 s)
    skip_known_untrusted = false   # RFC 5266 5: no probe where it went unanswered before
    recheck_after = 604800         # seconds: such a network is probed again this often

    [features]
    foreign_agents = true          # mode f where an FA advertises (trusted links only)
    gate = true                    # block normal traffic while undecided
    allow_lan = false              # c and mc: the link's own private subnet in clear

    [vpn]                          # optional: the untrusted side (mode mc), see app.vpn.profile
    gateways = ["vpn.corp.example"]
    identity = "alice@corp.example"

    [dns]                          # optional: the intranet's resolvers, see app.net.dns_profile
    servers = ["10.20.0.53"]
    domains = ["corp.example"]
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from app.config import ConfigError, Section, load_toml, toml_string
from app.mip.auth import Algorithm
from app.mn.known_networks import DEFAULT_RECHECK_AFTER, KnownNetworksConfig
from app.mn.registration import (
    MIN_RETRANSMIT_INTERVAL,
    RegistrationConfig,
    ReplayMode,
    UdpTunnelling,
)
from app.net import dns_profile
from app.net.dns_profile import DnsConfig
from app.vpn import profile as vpn_profile
from app.vpn.profile import VpnConfig

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
"""Matched with fullmatch: ``$`` would let a trailing newline through."""
IFNAMSIZ = 16
SECRET_KEYS = ("key", "key_file", "mn_ha_key", "secret", "password", "psk")


@dataclass(frozen=True)
class Profile:
    name: str
    home_address: IPv4Address
    home_network: IPv4Network
    home_agent: IPv4Address
    spi: int
    algorithm: Algorithm = Algorithm.HMAC_MD5
    nai: str | None = None
    lifetime: int = 600
    renew_fraction: float = 0.75
    interface: str | None = None
    initial_timeout: float = 1.0
    retries: int = 2
    replay: ReplayMode = ReplayMode.TIMESTAMP
    udp_tunnelling: UdpTunnelling = UdpTunnelling.AUTO
    foreign_agents: bool = True
    gate_enabled: bool = True
    """``[features] gate``: shut traffic while undecided (off only for debugging)."""
    allow_lan: bool = False
    """``[features] allow_lan``: in c and mc the access link's own private subnet is
    reached directly, in clear (app.net.gate_rules.lan_subnet says which)."""
    vpn: VpnConfig | None = None
    """The ``[vpn]`` table: without one an untrusted network stays shut (no mode mc)."""
    dns: DnsConfig | None = None
    """The ``[dns]`` table: resolvers put on the home address's link (app.net.resolver)."""
    source: str = "<built-in>"
    autoconnect: bool = False
    """``autoconnect = true``: the helper connects this profile at its start (boot)."""
    known_networks: KnownNetworksConfig = field(default_factory=KnownNetworksConfig)
    """``[probe] skip_known_untrusted`` / ``recheck_after`` (RFC 5266 5)."""

    def registration(self, key: bytes) -> RegistrationConfig:
        return RegistrationConfig(self.home_address, self.home_agent, self.spi, self.algorithm,
                                  key, nai=self.nai, lifetime=self.lifetime,
                                  initial_timeout=self.initial_timeout, retries=self.retries,
                                  renew_fraction=self.renew_fraction, replay=self.replay,
                                  udp_tunnelling=self.udp_tunnelling)

    @property
    def decision_seconds(self) -> float:
        """How long a silent network takes to be declared unreachable: the first
        timeout doubled at each retransmission (RFC 5944 3.6.3)."""
        return sum(min(self.initial_timeout * 2.0 ** i, 8.0) for i in range(self.retries + 1))


def load(path: Path) -> Profile:
    return parse(load_toml(path), str(path), path.stem)


def loads(text: str, source: str = "profile") -> Profile:
    """Parse profile text (``SaveProfile``); the name must be inside."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    return parse(doc, source, None)


def parse(doc: dict[str, object], source: str, default_name: str | None) -> Profile:
    top = Section(source, "", doc)
    for k in SECRET_KEYS:
        if top.has(k):
            raise top.error(k, "secrets do not belong in a profile: the key comes from the "
                               "keyring (tray) or the root-only secrets file")
    name = top.str_("name", default_name, required=default_name is None)
    if not NAME_RE.fullmatch(name):
        raise top.error("name", f"{_short(name)} must be 1-64 letters, digits, '.', '_' or "
                                "'-', starting with a letter or digit")
    network = top.network("home_network", required=True)
    home = top.ipv4("home_address", required=True)
    if home not in network or home in (network.network_address, network.broadcast_address):
        raise top.error("home_address", f"{home} is not a host address of home_network "
                                        f"{network}")
    ha = top.ipv4("home_agent", required=True)
    if ha not in network:
        raise top.error("home_agent", f"{ha} is not inside home_network {network}")
    if ha == home:
        raise top.error("home_agent", "is the same as home_address")
    spi = top.int_("spi", required=True, lo=0, hi=0xFFFF_FFFF)
    if spi < 256:
        raise top.error("spi", f"{spi} is reserved (0-255); use 256 or above")
    nai = top.optional_str("nai")
    if nai is not None and not 0 < len(nai.encode()) <= 255:
        raise top.error("nai", "must be 1 to 255 bytes")
    if nai is not None and not nai.isprintable():
        raise top.error("nai", "must not contain control characters")
    iface = top.optional_str("interface")
    if iface is not None:
        why = interface_name_problem(iface)
        if why:
            raise top.error("interface", f"{_short(iface)} is not an interface name: {why}")
    probe = top.sub("probe")
    features = top.sub("features")
    vpn = vpn_profile.parse(top.sub("vpn"), network) if top.has("vpn") else None
    dns = dns_profile.parse(top.sub("dns")) if top.has("dns") else None
    initial_timeout = probe.float_("initial_timeout", 1.0, lo=0.0, hi=30.0)
    if initial_timeout < MIN_RETRANSMIT_INTERVAL:
        raise probe.error("initial_timeout", f"must be at least {MIN_RETRANSMIT_INTERVAL:g} s "
                                             "(RFC 5944 3.6.3: requests are never resent "
                                             f"sooner), got {initial_timeout:g}")
    profile = Profile(
        name=name, home_address=home, home_network=network, home_agent=ha, spi=spi,
        algorithm=top.enum("algorithm", Algorithm, Algorithm.HMAC_MD5), nai=nai,
        lifetime=top.int_("lifetime", 600, lo=1, hi=65534),
        renew_fraction=top.float_("renew_fraction", 0.75, lo=0.1, hi=0.95),
        interface=iface,
        initial_timeout=initial_timeout,
        retries=probe.int_("retries", 2, lo=0, hi=20),
        replay=top.enum("replay", ReplayMode, ReplayMode.TIMESTAMP),
        udp_tunnelling=top.enum("udp_tunnelling", UdpTunnelling, UdpTunnelling.AUTO),
        foreign_agents=features.bool_("foreign_agents", True),
        gate_enabled=features.bool_("gate", True),
        allow_lan=features.bool_("allow_lan", False),
        vpn=vpn,
        dns=dns,
        source=source,
        autoconnect=top.bool_("autoconnect", False),
        known_networks=KnownNetworksConfig(
            probe.bool_("skip_known_untrusted", False),
            probe.float_("recheck_after", DEFAULT_RECHECK_AFTER, lo=60.0, hi=365 * 86400.0)),
    )
    if profile.known_networks.enabled and vpn is None:
        raise probe.error("skip_known_untrusted", "needs a [vpn] table: without a VPN to go "
                                                  "to, only the probe can tell a network")
    probe.done()
    features.done()
    top.done()
    return profile


def interface_name_problem(name: str) -> str:
    """Why the kernel would refuse ``name`` as a network interface name (its
    ``dev_valid_name``: 1 to IFNAMSIZ-1 bytes, not "." or "..", no '/', ':' or
    white space), or "" if it is valid."""
    raw = name.encode()
    if not raw:
        return "it is empty"
    if len(raw) >= IFNAMSIZ:
        return f"it is {len(raw)} bytes; at most {IFNAMSIZ - 1}"
    if name in (".", ".."):
        return "'.' and '..' are not allowed"
    bad = [c for c in name if c in "/:\0" or c.isspace() or not c.isprintable()]
    if bad:
        return f"{bad[0]!r} is not allowed"
    return ""


def dumps(p: Profile) -> str:
    """The profile as TOML (what ``SaveProfile`` writes): every string quoted and
    escaped, so ``loads(dumps(p)) == p`` whatever a value holds."""
    lines = [f"name = {_quote(p.name)}", f"home_address = {_quote(str(p.home_address))}",
             f"home_network = {_quote(str(p.home_network))}",
             f"home_agent = {_quote(str(p.home_agent))}",
             f"spi = {p.spi}", f"algorithm = {_quote(p.algorithm.value)}",
             f"lifetime = {p.lifetime}", f"renew_fraction = {p.renew_fraction!r}"]
    if p.nai is not None:
        lines.append(f"nai = {_quote(p.nai)}")
    if p.interface is not None:
        lines.append(f"interface = {_quote(p.interface)}")
    lines += [f"replay = {_quote(p.replay.value)}",
              f"udp_tunnelling = {_quote(p.udp_tunnelling.value)}"]
    if p.autoconnect:
        lines.append("autoconnect = true")
    lines += ["", "[probe]", f"initial_timeout = {p.initial_timeout!r}",
              f"retries = {p.retries}"]
    if p.known_networks != KnownNetworksConfig():
        lines += [f"skip_known_untrusted = {str(p.known_networks.enabled).lower()}",
                  f"recheck_after = {p.known_networks.recheck_after!r}"]
    lines += ["", "[features]",
              f"foreign_agents = {str(p.foreign_agents).lower()}",
              f"gate = {str(p.gate_enabled).lower()}",
              f"allow_lan = {str(p.allow_lan).lower()}", ""]
    if p.vpn is not None:
        lines += ["[vpn]", *vpn_profile.dump(p.vpn, p.home_network), ""]
    if p.dns is not None:
        lines += ["[dns]", *dns_profile.dump(p.dns), ""]
    return "\n".join(lines)


_quote = toml_string


def _short(text: str, limit: int = 64) -> str:
    """``repr`` of a value, cut short: an error message stays one short line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
