"""The lab's world as data: namespaces, links, addresses, routes (docs/ARCHITECTURE.md section 7).

Pure: nothing here runs a command.  ``app.lab.world`` turns it into namespaces.
Every name the lab creates starts with ``tr-`` (namespaces) or lives inside one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv4Network

PREFIX = "tr-"
SWITCH = "tr-sw"
"""The namespace holding every link's bridge; the MN's cable is re-plugged there."""
MN = "tr-mn"
MN_IFACE = "eth0"
MN_PORT = "mn0"
"""The MN cable's end in the switch namespace."""
MN_IFACE2 = "eth1"
MN_PORT2 = "mn1"
"""The MN's second link (its Wi-Fi next to the Ethernet) and its end in the switch:
made only when a test plugs it (``Lab.plug_second``)."""
SECOND_METRIC = 600
"""The second link's default route metric (NetworkManager's for Wi-Fi): the first
link's route wins while it has one."""


@dataclass(frozen=True)
class Port:
    """One interface of a node, cabled to a bridge in the switch namespace."""

    node: str
    iface: str
    link: str
    address: IPv4Interface


@dataclass(frozen=True)
class AccessNet:
    """A link the mobile node can be plugged into."""

    name: str
    link: str
    trusted: bool
    dhcp_server: str
    """Node whose port on this link runs dnsmasq."""
    router: IPv4Interface
    pool: tuple[str, str]
    foreign_agent: str | None = None
    behind_nat: bool = False
    home: bool = False


@dataclass(frozen=True)
class Topology:
    nodes: tuple[str, ...]
    links: tuple[str, ...]
    ports: tuple[Port, ...]
    routes: dict[str, tuple[tuple[str, str], ...]]
    """node -> (destination, gateway) pairs; destination "default" allowed."""
    routers: frozenset[str]
    access: dict[str, AccessNet] = field(default_factory=dict)
    home_network: IPv4Network = field(default_factory=lambda: IPv4Network("10.20.1.0/24"))

    def port(self, node: str, link: str) -> Port:
        for p in self.ports:
            if p.node == node and p.link == link:
                return p
        raise KeyError(f"{node} has no port on {link}")

    def address(self, node: str, link: str) -> str:
        return str(self.port(node, link).address.ip)


def _i(text: str) -> IPv4Interface:
    return IPv4Interface(text)


