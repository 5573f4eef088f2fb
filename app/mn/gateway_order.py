"""Which VPN gateway to try first: the failover decision, sans-I/O.

A profile lists its gateways in order.  The order tried on a network is:

1. the gateway that last brought mode mc up on this network (remembered per
   network, across restarts by ``app.service.gateway_memory``), then the others
   in the profile's order;
2. rotated past a gateway that died in use: the next one of the list is tried
   first, the dead one last (it may be back by then; a new IKE SA costs little
   when it is not).

A network is named by :func:`network_key`: its prefix and its router's address
as DHCP gave them (no identity is proven: a wrong guess only changes the order
of an attempt, never what the gate lets through).
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Interface

DEAD_HOLD = 300.0
"""Seconds a gateway that died in use stays behind the others."""


def network_key(address: IPv4Interface, router: IPv4Address | None) -> str:
    """The network the link is on, as a remembered gateway is keyed."""
    return f"{address.network} via {router}" if router is not None else str(address.network)


class GatewayOrder:
    def __init__(self, gateways: tuple[str, ...],
                 remembered: Mapping[str, str] | None = None, *,
                 dead_after: float | None = None) -> None:
        """``gateways``: the profile's, in its order; ``remembered``: network key ->
        the gateway that worked there last (others than the profile's are ignored);
        ``dead_after``: the profile's ``dead_gateway_after`` (None: no bound of the
        machine's own, e.g. on MOBIKE after a move)."""
        if not gateways:
            raise ValueError("a VPN needs at least one gateway")
        self.gateways = gateways
        self.dead_after = dead_after
        self.remembered = {n: g for n, g in (remembered or {}).items() if g in gateways}
        self._dead: dict[str, float] = {}
        """Gateway -> when it died in use (the newest last)."""

    def order(self, network: str | None, now: float) -> tuple[str, ...]:
        """The gateways to try on ``network`` now, the first first."""
        first = self.remembered.get(network) if network is not None else None
        base = [first] if first is not None else []
        base += [g for g in self.gateways if g != first]
        dead = [g for g, at in self._dead.items() if now - at < DEAD_HOLD]
        if dead:
            # The next one after the newest death first (the list's order, rotated),
            # every gateway that died lately behind the living ones.
            newest = dead[-1]
            i = self.gateways.index(newest)
            rotated = [*self.gateways[i + 1:], *self.gateways[:i + 1]]
            if first is not None and first not in dead:
                rotated.remove(first)
                rotated.insert(0, first)
            base = rotated
            base = [g for g in base if g not in dead] + [g for g in base if g in dead]
        return tuple(base)

    def dead(self, gateway: str, now: float) -> None:
        """``gateway`` went silent (or away) while in use."""
        if gateway in self.gateways:
            self._dead.pop(gateway, None)
            self._dead[gateway] = now

    def worked(self, network: str | None, gateway: str) -> bool:
        """``gateway`` brought mc up on ``network``; True if that is news to remember."""
        self._dead.pop(gateway, None)
        if network is None or gateway not in self.gateways:
            return False
        if self.remembered.get(network) == gateway:
            return False
        self.remembered[network] = gateway
        return True

    def has_other(self, gateway: str) -> bool:
        """Another gateway than ``gateway`` to move to at once (one that died lately
        too is tried last, but tried: it may be back, and a new IKE SA costs little)."""
        return any(g != gateway for g in self.gateways)
