"""One simulated world for the mobile node's machines, on a fake clock.

Like aioquic's ``client_and_server``/``roundtrip``: the real home agent and
foreign agent cores (``app.agents``) behind a network with one-way delays and
drops; a VPN gateway (charon and the far end) that brings the SA up after its
set-up time where it answers, fails where it does not, moves it by MOBIKE and
hands out a TIA; and a clock that runs the network's events and the machine's
timer in time order.  ``World.apply`` is the one place where the machine's
actions are carried out: it records the gate, the configured mode, what was
sent and what the VPN was asked, and checks their order as it goes (a path is
configured before the gate opens on it, the gate is shut before a path is
withdrawn, the home address is exposed only on the home link, never-vpn never
starts the VPN).

Three ways to drive it: ``run``/``run_until`` (events and timers in time order,
with the configured delays), ``roundtrip`` (every reply back at once, at the
current time), and ``hold`` (replies wait in ``inflight`` for the test to
deliver in any order or lose: the hypothesis gate machine).  A bare
registration client drives it through ``ClientOnly`` (the conformance suite).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from typing import Any

from app.agents.fa_config import ForeignAgentConfig
from app.agents.fa_core import ForeignAgent, ToHomeAgent, ToMobileNode
from app.agents.ha_core import HomeAgent
from app.api import Mode, Policy
from app.mip.auth import Algorithm
from app.mn.access_mode import (
    AccessModeMachine,
    ClaimHome,
    ConfigureDataPlane,
    Gate,
    LinkUp,
    PrepareLink,
    Send,
    StartVpn,
    Status,
    StopVpn,
    VpnLost,
    VpnMoved,
    VpnReady,
    VpnServiceBack,
    VpnServiceLost,
)
from app.mn.registration import Event, RegistrationClient, RegistrationConfig, ReplayMode
from tests.mipclient import KEY_A, KEY_B
from tests.support.identities import ALICE, BOB, HA, T0, config

A = IPv4Address
HOME_NET = IPv4Network("10.20.1.0/24")
FA = A("10.40.1.1")
FA_AGENT = A("10.40.1.2")
"""Another address of the FA on its link (an advertisement's IP source)."""
FA_RELAY = A("10.0.0.11")
"""The FA as the home agent sees it."""
TIA = A("10.99.1.7")
TIA2 = A("10.99.2.9")


@dataclass(frozen=True)
class Net:
    up: LinkUp
    trusted: bool
    """The home agent answers the direct probe from here."""
    gateway: bool
    """The VPN gateway answers from here."""
    agents: tuple[IPv4Address, ...] = ()
    """A foreign agent's addresses on this link."""
    home: bool = False
    """The home link (the home agent is on it)."""


def _up(iface: str, address: str, gateway: str) -> LinkUp:
    return LinkUp(iface, IPv4Interface(address), A(gateway))


NETS = {
    "t1": Net(_up("eth0", "10.30.1.50/24", "10.30.1.1"), True, False),
    # the same network, another lease; the gateway answers from here
    "t1gw": Net(_up("eth0", "10.30.1.51/24", "10.30.1.1"), True, True),
    "t2": Net(_up("eth0", "10.30.2.50/24", "10.30.2.1"), True, False),
    "wlan": Net(_up("wlan0", "10.30.2.60/24", "10.30.2.1"), True, False),
    "fa1": Net(_up("eth0", "10.40.1.150/24", "10.40.1.1"), True, False, (FA, FA_AGENT)),
    "home": Net(_up("eth0", "10.20.1.77/24", "10.20.1.254"), True, False, home=True),
    # the home link where the node's own address is its home address
    "home-at-home": Net(_up("eth0", "10.20.1.10/24", "10.20.1.254"), True, False,
                        home=True),
    "pub": Net(_up("eth0", "203.0.113.50/24", "203.0.113.1"), False, True),
    "nat": Net(_up("eth0", "192.168.50.120/24", "192.168.50.1"), False, True),
    "cafe": Net(_up("eth0", "198.18.0.5/24", "198.18.0.1"), False, False),
    # the node's second interface (Wi-Fi next to the Ethernet) on the NATed network
    "nat-wlan": Net(_up("wlan0", "192.168.50.130/24", "192.168.50.1"), False, True),
    # An untrusted network that reuses the home prefix (RFC 5266 3.1.1: the prefix is no
    # proof of the home link; RFC 5944 4.6: away from home); the gateway answers there.
    "evil": Net(_up("eth0", "10.20.1.150/24", "10.20.1.254"), False, True),
}
EVIL = "evil"
UNTRUSTED = frozenset(name for name, n in NETS.items() if not n.trusted)


def registration(replay: ReplayMode = ReplayMode.TIMESTAMP, **kw: Any) -> RegistrationConfig:
    """Alice's (timestamps, HMAC-MD5) or Bob's (nonces, keyed MD5) registration."""
    nonce = replay is ReplayMode.NONCE
    base = RegistrationConfig(BOB if nonce else ALICE, HA, 257 if nonce else 256,
                              Algorithm.KEYED_MD5 if nonce else Algorithm.HMAC_MD5,
                              KEY_B if nonce else KEY_A, replay=replay)
    return replace(base, **kw)


def machine(cfg: RegistrationConfig, *, vpn: bool = False, **kw: Any) -> AccessModeMachine:
    """The access-mode machine for ``cfg``; with ``vpn`` a second client through the VPN."""
    direct = RegistrationClient(cfg)
    t = RegistrationClient(cfg, replay=direct.replay) if vpn else None
    return AccessModeMachine(HOME_NET, direct, vpn_client=t, **kw)


# -- a registration client alone, pumped by hand ------------------------------------

COA = A("10.30.1.50")


def client(**kw: Any) -> RegistrationClient:
    """Alice's registration client (lifetime 100 s), ``kw`` replacing its fields."""
    cfg = RegistrationConfig(ALICE, HA, 256, Algorithm.HMAC_MD5, KEY_A, lifetime=100)
    return RegistrationClient(replace(cfg, **kw))


def pump(c: RegistrationClient, ha: HomeAgent | None, now: float,
         src: IPv4Address = COA) -> list[Any]:
    """Deliver what the client sent to the HA and the HA's answers back; return events."""
    for d in c.datagrams_to_send():
        if ha is not None:
            out = ha.handle_request(d.data, (src, 434), now)
            if out.reply:
                c.receive(out.reply, now)
    events = []
    while (e := c.next_event()) is not None:
        events.append(e)
    return events


class ClientOnly:
    """A registration client alone, driven as the world drives a machine: its
    datagrams go out as Sends, its events are recorded."""

    def __init__(self, client: RegistrationClient) -> None:
        self.client = client
        self.events: list[tuple[float, Event]] = []

    def pending(self, now: float) -> list[Send]:
        while (ev := self.client.next_event()) is not None:
            self.events.append((now, ev))
        return [Send("eth0", d) for d in self.client.datagrams_to_send()]

    def receive(self, data: bytes, now: float) -> list[Send]:
        self.client.receive(data, now)
        return self.pending(now)

    def handle_timer(self, now: float) -> list[Send]:
        self.client.handle_timer(now)
        return self.pending(now)

    def get_timer(self) -> float | None:
        return self.client.get_timer()

    def first(self, kind: type) -> tuple[float, Event] | None:
        return next(((t, e) for t, e in self.events if isinstance(e, kind)), None)


@dataclass
class World:
    """The node on one of ``NETS`` (``net``), the agents, the VPN gateway and the clock.

    Subclasses may override ``_carry`` (what the wire does with a request) and
    ``_deliver`` (an event coming due); the machine's actions go through ``apply``."""

    replay: ReplayMode = ReplayMode.TIMESTAMP
    direct: float = 0.005
    """One-way delay of the direct path (node to home agent or foreign agent)."""
    through: float = 0.01
    """One-way delay from the TIA to the home agent through the VPN."""
    setup: float = 0.3
    """The VPN's set-up time (IKE_SA_INIT + IKE_AUTH) where the gateway answers."""
    roam: float = 0.11
    """charon's MOBIKE move: its roam delay plus one exchange."""
    policy: Policy = Policy.AUTO
    keep_alive_inside: bool = False
    m: Any = None
    """The machine; None builds the mc one (two clients, no foreign agents)."""
    ha: HomeAgent = field(default_factory=lambda: HomeAgent(config()))
    fa: ForeignAgent = field(
        default_factory=lambda: ForeignAgent(ForeignAgentConfig(FA, "fa", max_lifetime=600)))
    ha_down: bool = False
    """The home agent answers nothing."""
    jitter: Callable[[], float] = lambda: 0.5
    """The machine's random source for its retries' spread (fixed: deterministic)."""
    fa_down: bool = False
    drop: Callable[[bytes], bool] = lambda _data: False
    """Requests lost on the way out."""
    auto_vpn: bool = True
    """The gateway acts on its own (set-up time, failure, MOBIKE after a move);
    False: the test says when charon reports what."""
    hold: bool = False
    """Replies wait in ``inflight`` until ``deliver``; requests in ``outbox`` until
    ``carry``."""
    stale_replies: bool = False
    """Direct replies to an earlier link still arrive after a move."""
    check: Callable[[object], None] | None = None
    """A suite's own assertion on each action, before it is applied."""
    now: float = T0
    net: str | None = None
    epoch: int = 0
    vpn_epoch: int = 0
    vpn_tia: IPv4Address | None = None
    """The TIA while the CHILD SA is up (charon's view)."""
    tia: IPv4Address = TIA
    """What the gateway hands out next."""
    vpn_wanted: bool = False
    """A StartVpn since the last StopVpn or loss: charon is bringing it up or keeps it."""
    charon_up: bool = True
    started: list[float] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)
    sent: list[tuple[float, Send]] = field(default_factory=list)
    gates: list[tuple[float, Gate]] = field(default_factory=list)
    actions: list[tuple[float, object]] = field(default_factory=list)
    """Every action, in order."""
    statuses: list[Status] = field(default_factory=list)
    replies: list[tuple[float, int]] = field(default_factory=list)
    """(time, code) of every reply the home agent sent."""
    outbox: list[Send] = field(default_factory=list)
    inflight: list[tuple[bytes, bool, int, IPv4Address | None]] = field(default_factory=list)
    gate: Any = None
    """The gate as the actions left it."""
    configured: Mode = Mode.NONE
    _q: list[tuple[float, int, str, object]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        if self.m is None:
            cfg = registration(self.replay, lifetime=60, initial_timeout=1.0, retries=2)
            self.m = machine(cfg, vpn=True, use_foreign_agents=False, policy=self.policy,
                             keep_alive_inside=self.keep_alive_inside, jitter=self.jitter)
        self.home = self.m.client.config.home_address

    # -- the machine's actions: the one place they are carried out ----------------

    def apply(self, actions: list[Any]) -> None:
        for a in actions:
            if self.check is not None:
                self.check(a)
            self.actions.append((self.now, a))
            if isinstance(a, Gate):
                if a.path is not None:
                    assert self.configured is a.path.mode, (
                        f"gate opened for {a.path.mode} with {self.configured} configured")
                if a.home_probe is not None:
                    assert self._here().home and a.home_probe == self._here().up.iface, (
                        f"ARP for the home address allowed on {self.net}")
                self.gate = a.path
                self.gates.append((self.now, a))
            elif isinstance(a, ConfigureDataPlane):
                # One trusted mode may follow another on the same proven link (c -> f)
                # with the gate still open on the old one: it lets nothing new out.
                if a.mode is Mode.NONE:
                    assert self.gate is None, "a path withdrawn with the gate open"
                self.configured = a.mode
            elif isinstance(a, Send):
                self.sent.append((self.now, a))
                self._check_source(a)
                if self.hold:
                    self.outbox.append(a)
                else:
                    self._carry(a)
            elif isinstance(a, ClaimHome):
                assert self._here().home, f"home address claimed on {self.net}"
            elif isinstance(a, PrepareLink):
                self._place(a)
            elif isinstance(a, StartVpn):
                assert self.m.policy is not Policy.NEVER_VPN, "VPN started under never-vpn"
                self.started.append(self.now)
                self.vpn_wanted = True
                if self.auto_vpn:
                    self._start_vpn()
            elif isinstance(a, StopVpn):
                self.stopped.append(a.reason)
                self.vpn_wanted = False
                self.vpn_epoch += 1
                self.vpn_tia = None
            elif isinstance(a, Status):
                self.statuses.append(a)

    def _here(self) -> Net:
        assert self.net is not None, "an action for a link with no link"
        return NETS[self.net]

    def _place(self, a: PrepareLink) -> None:
        """The node is on the link the machine prepares (a test may have moved it)."""
        name = next(k for k, n in NETS.items()
                    if (n.up.iface, n.up.address) == (a.iface, a.address))
        if name != self.net:
            self.net = name
            self.epoch += 1

    def _check_source(self, a: Send) -> None:
        """Direct requests leave from this link's address, or from the home address
        on the home link once claimed or to this link's foreign agent: never an old
        link's care-of address, never the home address in clear on a network not
        proven trusted (RFC 5944 4.6, RFC 5266 3.4)."""
        if a.through_vpn:
            return
        src, dst = a.datagram.source, a.datagram.destination[0]
        if self.net is None:  # (a renewal through the FA of a link that is gone: nowhere)
            assert src != self.home or dst != HA, "the home address in clear with no link"
            return
        n = NETS[self.net]
        if src == n.up.address.ip:
            return
        assert src == self.home, (self.net, src)
        assert n.trusted, f"the home address in clear on {self.net}"
        if dst not in n.agents:
            assert n.home and dst == HA, (self.net, dst)
            assert (self.m.home_claimed == n.up.iface or self.m.mode is Mode.HOME), (
                "from the home address before the home link was claimed")

    # -- the network ------------------------------------------------------------------

    def at(self, delay: float, kind: str, payload: object = None) -> None:
        heapq.heappush(self._q, (self.now + delay, next(self._seq), kind, payload))

    def _carry(self, a: Send) -> None:
        """A request on the wire: through the VPN from its TIA, or on the link."""
        if self.drop(a.datagram.data):
            return
        data = a.datagram.data
        if a.through_vpn:
            if self.vpn_tia is not None and a.datagram.source == self.vpn_tia:
                self.at(self.through, "ha", (data, self.vpn_tia, True, self.vpn_epoch))
            return
        if self.net is None:
            return
        n, dst = NETS[self.net], a.datagram.destination[0]
        src = a.datagram.source
        if dst == HA and n.trusted:
            self.at(self.direct, "ha", (data, src, False, self.epoch))
        elif dst in n.agents and not self.fa_down:
            self.at(self.direct, "fa", (data, src, self.epoch))

    def _deliver(self, kind: str, p: Any) -> None:
        if kind == "ha":
            data, src, vpn, epoch = p
            if self.ha_down:
                return
            out = self.ha.handle_request(data, (src, 434), self.now)
            if out.reply is not None:
                self.replies.append((self.now, out.code or 0))
                self.at(self.through if vpn else self.direct, "reply",
                        (out.reply, vpn, epoch, src if vpn else None))
        elif kind == "fa":
            data, src, epoch = p
            res = self.fa.from_mobile_node(data, (src, 434), self.now)
            for act in res.actions:
                if isinstance(act, ToHomeAgent) and not self.ha_down:
                    o = self.ha.handle_request(act.data, (FA_RELAY, 434), self.now)
                    if o.reply:
                        self.replies.append((self.now, o.code or 0))
                        back = self.fa.from_home_agent(o.reply, (HA, 434), self.now)
                        for x in back.actions:
                            if isinstance(x, ToMobileNode):
                                self.at(self.direct, "reply", (x.data, False, epoch, None))
                elif isinstance(act, ToMobileNode):
                    self.at(self.direct, "reply", (act.data, False, epoch, None))
        elif kind == "reply":
            if self.hold:
                self.inflight.append(p)
            elif self._arrives(p):
                self.apply(self.m.receive(p[0], self.now))
        elif kind == "vpn-up" and p == self.vpn_epoch:
            self.vpn_ready(self.tia)
        elif kind == "vpn-fail" and p == self.vpn_epoch:
            self.vpn_lost("the gateway did not answer")
        elif kind == "mobike" and p == self.vpn_epoch and self.vpn_tia is not None:
            self.vpn_moved()
        elif kind == "vpn-lost" and p == self.vpn_epoch and self.vpn_tia is not None:
            self.vpn_lost("MOBIKE found no path")

    def _arrives(self, p: tuple[bytes, bool, int, IPv4Address | None]) -> bool:
        _data, vpn, epoch, tia = p
        if vpn:  # only through the SA it left by (or, stale, one with its TIA)
            return tia == self.vpn_tia and (self.stale_replies or epoch == self.vpn_epoch)
        return self.stale_replies or epoch == self.epoch

    # -- the VPN gateway (charon's events) ---------------------------------------------

    def _start_vpn(self) -> None:
        n = NETS[self.net] if self.net else None
        if n is not None and n.gateway:
            self.at(self.setup, "vpn-up", self.vpn_epoch)
        else:
            self.at(3.0, "vpn-fail", self.vpn_epoch)

    def vpn_ready(self, tia: IPv4Address, gateway: str = "gw1") -> None:
        """charon: the CHILD SA is up (again, or with another TIA or gateway)."""
        self.vpn_tia = tia
        self.apply(self.m.handle(VpnReady(tia, gateway), self.now))

    def vpn_moved(self) -> None:
        """charon: MOBIKE moved the IKE SA to this link's address."""
        self.apply(self.m.handle(VpnMoved(self._here().up.address.ip), self.now))

    def vpn_lost(self, reason: str) -> None:
        self.vpn_wanted, self.vpn_tia = False, None
        self.vpn_epoch += 1
        self.apply(self.m.handle(VpnLost(reason), self.now))

    def charon_lost(self, message: str) -> None:
        self.charon_up, self.vpn_wanted, self.vpn_tia = False, False, None
        self.vpn_epoch += 1
        self.apply(self.m.handle(VpnServiceLost(message), self.now))

    def charon_back(self) -> None:
        self.charon_up = True
        self.apply(self.m.handle(VpnServiceBack(), self.now))

    # -- driving it ---------------------------------------------------------------------

    def move(self, net: str) -> None:
        """The node is on ``net`` now: the link comes up (charon's MOBIKE follows)."""
        self.net = net
        self.epoch += 1
        self.outbox.clear()  # what was not sent yet leaves on the new link, if at all
        self.apply(self.m.handle(NETS[net].up, self.now))
        if self.vpn_tia is not None and self.auto_vpn:  # after charon's roam delay
            self.at(self.roam, "mobike" if NETS[net].gateway else "vpn-lost", self.vpn_epoch)

    def run(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until(self, until: float) -> None:
        """The network's events and the machine's timer in time order, up to ``until``."""
        while True:
            t_q = self._q[0][0] if self._q else None
            t_m = self.m.get_timer()
            t = min((x for x in (t_q, t_m) if x is not None), default=None)
            if t is None or t > until:
                self.now = until
                return
            self.now = max(self.now, t)
            if t_q is not None and t_q <= t:
                _, _, kind, p = heapq.heappop(self._q)
                self._deliver(kind, p)
            else:
                self.apply(self.m.handle_timer(self.now))

    def run_from(self, now: float, until: float) -> None:
        """A bare client driven from outside: the clock to ``now``, what it has to send
        now on the wire, then run to ``until``."""
        self.now = now
        self.apply(self.m.pending(now))
        self.run_until(until)

    def roundtrip(self, actions: list[Any], now: float | None = None) -> list[Any]:
        """Carry ``actions`` out at ``now``, every reply back at once (the delays are
        0); returns them and every action that followed."""
        if now is not None:
            self.now = now
        n = len(self.actions)
        self.apply(actions)
        self.flush()
        return [a for _, a in self.actions[n:]]

    def flush(self) -> None:
        """Everything the network holds for now or before (no timer fires)."""
        while self._q and self._q[0][0] <= self.now:
            _, _, kind, p = heapq.heappop(self._q)
            self._deliver(kind, p)

    def carry(self, lose: bool = False) -> None:
        """(hold) The outbox goes out on the current link; replies wait in ``inflight``."""
        sends, self.outbox = self.outbox, []
        if not lose:
            for a in sends:
                self._carry(a)
            self.flush()

    def deliver(self, i: int) -> None:
        """(hold) The ``i``-th reply arrives, a millisecond on, if its path still stands."""
        p = self.inflight.pop(i)
        if self._arrives(p):
            self.now += 0.001
            self.apply(self.m.receive(p[0], self.now))

    # -- what the home agent holds --------------------------------------------------------

    def ha_coa(self) -> IPv4Address | None:
        b = self.ha.bindings.get(self.home)
        return None if b is None or b.expires_at <= self.now else b.care_of_address

    def agrees(self) -> None:
        """The home agent's binding is the mode the machine shows."""
        m, coa = self.m.mode, self.ha_coa()
        link = NETS[self.net].up.address.ip if self.net else None
        if m is Mode.VPN:
            assert coa == self.m.vpn.tia, (m, coa)
            assert self.gate is not None and self.gate.tunnel_inner_address == coa
        elif m is Mode.COLOCATED:
            assert coa == link, (m, coa)
        elif m is Mode.HOME:
            assert coa is None, (m, coa)
        else:
            assert self.gate is None


@dataclass
class Branch(World):
    """A trusted network in the home prefix that is not the home link: the home
    agent answers the link's address (through a NAT, say), never the home address."""

    def _carry(self, a: Send) -> None:
        if not a.through_vpn and a.datagram.source == self.home:
            return
        super()._carry(a)


def trusted_world(**kw: Any) -> World:
    """The trusted side alone, every reply back at once (``roundtrip``): by default
    Alice's machine without a VPN (lifetime 300 s, first timeout 0.5 s, 2 retries)."""
    if kw.get("m") is None:
        kw["m"] = machine(registration(lifetime=300, initial_timeout=0.5, retries=2))
    return World(direct=0.0, through=0.0, **kw)


def statuses(actions: list[Any]) -> list[tuple[object, Mode]]:
    """(phase, mode) of each Status among ``actions``."""
    return [(s.phase, s.mode) for s in actions if isinstance(s, Status)]


def client_world(client: RegistrationClient, ha: HomeAgent, *, one_way: float = 0.0,
                 drop: Callable[[bytes], bool] = lambda _data: False) -> World:
    """A bare registration client on a trusted link (t1) with ``ha`` ``one_way`` away."""
    return World(m=ClientOnly(client), ha=ha, direct=one_way, drop=drop, net="t1")
