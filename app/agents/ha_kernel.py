"""The home agent's kernel data plane: ipip devices for IP-in-IP bindings, gre
devices for GRE bindings where the kernel has ``ip_gre``, the userspace plane for
RFC 3519 UDP bindings (which have no kernel implementation) and for GRE bindings
where the kernel has no gre."""

from __future__ import annotations

import logging
import socket

from app.agents.bindings import Binding
from app.agents.ha_userspace import UserspaceHomeAgentPlane
from app.net.kernel_ipip import KernelIpipTunnels, gre_supported
from app.net.netlink import Netlink

log = logging.getLogger("trustroam.ha.dataplane")


class KernelHomeAgentPlane:
    def __init__(self, nl: Netlink, userspace: UserspaceHomeAgentPlane) -> None:
        self.nl = nl
        self.userspace = userspace
        home_index = nl.call("link_lookup", ifname=userspace.home_ifname)[0]
        self.kernel = KernelIpipTunnels(nl, userspace.ha_address, home_index)
        # Probed only if GRE is offered (the userspace tunnel then has its socket).
        self.kernel_gre = userspace.tunnel.gre is not None and gre_supported(nl)
        if userspace.tunnel.gre is not None and not self.kernel_gre:
            log.info("this kernel has no gre (EOPNOTSUPP): GRE bindings in userspace")

    def start(self, udp_socket: socket.socket) -> None:
        self.userspace.tunnel.attach_udp(udp_socket)
        self.userspace.start()

    def tunnel_data(self, source: tuple[str, int], inner: bytes) -> None:
        self.userspace.udp_tunnel_data(source, inner)

    def binding_up(self, binding: Binding) -> None:
        if binding.udp_tunnel or (binding.gre and not self.kernel_gre):
            self.kernel.down(binding.home_address)
            self.userspace.binding_up(binding)
            return
        self.userspace.binding_down(binding)
        self.kernel.up(binding.home_address, binding.care_of_address, binding.gre)
        try:
            self.userspace.arp.announce(self.userspace.home_ifname, self.userspace.home_mac,
                                        binding.home_address)
        except OSError as exc:
            log.warning("%s: gratuitous ARP failed: %s", binding.home_address, exc)

    def binding_down(self, binding: Binding) -> None:
        self.kernel.down(binding.home_address)
        self.userspace.binding_down(binding)

    def close(self) -> None:
        self.kernel.close()
        self.userspace.close()
        self.nl.close()