def default() -> Topology:
    """Intranet (home link, two trusted DHCP links, two FA links), DMZ with two
    VPN gateways, external public and NATed links."""
    ports = (
        # intranet backbone
        Port("tr-ir", "core", "core", _i("10.0.0.1/24")),
        Port("tr-fw", "core", "core", _i("10.0.0.2/24")),
        Port("tr-fa1", "core", "core", _i("10.0.0.11/24")),
        Port("tr-fa2", "core", "core", _i("10.0.0.12/24")),
        # home link: home agent, correspondent node, router
        Port("tr-ir", "home", "home", _i("10.20.1.254/24")),
        Port("tr-ha", "home", "home", _i("10.20.1.1/24")),
        Port("tr-cn", "home", "home", _i("10.20.1.99/24")),
        # trusted DHCP links (mode c)
        Port("tr-ir", "t1", "t1", _i("10.30.1.1/24")),
        Port("tr-ir", "t2", "t2", _i("10.30.2.1/24")),
        # foreign-agent links (mode f): the FA is the link's router
        Port("tr-fa1", "fa", "fa1", _i("10.40.1.1/24")),
        Port("tr-fa2", "fa", "fa2", _i("10.40.2.1/24")),
        # DMZ
        Port("tr-fw", "dmz", "dmz", _i("172.16.0.1/24")),
        Port("tr-gw1", "dmz", "dmz", _i("172.16.0.11/24")),
        Port("tr-gw2", "dmz", "dmz", _i("172.16.0.12/24")),
        # outside
        Port("tr-fw", "ext", "ext", _i("198.51.100.2/24")),
        Port("tr-er", "ext", "ext", _i("198.51.100.1/24")),
        Port("tr-nat", "ext", "ext", _i("198.51.100.3/24")),
        Port("tr-er", "pub", "pub", _i("203.0.113.1/24")),
        Port("tr-nat", "natl", "natl", _i("192.168.50.1/24")),
        # an intranet branch behind a masquerading router: trusted, but behind a NAT
        Port("tr-bnat", "core", "core", _i("10.0.0.21/24")),
        Port("tr-bnat", "bnat", "bnat", _i("192.168.60.1/24")),
    )
    intranet = ("10.20.0.0/16", "10.30.0.0/16", "10.40.0.0/16")
    routes = {
        "tr-ha": (("default", "10.20.1.254"),),
        "tr-cn": (("default", "10.20.1.254"),),
        "tr-ir": (("default", "10.0.0.2"), ("10.40.1.0/24", "10.0.0.11"),
                  ("10.40.2.0/24", "10.0.0.12")),
        "tr-fa1": (("default", "10.0.0.1"),),
        "tr-fa2": (("default", "10.0.0.1"),),
        "tr-fw": (*((n, "10.0.0.1") for n in intranet),
                  ("10.99.1.0/24", "172.16.0.11"), ("10.99.2.0/24", "172.16.0.12"),
                  ("default", "198.51.100.1")),
        "tr-gw1": (("default", "172.16.0.1"),),
        "tr-gw2": (("default", "172.16.0.1"),),
        "tr-er": (("172.16.0.0/24", "198.51.100.2"),),
        "tr-nat": (("default", "198.51.100.1"),),
        "tr-bnat": (("default", "10.0.0.1"),),
    }
    access = {
        "home": AccessNet("home", "home", True, "tr-ir", _i("10.20.1.254/24"),
                          ("10.20.1.200", "10.20.1.220"), home=True),
        "t1": AccessNet("t1", "t1", True, "tr-ir", _i("10.30.1.1/24"),
                        ("10.30.1.100", "10.30.1.200")),
        "t2": AccessNet("t2", "t2", True, "tr-ir", _i("10.30.2.1/24"),
                        ("10.30.2.100", "10.30.2.200")),
        "fa1": AccessNet("fa1", "fa1", True, "tr-fa1", _i("10.40.1.1/24"),
                         ("10.40.1.100", "10.40.1.200"), foreign_agent="tr-fa1"),
        "fa2": AccessNet("fa2", "fa2", True, "tr-fa2", _i("10.40.2.1/24"),
                         ("10.40.2.100", "10.40.2.200"), foreign_agent="tr-fa2"),
        "pub": AccessNet("pub", "pub", False, "tr-er", _i("203.0.113.1/24"),
                         ("203.0.113.100", "203.0.113.200")),
        "nat": AccessNet("nat", "natl", False, "tr-nat", _i("192.168.50.1/24"),
                         ("192.168.50.100", "192.168.50.200"), behind_nat=True),
        "bnat": AccessNet("bnat", "bnat", True, "tr-bnat", _i("192.168.60.1/24"),
                          ("192.168.60.100", "192.168.60.200"), behind_nat=True),
    }
    nodes = ("tr-sw", "tr-ir", "tr-fw", "tr-ha", "tr-cn", "tr-fa1", "tr-fa2", "tr-gw1",
             "tr-gw2", "tr-er", "tr-nat", "tr-bnat", MN)
    links = ("core", "home", "t1", "t2", "fa1", "fa2", "dmz", "ext", "pub", "natl", "bnat")
    return Topology(nodes, links, ports, routes,
                    frozenset({"tr-ir", "tr-fw", "tr-fa1", "tr-fa2", "tr-er", "tr-nat",
                               "tr-bnat", "tr-gw1", "tr-gw2", "tr-ha"}), access)


def bridge(link: str) -> str:
    return f"br-{link}"


def switch_port(port: Port) -> str:
    """The cable's end in the switch namespace: short, unique, within IFNAMSIZ."""
    return f"{port.node.removeprefix(PREFIX)}-{port.iface}"[:15]
