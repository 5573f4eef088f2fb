"""The VPN side of the mobile node's driver (mode mc): the machine's VPN actions
executed, charon's events turned into the machine's, the VPN probe's schedule.

Not the machine's VPN side (``app.mn.mode_vpn`` decides); this executes.  Like
``app.mn.vpn_link`` it never calls back into its owner: :meth:`VpnExecutor.events`
returns the machine's events for the driver to feed, :meth:`~VpnExecutor.get_timer`
says when :meth:`~VpnExecutor.tick` is due, and what is shown goes to the
:class:`~app.mn.status_board.StatusBoard` it is given.  It uses the routes and
sockets its owner holds (``app.net.mn_routes``, ``app.mn.sockets``) and the VPN
link (charon), and closes only the VPN link's tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address

from app.api import Mode, Probe
from app.mn import access_mode as am
from app.mn import status_view
from app.mn.mode_events import VpnNat
from app.mn.sockets import MobileNodeSockets
from app.mn.status_board import StatusBoard
from app.mn.vpn_link import VpnLink
from app.net.mn_routes import MobileNodeRoutes
from app.vpn.events import MobikeUpdate, VpnEvent

ECHO_INTERVAL = 30.0
"""Seconds between VPN probes while the VPN is up (charon's DPD says if it lives)."""


class VpnExecutor:
    def __init__(self, link: VpnLink | None, routes: MobileNodeRoutes,
                 sockets: MobileNodeSockets, board: StatusBoard,
                 memory: Callable[[str, str], None] | None = None) -> None:
        """``link``: None without a VPN in the profile (charon's events are ignored);
        ``memory``: keeps (network, gateway) that brought mc up."""
        self.link = link
        self.memory = memory
        self.routes = routes
        self.sockets = sockets
        self.board = board
        self.nat = status_view.VpnNatView()
        self.gateway: IPv4Address | None = None
        """The gateway of the TIA in use (UseTia): the VPN probe's target."""
        self.echo_at: float | None = None
        """When the next VPN probe is due."""

    # -- the machine's actions -----------------------------------------------------

    def start(self, a: am.StartVpn) -> None:
        """``StartVpn``: the gateways in the machine's order."""
        if self.link is not None:
            self.link.start(a.gateways)

    def remember(self, a: am.RememberGateway) -> None:
        """``RememberGateway``: kept in the helper's state directory (if it has one)."""
        if self.memory is not None:
            self.memory(a.network, a.gateway)

    def stop(self, reason: str) -> None:
        """``StopVpn``: stopped on purpose, no VPN to report on."""
        self.board.publish(replace(self.board.snapshot, vpn_probe=Probe()))
        if self.link is not None:
            self.link.stop(reason)

    async def use_tia(self, a: am.UseTia, now: float) -> None:
        """``UseTia``, after the link tracker learnt the TIA is never the link's: the
        gateway's route stays on the link, registrations leave from the TIA (before
        the machine's Send through the VPN); published, probed."""
        if a.gateway_address is not None:
            await self.routes.vpn_gateway(a.gateway_address)
        await self.routes.vpn_source(a.tia)  # before the registration through it
        self.sockets.open_vpn(a.tia)
        self.board.show(*status_view.vpn_up(self.board.snapshot, a))
        self.gateway = a.gateway_address
        self.nat_detected(a.nat_detected)  # charon's NAT-T
        self._send_echo(now)

    async def drop_tia(self) -> None:
        """``DropTia``: the TIA is no longer ours: its socket, its rule and its status go."""
        self.gateway = None
        self.sockets.close_vpn()
        await self.routes.vpn_source(None)
        self.board.publish(self.nat.vpn_gone(status_view.vpn_gone(self.board.snapshot)))

    def nat_detected(self, nat: bool) -> None:
        """``NatDetected``: charon said (again) whether the SA in use crosses a NAT."""
        self.board.show(*self.nat.vpn(self.board.snapshot, nat))

    def configured(self, mode: Mode, udp_tunnel: bool) -> None:
        """A data plane configured: mc shows the VPN's NAT, the others their own."""
        self.board.publish(self.nat.configured(self.board.snapshot, mode, udp_tunnel))

    # -- charon's events, the probe ------------------------------------------------

    def events(self, ev: VpnEvent | VpnNat, now: float) -> list[am.Event]:
        """charon's event (or what the VPN link read of it): the machine's events."""
        if self.link is None:
            return []
        if isinstance(ev, VpnNat):  # the machine says if it is the SA in use
            return [ev]
        events = self.link.translate(ev)
        if isinstance(ev, MobikeUpdate):
            self._send_echo(now)  # the VPN probe from the new path
        return events

    def echo_answered(self, gateway: IPv4Address, rtt: float, now: float) -> None:
        """The VPN probe's answer: shown if it is from the gateway in use."""
        if gateway == self.gateway:
            self.board.publish(replace(self.board.snapshot, vpn_probe=Probe(
                True, round(rtt * 1000, 3), self.board.to_wall(now))))

    def get_timer(self) -> float | None:
        return self.echo_at

    def tick(self, now: float) -> None:
        if self.echo_at is not None and now >= self.echo_at:
            self._send_echo(now)

    async def close(self) -> None:
        """The VPN link's tasks end and the tunnel is torn down (charon stays)."""
        if self.link is not None:
            await self.link.close()

    def _send_echo(self, now: float) -> None:
        """The VPN probe (``app.mn.sockets``), every ECHO_INTERVAL while the VPN is up."""
        gw = self.gateway
        link = self.routes.link
        self.echo_at = None
        if gw is None or link is None:
            return
        self.echo_at = now + ECHO_INTERVAL
        self.sockets.send_echo(gw, link.iface, link.address.ip)
