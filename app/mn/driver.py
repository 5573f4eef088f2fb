"""The asyncio driver of the mobile node: feeds the machines, executes their actions.

Inputs (link snapshots, datagrams from the home agent, agent advertisements,
timer expiries, commands) go through one queue to one task, so the sans-I/O
machines are only ever called from one place, in order.  Actions are executed
in the order the machine gives them (it shuts the gate before it withdraws a
path and configures a path before it opens the gate on it); only publishing
(status, history) waits until the step's other actions are done.

The driver owns the sockets (``app.mn.sockets``: registration, agent discovery,
the TIA's registrations, the VPN probe); it drives the routes (``app.net.mn_routes``)
and the gate (``app.net.gate``), which its owner starts and closes; it reports a
:class:`~app.api.Snapshot` and history entries.

The VPN side (mode mc) is ``app.mn.vpn_executor``: it executes the machine's VPN
actions and turns charon's events (they come back through the same queue) into
the machine's; ``app.mn.vpn_link`` drives charon (commands as tasks, so a slow
charon never holds the queue).  What is shown goes through
``app.mn.status_board``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface

from app.api import HistoryEntry, Mode, Policy, Snapshot, State
from app.mn import access_mode as am
from app.mn import driver_inputs as inputs
from app.mn import status_view
from app.mn.gateway_order import GatewayOrder
from app.mn.home_arp import HomeArpPermit
from app.mn.known_networks import KnownNetworks
from app.mn.link_tracker import LinkTracker
from app.mn.mode_events import NatDetected, Stopped
from app.mn.profile import Profile
from app.mn.reply_path import Path, PathClient
from app.mn.sockets import MobileNodeSockets
from app.mn.status_board import StatusBoard
from app.mn.tunnel_keepalive import TunnelKeepalive
from app.mn.vpn_executor import VpnExecutor
from app.mn.vpn_link import VpnLink
from app.net.gate import GateError, TrafficGate
from app.net.gate_rules import ProvenPath
from app.net.links import LinkSnapshot
from app.net.mn_routes import LinkInfo, MobileNodeRoutes
from app.net.network_identity import network_identity
from app.vpn.charon import Charon
from app.vpn.events import VpnEvent

IDENTIFY_TIMEOUT = 1.0
"""The most a link-up waits for its network's identity (RFC 5266 5)."""
log = logging.getLogger("trustroam.mn")
SHUTDOWN_WAIT = 1.5
"""Seconds to wait for the home agent to confirm a deregistration at shutdown."""


