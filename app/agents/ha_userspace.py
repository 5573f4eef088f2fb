"""The home agent's userspace data plane (TUN + raw IP-in-IP, RFC 3519 UDP).

For each binding it attracts the home address on the home link (a /32 route
into the TUN device and a proxy-ARP entry, announced with gratuitous ARP:
RFC 5944 section 4.6), tunnels what arrives to the care-of address, and takes
reverse-tunnelled packets (RFC 3024) only from the registered care-of address.
"""

from __future__ import annotations

import logging
import socket
from ipaddress import IPv4Address
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_PROXY

from app.agents.bindings import Binding
from app.net.arp import send_gratuitous_arp
from app.net.ipip import MTU, Endpoint, UserspaceTunnel

log = logging.getLogger("trustroam.ha.dataplane")
TUN_NAME = "trha0"


class DataPlaneError(Exception):
    """The data plane cannot be set up; the message says what is missing."""


class UserspaceHomeAgentPlane:
    def __init__(self, ha_address: IPv4Address, udp_socket: socket.socket | None = None,
                 tun_name: str = TUN_NAME) -> None:
        self.ipr = IPRoute()
        home = [a for a in self.ipr.get_addr(family=socket.AF_INET)
                if a.get_attr("IFA_ADDRESS") == str(ha_address)]
        if not home:
            raise DataPlaneError(f"no interface has the home agent address {ha_address}; "
                                 "the data plane attracts packets on the home link")
        self.home_index: int = home[0]["index"]
        link = self.ipr.get_links(self.home_index)[0]
        self.home_ifname: str = link.get_attr("IFLA_IFNAME")
        self.home_mac = bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))
        self.endpoints: dict[bytes, Endpoint] = {}
        self.tunnel = UserspaceTunnel(tun_name, self.endpoints.get, self._accept, udp_socket)
        idx = self.ipr.link_lookup(ifname=tun_name)
        self.tun_index: int = idx[0]
        self.ipr.link("set", index=self.tun_index, state="up", mtu=MTU)
        # Forwarding is what makes proxy ARP answer and decapsulated packets move on.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        self._bindings: dict[bytes, Binding] = {}

    def start(self) -> None:
        self.tunnel.start()

    def _accept(self, outer_src: bytes, inner_src: bytes) -> bool:
        ep = self.endpoints.get(inner_src)
        return ep is not None and ep.udp_port is None and socket.inet_aton(ep.address) == outer_src

    def udp_tunnel_data(self, source: tuple[str, int], inner: bytes) -> None:
        """An RFC 3519 tunnel data message from the HA's port 434."""
        if len(inner) < 20:
            return
        ep = self.endpoints.get(inner[12:16])
        if ep is None or ep.udp_port is None or ep.address != source[0]:
            self.tunnel.stats["dropped_spoofed"] += 1
            return
        if ep.udp_port != source[1]:
            # The NAT rebound: follow the mapping of the authenticated binding's address.
            log.info("%s: NAT mapping moved to %s:%d", socket.inet_ntoa(inner[12:16]), *source)
            self.endpoints[inner[12:16]] = Endpoint(source[0], source[1])
        self.tunnel.deliver(socket.inet_aton(source[0]), inner)

    def binding_up(self, binding: Binding) -> None:
        key = binding.home_address.packed
        self.endpoints[key] = (Endpoint(str(binding.source_address), binding.source_port)
                               if binding.udp_tunnel else Endpoint(str(binding.care_of_address)))
        self._bindings[key] = binding
        hoa = str(binding.home_address)
        try:
            self.ipr.route("replace", dst=f"{hoa}/32", oif=self.tun_index)
            self.ipr.neigh("replace", dst=hoa, ifindex=self.home_index, flags=NTF_PROXY)
            send_gratuitous_arp(self.home_ifname, self.home_mac, binding.home_address)
        except (NetlinkError, OSError) as exc:
            log.error("%s: cannot attract packets on %s: %s", hoa, self.home_ifname, exc)

    def binding_down(self, binding: Binding) -> None:
        key = binding.home_address.packed
        self.endpoints.pop(key, None)
        self._bindings.pop(key, None)
        hoa = str(binding.home_address)
        try:
            self.ipr.route("del", dst=f"{hoa}/32", oif=self.tun_index)
        except NetlinkError as exc:
            log.debug("%s: route already gone: %s", hoa, exc)
        try:
            self.ipr.neigh("del", dst=hoa, ifindex=self.home_index, flags=NTF_PROXY)
        except NetlinkError as exc:
            log.debug("%s: proxy ARP entry already gone: %s", hoa, exc)

    def close(self) -> None:
        for b in list(self._bindings.values()):
            self.binding_down(b)
        self.tunnel.close()
        self.ipr.close()
