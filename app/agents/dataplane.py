"""The seam between the home agent's control plane and its data plane.

The control plane tells the data plane about binding changes; the data
plane attracts packets for home addresses and tunnels them (next issue:
userspace TUN + raw IPIP / UDP 434, and kernel ipip via pyroute2).
"""

from __future__ import annotations

import logging
from typing import Protocol

from app.agents.bindings import Binding
from app.agents.ha_config import DataPlaneKind
from app.config import ConfigError

log = logging.getLogger("trustroam.ha.dataplane")


class HomeAgentDataPlane(Protocol):
    def binding_up(self, binding: Binding) -> None:
        """Start attracting and tunnelling packets for ``binding.home_address``."""

    def binding_down(self, binding: Binding) -> None:
        """Stop: the binding was removed or expired."""

    def close(self) -> None:
        """Withdraw everything this data plane set up."""


class ControlPlaneOnly:
    """``dataplane = "none"``: registrations only, nothing forwarded; no root needed."""

    def binding_up(self, binding: Binding) -> None:
        pass

    def binding_down(self, binding: Binding) -> None:
        pass

    def close(self) -> None:
        pass


def select(kind: DataPlaneKind, source: str) -> HomeAgentDataPlane:
    if kind is DataPlaneKind.NONE:
        return ControlPlaneOnly()
    if kind is DataPlaneKind.AUTO:
        log.warning("no tunnelling data plane is built into this version yet; "
                    "serving registrations only (dataplane = \"none\")")
        return ControlPlaneOnly()
    raise ConfigError(source, "home_agent.dataplane",
                      f"{kind.value!r} is not available in this version; use \"none\" or "
                      "\"auto\"")