def boottime() -> float:
    """Monotonic seconds that also count suspend (CLOCK_BOOTTIME): a wall clock that
    steps moves no deadline, and after a resume the binding's lifetime has run on
    as it has at the home agent (RFC 5944 3.6.2.2)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class MobileNodeDriver:
    def __init__(self, profile: Profile, key: bytes, routes: MobileNodeRoutes,
                 gate: TrafficGate | None, *,
                 on_snapshot: Callable[[Snapshot], None] = lambda s: None,
                 on_event: Callable[[HistoryEntry], None] = lambda e: None,
                 clock: Callable[[], float] = boottime,
                 wall: Callable[[], float] = time.time,
                 charon: Charon | None = None,
                 vpn_secrets: Mapping[str, str] | None = None,
                 policy: Policy = Policy.AUTO,
                 known_networks: Mapping[str, float] | None = None,
                 remember_network: Callable[[am.RememberNetwork], None] = lambda a: None,
                 identify: Callable[[str, IPv4Interface, IPv4Address | None, str],
                                    Awaitable[str | None]] = network_identity,
                 gateways_remembered: Mapping[str, str] | None = None,
                 remember_gateway: Callable[[str, str], None] | None = None,
                 gateway_addresses: Callable[[str], Collection[IPv4Address]] | None = None
                 ) -> None:
        """``routes``, ``gate`` and ``charon`` (the VPN adapter, used when the profile
        has a ``[vpn]`` table) come started from their owner (the helper), who also
        closes them: the driver only uses them, and the owner routes charon's events
        to :meth:`vpn_event`.  ``vpn_secrets``: charon's secrets by key name
        (``vpn_psk``...), handed to it over VICI only.  ``clock``: the
        machines' and the timers' (monotonic: a wall clock that steps moves no
        deadline; the loop's own is monotonic too); ``wall``: Unix time, for the
        identification (RFC 5944 5.7) and what is published (history, expiry).
        ``known_networks``, ``remember_network``: the verdicts of RFC 5266 5's known
        networks as the owner keeps them; ``identify``: a link's network identity."""
        self.profile = profile
        self.charon = charon if profile.vpn is not None else None
        self.board = StatusBoard(
            Snapshot(profile=profile.name, home_address=str(profile.home_address)),
            on_snapshot=on_snapshot, on_event=on_event, clock=clock, wall=wall)
        self.routes = routes
        self.gate = gate if profile.gate_enabled else None
        self.clock = self.board.clock  # one time base for the driver and what it publishes
        self.wall = self.board.wall
        self._arrival: Path | None = None
        """The path of the datagram being handled: each client takes its own only."""
        to_wall = self.board.to_wall
        self.client = PathClient(profile.registration(key), Path.LINK, self._arrived_by,
                                 wall=to_wall)
        # Mode mc's registrations through the VPN: the same home agent, the same
        # replay state (RFC 5944 5.7), another path.  The profile's RFC 3519 choice
        # holds there too: RFC 5266 4, a TIA from a pool the gateway NATs towards the
        # intranet needs Mobile IP NAT traversal inside IPsec NAT-T ("auto" asks,
        # the home agent grants it when the source it sees is not the TIA).
        self.vpn_client = PathClient(
            profile.registration(key), Path.VPN, self._arrived_by,
            replay=self.client.replay, wall=to_wall) if self.charon is not None else None
        # Which gateway first, per network, and the failover (app.mn.gateway_order).
        order = GatewayOrder(profile.vpn.gateways, gateways_remembered,
                             dead_after=profile.vpn.dead_gateway_after) if (
            profile.vpn is not None) else None
        self.machine = am.AccessModeMachine(
            profile.home_network, self.client, use_foreign_agents=profile.foreign_agents,
            vpn_client=self.vpn_client, policy=policy,
            keep_alive_inside=profile.vpn.keep_alive_inside if profile.vpn else False,
            known=KnownNetworks(profile.known_networks, known_networks), to_wall=to_wall,
            gateway_order=order)
        self._remember_network = remember_network
        self._identify = identify
        self._identity: tuple[tuple[str, IPv4Interface, IPv4Address | None],
                              str | None] | None = None
        """The last link's identity, by (interface, address, router)."""
        self.tracker = LinkTracker(profile.home_address)
        self.home_arp = HomeArpPermit()
        routes.arp.permit = self.home_arp
        self._queue: asyncio.Queue[inputs.Input] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.keepalive = TunnelKeepalive(profile.home_address, profile.home_agent)
        """RFC 3519 keepalives while the binding is UDP-tunnelled."""
        self.sockets = MobileNodeSockets(
            profile.home_agent,
            on_datagram=lambda data, path: self._queue.put_nowait(inputs.Received(data, path)),
            on_tunnel_data=self._tunnel_data,
            udp_tunnel=lambda: self.keepalive.running,  # it runs exactly then
            udp_tunnel_via_vpn=lambda: self.keepalive.via_vpn,
            on_advert=self._queue.put_nowait,
            on_echo=lambda gw, rtt: self._queue.put_nowait(inputs.VpnEcho(gw, rtt)),
            on_history=self.board.history)
        # ``vpn_secrets`` as given, not copied: its repr hides the values.
        link = VpnLink(
            self.charon, profile.vpn, vpn_secrets or {},
            events=lambda ev: self._queue.put_nowait(inputs.VpnInput(ev)),
            history=self.board.history,
            allowed_peers=self.gate.policy.gateways if self.gate is not None else None,
            addresses_of=gateway_addresses,
        ) if self.charon is not None and profile.vpn else None
        self.vpn = VpnExecutor(link, routes, self.sockets, self.board, remember_gateway)
        self._binding_view = status_view.BindingView()
        self._gate_at = 0.0
        self._stopped = False
        """The machine said ``Stopped``: no binding of ours stands."""
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def snapshot(self) -> Snapshot:
        """What is published now."""
        return self.board.snapshot

    # -- inputs (any thread-free caller on the loop) -------------------------------

    async def start(self) -> None:
        """Run on the started gate, routes and charon the owner handed over."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="mn-driver")
        if self.vpn.link is not None:
            await self.vpn.link.begin()

    def vpn_event(self, event: VpnEvent) -> None:
        """One of charon's events (its owner routes them here)."""
        self._queue.put_nowait(inputs.VpnInput(event))

    def link_snapshot(self, snap: LinkSnapshot) -> None:
        self._queue.put_nowait(snap)

    def set_policy(self, policy: Policy) -> None:
        """The user's policy (auto, always-vpn, never-vpn), applied at once."""
        self._queue.put_nowait(inputs.PolicyInput(policy))

    def reprobe(self) -> None:
        """Resume from suspend, or the user asked: probe the current link again."""
        self._queue.put_nowait(am.Resumed())

    async def stop(self) -> None:
        """Deregister (briefly waiting for the answer), end the tunnel through charon,
        close the driver's own sockets and tasks.  The gate, routes and charon stay
        as they are: their owner closes them."""
        if self._task is None:
            return
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        self._queue.put_nowait(inputs.Stop(done))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), SHUTDOWN_WAIT)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self._timer is not None:
            self._timer.cancel()
        self.sockets.close()
        await self.vpn.close()
        self.board.publish(replace(self.snapshot, state=State.OFFLINE, mode=Mode.NONE,
                                   interface="", care_of_address="", binding_expires=0.0))

    def _arrived_by(self) -> Path | None:
        return self._arrival

    # -- the one consumer ---------------------------------------------------------

    async def _run(self) -> None:
        stopping: inputs.Stop | None = None
        while True:
            item = await self._queue.get()
            now = self.clock()
            try:
                if isinstance(item, LinkSnapshot):
                    # Any change of the link ends pending announcements of the home
                    # address: the next one may already be on another network.
                    self.routes.arp.cancel_all()
                    for ev in self.tracker.observe(item, now):
                        await self._link_event(ev, now)
                elif isinstance(item, inputs.Received):
                    self._arrival = item.path
                    try:
                        actions = self.machine.receive(item.data, now)
                    finally:
                        self._arrival = None
                    await self._execute(actions, now)
                elif isinstance(item, am.AgentAdvert | am.Resumed):
                    if isinstance(item, am.Resumed):
                        self.board.history("reprobe", {})
                    await self._feed(item, now)
                elif isinstance(item, inputs.Tick):
                    await self._tick(now)
                elif isinstance(item, inputs.Stop):
                    stopping = item
                    await self._feed(am.Shutdown(can_send=self.sockets.can_register), now)
                elif isinstance(item, inputs.VpnInput):
                    for mev in self.vpn.events(item.event, now):
                        await self._feed(mev, now)
                elif isinstance(item, inputs.PolicyInput):
                    self.board.history("policy-applied", {"policy": item.policy.value})
                    await self._feed(am.PolicySet(item.policy), now)
                elif isinstance(item, inputs.VpnEcho):
                    self.vpn.echo_answered(item.gateway, item.rtt, now)
            except Exception:  # one bad step must not kill the helper: log, go on
                log.exception("mobile-node driver step failed")
            self._update_binding()
            if stopping is not None and self._stopped and not stopping.done.done():
                stopping.done.set_result(None)
            self._arm_timer()

    async def _link_event(self, ev: am.LinkUp | am.LinkDown | am.LinkLost, now: float) -> None:
        if not self.keepalive.via_vpn:  # (mc's is the gateway's: MOBIKE keeps it)
            self.keepalive.stop()  # a mapping through another link is no mapping here
        if isinstance(ev, am.LinkUp):
            if self.gate is not None:  # before anything: its name may look local
                await self.gate.manage(ev.iface)
            if self.profile.known_networks.enabled and self.charon is not None:
                ev = replace(ev, network=await self._network_of(ev))  # before any probe
                now = self.clock()  # the ARP took time: the machine's timers start now
            self.board.history("link-up", {"interface": ev.iface, "address": str(ev.address),
                                           "gateway": str(ev.gateway),
                                           **({"network": ev.network[:8]} if ev.network
                                              else {})})
        elif isinstance(ev, am.LinkLost):
            self._identity = None  # the cable may be in another network when it is back
            self.board.history("link-lost", {"interface": ev.iface})
        else:
            self._identity = None
            self.board.history("link-down", {"interface": ev.iface})
            self.sockets.close_link()  # the VPN's TIA may outlive the link
        await self._feed(ev, now)

    async def _network_of(self, ev: am.LinkUp) -> str | None:
        """The link's network identity (RFC 5266 5): asked once per link (the same link
        reported again, e.g. when charon's TIA is set aside, keeps it), bounded in
        time, and None whatever goes wrong: the link is then probed as usual."""
        key = (ev.iface, ev.address, ev.gateway)
        if self._identity is not None and self._identity[0] == key:
            return self._identity[1]
        p = self.profile
        try:
            async with asyncio.timeout(IDENTIFY_TIMEOUT):
                network = await self._identify(ev.iface, ev.address, ev.gateway,
                                               f"{p.name}|{p.home_agent}|{p.spi}")
        except Exception as exc:  # never a reason to lose the link-up
            log.warning("%s: no network identity (%s): probing as usual", ev.iface,
                        exc or type(exc).__name__)
            network = None
        self._identity = (key, network)
        return network

    async def _feed(self, ev: am.Event, now: float) -> None:
        await self._execute(self.machine.handle(ev, now), now)

    async def _execute(self, actions: list[am.Action], now: float) -> None:
        for a in actions:  # in the machine's order: it is the gate's safety
            t0 = time.perf_counter()
            self.home_arp.note(a)
            if isinstance(a, am.Gate):
                await self._gate(a.path, a.home_probe)
            elif isinstance(a, am.PrepareLink):
                await self._prepare_link(a)
            elif isinstance(a, am.ClaimHome):
                # RFC 5944 4.6: the home address here and its gratuitous ARP, before the
                # deregistration (the next action); its reply comes back to it.
                try:
                    await self.routes.home_for_probe(a.iface)
                except OSError as exc:  # the ARP and the deregistration still go, in order
                    log.warning("%s: cannot put the home address on it: %s", a.iface,
                                exc.strerror or exc)
                self.routes.announce_home(a.iface)
            elif isinstance(a, am.Send):
                self.sockets.send(a)
            elif isinstance(a, am.Solicit):
                self.sockets.solicit(a.iface)
            elif isinstance(a, am.ConfigureDataPlane):
                via_vpn = a.mode is Mode.VPN  # RFC 5266 4: the TIA's socket in mc
                udp = self.sockets.udp_tunnel_socket(via_vpn) if a.udp_tunnel else None
                await self.routes.configure(a.mode, foreign_agent=a.foreign_agent, udp=udp,
                                            tia=a.tia)
                self.vpn.configured(a.mode, udp is not None)  # the NAT shown
                for entry in self.keepalive.configure(udp is not None, a.keepalive_s,
                                                      self.clock(), via_vpn=via_vpn):
                    self.board.history(*entry)
            elif isinstance(a, am.StartVpn):
                self.vpn.start(a)
            elif isinstance(a, am.RememberGateway):
                self.vpn.remember(a)
            elif isinstance(a, am.StopVpn):
                self.vpn.stop(a.reason)
            elif isinstance(a, am.UseTia):
                for link_ev in self.tracker.vpn_address(a.tia, now):  # never the link's
                    await self._link_event(link_ev, now)
                await self.vpn.use_tia(a, now)
            elif isinstance(a, am.DropTia):
                if self.keepalive.via_vpn:
                    self.keepalive.stop()  # its socket goes with the TIA
                if a.tia is not None:
                    self.tracker.vpn_address_gone(a.tia)
                await self.vpn.drop_tia()
            elif isinstance(a, NatDetected):
                self.vpn.nat_detected(a.nat_detected)
            elif isinstance(a, Stopped):
                self._stopped = True
            elif isinstance(a, am.RememberNetwork):
                self._remember_network(a)
            log.debug("%s took %.2f ms", type(a).__name__, (time.perf_counter() - t0) * 1000)
        # Publishing is off the critical path: after the step's other actions.
        # The handover ends when the path is open: after this step's actions ran.
        self.board.show(*status_view.published(self.snapshot, actions, self._gate_at,
                                               (self.clock() - now) * 1000))
        if any(isinstance(a, am.ConfigureDataPlane) for a in actions):
            await self.routes.finish()

    async def _gate(self, path: ProvenPath | None, home_probe: str | None = None) -> None:
        self._gate_at = self.wall()  # just before the rules change (history, tests)
        if self.gate is not None:
            try:
                await self.gate.decide(path, home_probe)
            except GateError as exc:
                # Fail closed: an open that did not happen leaves it shut; a shut that
                # did not happen is the one thing we cannot fix here: say so loudly.
                log.error("the gate did not change (%s); traffic stays %s", exc,
                          "blocked" if path is not None else "as it was")
                self.board.history("gate-error", {"text": str(exc)})
                return
        if path is None:
            self.routes.arp.cancel_all()
        elif path.mode is Mode.HOME:
            self.routes.announce_home()  # only now: the announcer asks the decision

    async def _prepare_link(self, a: am.PrepareLink) -> None:
        t0 = time.perf_counter()
        self.sockets.open_link(a.iface, a.address.ip, hear_agents=self.profile.foreign_agents)
        if a.gateway is not None:
            await self.routes.set_link(LinkInfo(a.iface, a.address, a.gateway))
        log.debug("link set-up took %.2f ms", (time.perf_counter() - t0) * 1000)
        self.board.publish(replace(self.snapshot, interface=a.iface) if a.mc_holds else (  # TIA
            replace(self.snapshot, interface=a.iface, care_of_address=str(a.address.ip))))

    # -- publishing ---------------------------------------------------------------

    def _update_binding(self) -> None:
        t = self.vpn_client
        b = t.binding if t is not None and self.snapshot.mode is Mode.VPN else (
            self.client.binding)
        self.board.show(*self._binding_view.update(self.snapshot, self.client.last_answer, b,
                                                   self.board.to_wall))

    # -- tunnel data, the timer -------------------------------------------------

    def _tunnel_data(self, inner: bytes) -> None:
        if self.keepalive.reply(inner, self.clock()):
            self._arm_timer()
        else:
            self.routes.tunnel_write(inner)

    async def _tick(self, now: float) -> None:
        """The one timer fired: every part whose deadline it was runs."""
        for ev in self.tracker.handle_timer(now):
            await self._link_event(ev, now)
        await self._execute(self.machine.handle_timer(now), now)
        if self.keepalive.tick(now, self.sockets.udp_tunnel_socket(
                self.keepalive.via_vpn)):  # RFC 3519 4.10
            await self._execute(self.machine.reregister(now), now)
        self.vpn.tick(now)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        times = [t for t in (self.machine.get_timer(), self.tracker.get_timer(),
                             self.keepalive.get_timer(), self.vpn.get_timer()) if t is not None]
        if times and self._loop is not None:
            delay = max(0.0, min(times) - self.clock())
            self._timer = self._loop.call_later(delay, self._queue.put_nowait, inputs.Tick())
