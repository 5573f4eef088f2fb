"""The home agent's configuration file (``trustroam-ha --config ha.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from app.config import ConfigError, Section, load_toml, parse_security_association
from app.mip.auth import Algorithm
from app.mip.ident import DEFAULT_REPLAY_WINDOW
from app.mip.messages import MIP_PORT

ANY_ADDRESS = IPv4Address("0.0.0.0")  # listen on every interface, as an HA usually does


class ReplayStyle(Enum):
    TIMESTAMP = "timestamp"
    NONCE = "nonce"


class DataPlaneKind(Enum):
    AUTO = "auto"
    NONE = "none"
    USERSPACE = "userspace"
    KERNEL = "kernel"


class SyncMode(Enum):
    FULL = "full"
    """fsync each commit: bindings survive a power cut."""
    NORMAL = "normal"
    """no fsync per commit: bindings survive a crash of the home agent, not of the host."""


@dataclass(frozen=True)
class MobileNodeConfig:
    home_address: IPv4Address
    spi: int
    algorithm: Algorithm
    key: bytes = field(repr=False)
    nai: str | None = None
    replay: ReplayStyle = ReplayStyle.TIMESTAMP


@dataclass(frozen=True)
class ForeignAgentSA:
    """A security association with a foreign agent, known by its care-of address."""

    care_of_address: IPv4Address
    spi: int
    algorithm: Algorithm
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class HomeAgentConfig:
    address: IPv4Address
    home_network: IPv4Network
    mobile_nodes: tuple[MobileNodeConfig, ...]
    listen: IPv4Address = ANY_ADDRESS
    port: int = MIP_PORT
    max_lifetime: int = 600
    state_dir: Path = Path("/var/lib/trustroam-ha")
    dataplane: DataPlaneKind = DataPlaneKind.AUTO
    replay_window: float = DEFAULT_REPLAY_WINDOW
    reverse_tunnelling: bool = True
    udp_tunnelling: bool = True
    gre: bool = True
    """Offer GRE encapsulation (RFC 5944 3.3's G bit, RFC 2784) next to IP-in-IP;
    off, a request asking for it is denied 139."""
    keepalive_interval: int = 110
    sync: SyncMode = SyncMode.FULL
    source: str = "<built-in>"
    foreign_agents: tuple[ForeignAgentSA, ...] = ()

    def by_home_address(self) -> dict[IPv4Address, MobileNodeConfig]:
        return {mn.home_address: mn for mn in self.mobile_nodes}

    def by_nai(self) -> dict[str, MobileNodeConfig]:
        return {mn.nai: mn for mn in self.mobile_nodes if mn.nai}


def load(path: Path) -> HomeAgentConfig:
    """Read and check ``path``; raise :class:`ConfigError` naming the bad key."""
    doc = Section(str(path), "", load_toml(path))
    base = path.parent
    ha = doc.sub("home_agent", required=True)
    address = ha.ipv4("address", required=True)
    network = ha.network("home_network", required=True)
    if address not in network:
        raise ha.error("address", f"{address} is not inside home_network {network}")
    cfg = HomeAgentConfig(
        address=address,
        home_network=network,
        mobile_nodes=(),
        listen=ha.ipv4("listen", "0.0.0.0"),
        port=ha.int_("port", 434, lo=1, hi=65535),
        max_lifetime=ha.int_("max_lifetime", 600, lo=1, hi=65534),
        state_dir=_relative(base, ha.path("state_dir", "/var/lib/trustroam-ha")),
        dataplane=ha.enum("dataplane", DataPlaneKind, DataPlaneKind.AUTO),
        replay_window=ha.float_("replay_window", DEFAULT_REPLAY_WINDOW, lo=0.5, hi=3600.0),
        reverse_tunnelling=ha.bool_("reverse_tunnelling", True),
        udp_tunnelling=ha.bool_("udp_tunnelling", True),
        gre=ha.bool_("gre", True),
        keepalive_interval=ha.int_("keepalive_interval", 110, lo=1, hi=65535),
        sync=ha.enum("sync", SyncMode, SyncMode.FULL),
        source=str(path),
    )
    ha.done()

    nodes: list[MobileNodeConfig] = []
    seen_hoa: dict[IPv4Address, str] = {}
    seen_nai: dict[str, str] = {}
    for mn in doc.table_list("mobile_nodes"):
        hoa = mn.ipv4("home_address", required=True)
        if hoa not in network:
            raise mn.error("home_address", f"{hoa} is not inside home_network {network}")
        if hoa == address:
            raise mn.error("home_address", f"{hoa} is the home agent's own address")
        if hoa in (network.network_address, network.broadcast_address):
            raise mn.error("home_address", f"{hoa} is the network or broadcast address")
        if hoa in seen_hoa:
            raise mn.error("home_address", f"{hoa} is already used by {seen_hoa[hoa]}")
        seen_hoa[hoa] = mn.prefix
        nai = mn.optional_str("nai")
        if nai is not None:
            if not 0 < len(nai.encode()) <= 255:
                raise mn.error("nai", "must be 1 to 255 bytes")
            if nai in seen_nai:
                raise mn.error("nai", f"{nai!r} is already used by {seen_nai[nai]}")
            seen_nai[nai] = mn.prefix
        spi, algorithm, key = parse_security_association(mn, base)
        replay = mn.enum("replay", ReplayStyle, ReplayStyle.TIMESTAMP)
        mn.done()
        nodes.append(MobileNodeConfig(hoa, spi, algorithm, key, nai, replay))
    fas: list[ForeignAgentSA] = []
    for fa in doc.table_list("foreign_agents"):
        coa = fa.ipv4("care_of_address", required=True)
        if any(f.care_of_address == coa for f in fas):
            raise fa.error("care_of_address", f"{coa} is configured twice")
        spi, algorithm, key = parse_security_association(fa, base)
        fa.done()
        fas.append(ForeignAgentSA(coa, spi, algorithm, key))
    doc.done()
    if not nodes:
        raise ConfigError(str(path), "mobile_nodes", "no [[mobile_nodes]] configured")
    return replace(cfg, mobile_nodes=tuple(nodes), foreign_agents=tuple(fas))


def _relative(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else base / p
