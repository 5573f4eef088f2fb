"""The seam between the home agent's control plane and its data plane.

The control plane tells the data plane about binding changes; the data
plane attracts packets for home addresses and tunnels them (next issue:
userspace TUN + raw IPIP / UDP 434, and kernel ipip via pyroute2).
"""

from __future__ import annotations

import logging
import socket
from typing import Protocol

from app.agents.bindings import Binding
from app.agents.ha_config import DataPlaneKind, HomeAgentConfig
from app.agents.ha_kernel import KernelHomeAgentPlane
from app.agents.ha_userspace import DataPlaneError, UserspaceHomeAgentPlane
from app.config import ConfigError
from app.net.kernel_ipip import ipip_supported
from app.net.netlink import Netlink

log = logging.getLogger("trustroam.ha.dataplane")


class HomeAgentDataPlane(Protocol):
    def start(self, udp_socket: socket.socket) -> None:
        """Begin forwarding; ``udp_socket`` is the registration socket (RFC 3519 sends there)."""

    def tunnel_data(self, source: tuple[str, int], inner: bytes) -> None:
        """An RFC 3519 tunnel data message arrived on the registration port."""

    def binding_up(self, binding: Binding) -> None:
        """Start attracting and tunnelling packets for ``binding.home_address``."""

    def binding_down(self, binding: Binding) -> None:
        """Stop: the binding was removed or expired."""

    def close(self) -> None:
        """Withdraw everything this data plane set up."""


class ControlPlaneOnly:
    """``dataplane = "none"``: registrations only, nothing forwarded; no root needed."""

    def start(self, udp_socket: socket.socket) -> None:
        pass

    def tunnel_data(self, source: tuple[str, int], inner: bytes) -> None:
        pass

    def binding_up(self, binding: Binding) -> None:
        pass

    def binding_down(self, binding: Binding) -> None:
        pass

    def close(self) -> None:
        pass


def select(config: HomeAgentConfig) -> HomeAgentDataPlane:
    """The configured data plane; ``auto`` takes the kernel's ipip when the kernel
    has it, else the userspace one, else (no root, no TUN) none."""
    kind = config.dataplane
    if kind is DataPlaneKind.NONE:
        return ControlPlaneOnly()
    if kind in (DataPlaneKind.KERNEL, DataPlaneKind.AUTO):
        try:
            nl = Netlink()
        except OSError as exc:
            nl = None
            why = f"netlink unavailable: {exc}"
        else:
            why = "this kernel has no ipip module (EOPNOTSUPP)"
        if nl is not None and ipip_supported(nl):
            try:
                return KernelHomeAgentPlane(nl, UserspaceHomeAgentPlane(config.address,
                                                                        gre=config.gre))
            except (OSError, DataPlaneError) as exc:
                nl.close()
                why = str(exc)
        elif nl is not None:
            nl.close()
        if kind is DataPlaneKind.KERNEL:
            raise ConfigError(config.source, "home_agent.dataplane",
                              f"\"kernel\" unavailable: {why}; use \"userspace\" or \"auto\"")
        log.info("kernel data plane unavailable (%s); using the userspace one", why)
    try:
        return _Userspace(config)
    except (OSError, DataPlaneError) as exc:
        if kind is DataPlaneKind.USERSPACE:
            raise ConfigError(config.source, "home_agent.dataplane",
                              f"userspace data plane unavailable: {exc}") from None
        log.warning("no data plane (%s); serving registrations only", exc)
        return ControlPlaneOnly()


class _Userspace:
    """Adapter: the userspace plane starts its tunnel once the server has its socket."""

    def __init__(self, config: HomeAgentConfig) -> None:
        self.config = config
        self.plane = UserspaceHomeAgentPlane(config.address, gre=config.gre)

    def start(self, udp_socket: socket.socket) -> None:
        self.plane.tunnel.attach_udp(udp_socket)
        self.plane.start()

    def tunnel_data(self, source: tuple[str, int], inner: bytes) -> None:
        self.plane.udp_tunnel_data(source, inner)

    def binding_up(self, binding: Binding) -> None:
        self.plane.binding_up(binding)

    def binding_down(self, binding: Binding) -> None:
        self.plane.binding_down(binding)

    def close(self) -> None:
        self.plane.close()
