"""The home agent's userspace data plane (TUN + raw IP-in-IP or GRE, RFC 3519 UDP).

For each binding it attracts the home address on the home link (a /32 route
into the TUN device and a proxy-ARP entry, announced with gratuitous ARP:
RFC 5944 section 4.6), tunnels what arrives to the care-of address, and takes
reverse-tunnelled packets (RFC 3024) only from the registered care-of address.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from app.agents.bindings import Binding
from app.errors import UserFacingError
from app.net.arp import ArpAnnouncer
from app.net.ipip import GRE_MTU, MTU, Endpoint, Key, UserspaceTunnel
from app.net.kernel_ipip import NTF_PROXY
from app.net.netlink import Netlink

log = logging.getLogger("trustroam.ha.dataplane")
TUN_NAME = "trha0"


class DataPlaneError(UserFacingError):
    """The data plane cannot be set up; the message says what is missing."""


class UserspaceHomeAgentPlane:
    def __init__(self, ha_address: IPv4Address, udp_socket: socket.socket | None = None,
                 tun_name: str = TUN_NAME, *, gre: bool = False) -> None:
        home = [a for a in _ip("-j", "-4", "addr", "show") if any(
            i.get("local") == str(ha_address) for i in a.get("addr_info", []))]
        if not home:
            raise DataPlaneError(f"no interface has the home agent address {ha_address}; "
                                 "the data plane attracts packets on the home link")
        self.ha_address = ha_address
        self.home_ifname: str = home[0]["ifname"]
        link = _ip("-j", "link", "show", "dev", self.home_ifname)[0]
        self.home_mac = bytes.fromhex(str(link["address"]).replace(":", ""))
        # Out by the home address (destination); in only from that home address's
        # registered care-of address (RFC 3024: the inner source's binding).
        self.tunnel = UserspaceTunnel(tun_name, Key.DESTINATION, Key.SOURCE,
                                      udp_socket=udp_socket, gre=gre)
        _ip("link", "set", tun_name, "up", "mtu", str(MTU))
        # Per-binding changes go over netlink (about 1 ms, on pyroute2's own thread):
        # an `ip` process per change cost 10-20 ms before each reply could leave.
        self.nl = Netlink()
        self.tun_index = int(self.nl.call("link_lookup", ifname=tun_name)[0])
        self.home_index = int(self.nl.call("link_lookup", ifname=self.home_ifname)[0])
        # Forwarding is what makes proxy ARP answer and decapsulated packets move on.
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        self._bindings: dict[bytes, Binding] = {}
        self.arp = ArpAnnouncer()

    def start(self) -> None:
        self.tunnel.start()
        log.info("userspace data plane on %s (%s tunnel engine)", self.home_ifname,
                 self.tunnel.engine_kind.value)

    def udp_tunnel_data(self, source: tuple[str, int], inner: bytes) -> None:
        """An RFC 3519 tunnel data message from the HA's port 434.

        Taken only from exactly the bound address and port (RFC 3519 4.3).  A new
        NAT mapping is learnt from a new registration (4.10), never from data: an
        unauthenticated packet must not redirect anyone's tunnel, not even from a
        host behind the same NAT.
        """
        if len(inner) < 20 or inner[0] >> 4 != 4:
            return
        home = inner[12:16]
        to = self.tunnel.route_of(home)  # the binding's UDP endpoint, kept in the tunnel
        if to is None or to[1] != source[1] or to[0] != socket.inet_aton(source[0]):
            self.tunnel.count_spoofed()
            return
        self.tunnel.write(inner)  # checked above: the binding's UDP endpoint

    def binding_up(self, binding: Binding) -> None:
        key = binding.home_address.packed
        self._bindings[key] = binding
        self.tunnel.set_route(key, Endpoint(str(binding.source_address), binding.source_port)
                              if binding.udp_tunnel else Endpoint(str(binding.care_of_address),
                                                                  gre=binding.gre))
        if binding.udp_tunnel:  # its packets come in over UDP 434 (udp_tunnel_data)
            self.tunnel.remove_accept(key)
        else:
            self.tunnel.set_accept(key, binding.care_of_address.packed, binding.gre)
        hoa = str(binding.home_address)
        # GRE's header is 4 bytes more than the TUN's MTU allows for: the route says so.
        mtu = {"metrics": {"mtu": GRE_MTU}} if binding.gre else {}
        try:
            # Both queued before waiting: the netlink thread runs them back to back.
            route = self.nl.submit("route", "replace", dst=f"{hoa}/32", oif=self.tun_index,
                                   **mtu)
            neigh = self.nl.submit("neigh", "replace", dst=hoa, ifindex=self.home_index,
                                   flags=NTF_PROXY)
            route.result()
            neigh.result()
            self.arp.announce(self.home_ifname, self.home_mac, binding.home_address)
        except Exception as exc:  # pyroute2's NetlinkError, OSError
            log.error("%s: cannot attract packets on %s: %s", hoa, self.home_ifname, exc)

    def binding_down(self, binding: Binding) -> None:
        key = binding.home_address.packed
        self._bindings.pop(key, None)
        self.tunnel.remove_route(key)
        self.tunnel.remove_accept(key)
        hoa = str(binding.home_address)
        self.arp.cancel(binding.home_address)
        for what, method, kwargs in (
                ("route", "route", {"dst": f"{hoa}/32", "oif": self.tun_index}),
                ("proxy ARP", "neigh", {"dst": hoa, "ifindex": self.home_index,
                                        "flags": NTF_PROXY})):
            try:
                self.nl.call(method, "del", **kwargs)
            except Exception as exc:  # already gone
                log.debug("%s: %s already gone: %s", hoa, what, exc)

    def close(self) -> None:
        for b in list(self._bindings.values()):
            self.binding_down(b)
        self.arp.cancel_all()
        self.tunnel.close()
        self.nl.close()


def _ip(*args: str) -> list[dict[str, Any]]:
    """Run ``ip``; netlink via pyroute2's sync API cannot run inside an asyncio loop."""
    out = subprocess.run(["ip", *args], capture_output=True, text=True,  # noqa: S603, S607
                         check=False)
    if out.returncode != 0:
        raise DataPlaneError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    if args[0] == "-j":
        result: list[dict[str, Any]] = json.loads(out.stdout or "[]")
        return result
    return []
