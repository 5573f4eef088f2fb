"""The access-mode machine's VPN side (RFC 5266 3.3, 3.4, 3.4.2), sans-I/O.

What the machine knows of the VPN (charon does the work), when it starts, stops
and retries it, and mode mc: the tunnel inner address (TIA) registered through
the VPN as a co-located care-of address with reverse tunnelling, by a second
registration client sharing the direct one's replay state.  :class:`VpnSide` is
a part the machine (``app.mn.access_mode``) owns: it is given the machine's
shared :class:`~app.mn.mode_state.ModeState` explicitly (composition rather than
a mixin, so it touches only that state and its own :class:`VpnState`), takes
charon's events (``on_*``) and the VPN client's outcomes (:meth:`VpnSide.events`),
and appends its actions to the shared step.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from app.api import Mode, Policy, State
from app.mn.gateway_order import GatewayOrder, network_key
from app.mn.mode_events import (
    ConfigureDataPlane,
    DropTia,
    Note,
    RememberGateway,
    Send,
    StartVpn,
    StopVpn,
    UseTia,
    VpnLost,
    VpnReady,
    VpnRekeyed,
    VpnServiceLost,
)
from app.mn.mode_state import (
    BINDING_RAN_OUT,
    HA_UNREACHABLE,
    NEVER_VPN_REASON,
    OUTCOME_LEAVES_TO,
    ModeState,
    discarded_hint,
)
from app.mn.registration import (
    BindingLost,
    Denied,
    Deregistered,
    Registered,
    RegistrationClient,
    TimedOut,
)

VPN_RETRY_MIN = 2.0
VPN_RETRY_MAX = 30.0
"""Seconds before bringing a failed VPN up again, doubling between the two."""
DEFAULT_KEEPALIVE = 110
"""RFC 3519 4.9's K when the home agent's reply names none."""
HA_RETRY_MIN = 2.0
HA_RETRY_MAX = 60.0
"""Seconds between registration attempts through the VPN that the home agent left
unanswered (each attempt is RFC 5944 3.6.3's doubling retransmissions), doubling
between the two, from half to the whole of it at random: a home agent back after
a long outage is not hit by every node at once."""
MOBIKE_WAIT = 1.0
"""With an IKE SA kept from an earlier link, how long to wait for MOBIKE to move
it before registering through it anyway."""


@dataclass
class VpnState:
    """What the machine knows of the VPN (charon does the work)."""

    starting: bool = False
    tia: IPv4Address | None = None
    """Set while the CHILD SA is up."""
    gateway: str = ""
    ike_id: int | None = None
    """The IKE SA in use (its rekeyed id after a rekey); None: not known."""
    retry_at: float | None = None
    retry_delay: float = VPN_RETRY_MIN
    service_ok: bool = True
    """charon answers on its socket."""
    service_error: str | None = None
    register_at: float | None = None
    """An SA kept from the last link: register through it when MOBIKE moved it, or then."""
    ha_silent: bool = False
    """A registration through this SA went unanswered since its last reply: with the
    VPN up, the home agent is what is missing (the status says so)."""
    move_by: float | None = None
    """An SA kept from the last link: its gateway counts as dead if MOBIKE has not
    moved it by then (charon's path probing alone takes about 27 s)."""
    ha_retry_at: float | None = None
    """The next attempt after one the home agent left unanswered."""
    ha_retry_delay: float = HA_RETRY_MIN

    @property
    def up(self) -> bool:
        return self.tia is not None


class VpnSide:
    """The VPN half of the machine (see the module docstring)."""

    def __init__(self, s: ModeState, order: GatewayOrder | None = None,
                 jitter: Callable[[], float] | None = None) -> None:
        """``order``: which gateway to try first (None: the profile's order, charon's).
        ``jitter``: a number in [0, 1) for each retry's spread (tests fix it)."""
        self.s = s
        self._jitter = jitter if jitter is not None else random.SystemRandom().random
        self.vpn = VpnState()
        self.order = order
        self._now = 0.0
        """The last time an event carried (starts without one use it)."""
        self._gone_ike: int | None = None
        """The IKE SA last given up: its later events (its teardown) change nothing."""

    def network(self) -> str | None:
        """The current link's network, as a remembered gateway is keyed."""
        link = self.s.link
        return network_key(link.address, link.gateway) if link is not None else None

    # -- what the machine asks --------------------------------------------------

    @property
    def configured(self) -> bool:
        """The profile has a VPN."""
        return self.s.vpn_client is not None

    @property
    def wanted(self) -> bool:
        s = self.s
        return (s.vpn_client is not None and s.policy is not Policy.NEVER_VPN
                and self.vpn.service_ok and s.link is not None)

    @property
    def waiting(self) -> bool:
        """Untrusted (or always-vpn), no mc yet: what the VPN does is the status."""
        s = self.s
        return s.mode is not Mode.VPN and s.policy is not Policy.NEVER_VPN and (
            s.phase is State.UNTRUSTED or (
                s.policy is Policy.ALWAYS_VPN and s.phase is State.PROBING))

    def untrusted_reason(self) -> str | None:
        if self.s.vpn_client is None:
            return None  # no VPN in the profile: untrusted says it all
        if self.s.policy is Policy.NEVER_VPN:
            return NEVER_VPN_REASON
        if self.vpn.up and self.vpn.ha_silent:
            return HA_UNREACHABLE
        return self.vpn.service_error

    def timers(self) -> list[float | None]:
        t = self.s.vpn_client
        return [self.vpn.retry_at, self.vpn.register_at, self.vpn.move_by, self.vpn.ha_retry_at,
                t.get_timer() if t is not None else None]

    def handle_timer(self, now: float) -> None:
        """Retransmissions and renewals through the VPN, its retry, the wait for MOBIKE."""
        if self.s.vpn_client is not None:
            self.s.vpn_client.handle_timer(now)
        v = self.vpn
        if v.retry_at is not None and now >= v.retry_at:
            v.retry_at = None
            self.start(now)
        if v.register_at is not None and now >= v.register_at:
            v.register_at = None
            self.register(now)
        if v.move_by is not None and now >= v.move_by:
            v.move_by = None
            self._not_moved(now)
        if v.ha_retry_at is not None and now >= v.ha_retry_at:
            v.ha_retry_at = None
            t = self.s.vpn_client
            trusted = self.s.phase is State.TRUSTED and self.s.policy is not Policy.ALWAYS_VPN
            if t is not None and v.tia is not None and self.wanted and not trusted and (
                    not t.pending):
                t.register(v.tia, now)

    def sends(self, iface: str) -> bool:
        """The requests through the VPN into the step; True if the client had any."""
        t = self.s.vpn_client
        if t is None:
            return False
        through = t.datagrams_to_send()
        for d in through:
            # RFC 5266 3.3: from the TIA charon has now.  After a new TIA the client
            # may renew the old one's binding on its own when the new one's request
            # times out (the step that registers the new TIA again replaces it): that
            # request never leaves.
            if d.source == self.vpn.tia:
                self.s.actions.append(Send(iface, d, through_vpn=True))
        return bool(through)

    # -- starting, stopping, registering through it ------------------------------

    def link_up(self, now: float, *, in_mc: bool) -> None:
        """RFC 5266 3.4.2 step 1: the IKE side at the same moment as the direct probe.
        An SA kept from the last link is registered through once MOBIKE moved it (or
        after MOBIKE_WAIT); mc, held open across the move, waits for MOBIKE alone."""
        v = self.vpn
        v.ha_retry_delay = HA_RETRY_MIN  # another path to the home agent
        if v.up and not in_mc and self.wanted:
            v.register_at = now + MOBIKE_WAIT  # or as soon as MOBIKE moved it
            v.ha_retry_at = None
        else:
            self.start(now)
        # The dead-gateway bound holds after a move too: DPD does not run while charon
        # probes the new paths (RFC 4555 routability checks, about 27 s in 5.9.8).
        dead_after = self.order.dead_after if self.order is not None else None
        v.move_by = now + dead_after if v.up and self.wanted and dead_after else None

    def start(self, now: float | None = None) -> None:
        s, v = self.s, self.vpn
        self._now = now if now is not None else self._now
        link = s.link
        if not self.wanted or link is None or v.starting or v.up:
            return
        if s.phase is State.TRUSTED and not s.keep_alive_inside and (
                s.policy is not Policy.ALWAYS_VPN):
            return
        v.starting = True
        v.retry_at = None
        order = self.order.order(self.network(), self._now) if self.order is not None else ()
        s.actions.append(StartVpn(link.iface, order))

    def stop(self, reason: str) -> None:
        v = self.vpn
        if self.s.vpn_client is not None:
            self.s.vpn_client.cancel()
        v.register_at = v.retry_at = v.move_by = v.ha_retry_at = None
        if v.starting or v.up:
            self._drop_tia()
            self.s.actions.append(StopVpn(reason))

    def _drop_tia(self) -> None:
        v = self.vpn
        self.s.actions.append(DropTia(v.tia))
        v.starting, v.tia, v.gateway, v.ike_id = False, None, "", None
        v.ha_silent = False
        v.move_by = None
        v.ha_retry_at, v.ha_retry_delay = None, HA_RETRY_MIN

    def _not_moved(self, now: float) -> None:
        """MOBIKE did not move the SA to the new link within the bound: its gateway
        cannot be reached from here; torn down (charon would probe on) and left as
        for a DPD death."""
        v = self.vpn
        if not v.up or self.s.link is None:
            return
        reason = (f"gateway {v.gateway} not reached from the new link within "
                  f"{self.order.dead_after if self.order is not None else 0:g} s (MOBIKE)")
        self.s.actions.append(StopVpn(reason))
        self.on_lost(VpnLost(reason, v.ike_id, gateway_gone=True), now)

    def _retry_later(self, now: float) -> None:
        v = self.vpn
        v.retry_at = now + v.retry_delay
        v.retry_delay = min(v.retry_delay * 2, VPN_RETRY_MAX)

    def register(self, now: float, *, again: bool = False) -> None:
        """Register the TIA through the VPN.  ``again``: a new TIA or gateway,
        registered even where mc holds."""
        s, v = self.s, self.vpn
        t = s.vpn_client
        trusted = s.phase is State.TRUSTED and s.policy is not Policy.ALWAYS_VPN
        if t is None or v.tia is None or not self.wanted or trusted:
            return
        v.register_at = None
        if t.pending and t.binding is None and not again:
            return  # one is out already; its own timers resend it
        if not again and s.mode is Mode.VPN and t.binding is not None and (
                t.binding.care_of_address == v.tia):
            return  # MOBIKE only (RFC 5266 3.3): the home agent keeps its binding
        t.register(v.tia, now)

    def shutdown(self, now: float) -> bool:
        """Deregister mc's binding through the VPN, from the TIA charon has now (a new
        TIA's registration may still be out: the binding then names the old one, which
        is no longer ours to send from, RFC 5266 3.3); False: none here."""
        t = self.s.vpn_client
        if t is None or t.binding is None or self.vpn.tia is None:
            return False
        t.deregister(now, at_home=False, source=self.vpn.tia)
        return True

    def withdraw(self, now: float) -> None:
        """mc ends with no path that replaces it (never-vpn): its binding is withdrawn
        at the home agent (RFC 5944 3.6.1.1, lifetime 0) through the VPN while it
        still stands, so the intranet stops sending to a tunnel about to go.  Sent
        once, now, before the ``StopVpn`` that follows: no answer is awaited (the SA
        goes), the home agent's answer changes nothing here."""
        s, t, tia = self.s, self.s.vpn_client, self.vpn.tia
        if t is None or t.binding is None or tia is None or s.link is None:
            return
        bound = t.binding.care_of_address
        t.deregister(now, at_home=False, source=tia)
        for d in t.datagrams_to_send():
            s.actions.append(Send(s.link.iface, d, through_vpn=True))
        if bound != tia:
            # A newer TIA's registration may have reached the home agent (its reply not
            # in): 3.8.2.2 removes only the binding named, so name that one too.
            t.deregister_care_of(tia, now)
            for d in t.datagrams_to_send():
                s.actions.append(Send(s.link.iface, d, through_vpn=True))
        t.cancel()
        named = str(bound) if bound == tia else f"{bound} and {tia}"
        s.actions.append(Note("deregistered", f"withdrawal of mc's binding of {named} sent "
                                              "to the home agent through the VPN before it "
                                              "stops"))

    def direct_won(self, now: float) -> bool:
        """A direct reply makes the network trusted: the path through the VPN ends.
        True if a request through the VPN left after the one answered, so the home
        agent may bind the TIA after this: then register directly once more."""
        s = self.s
        t = s.vpn_client
        if t is None or s.policy is Policy.ALWAYS_VPN:
            return False
        answered = s.client.accepted_sent_at
        # Whatever became of it since (answered, cancelled with the VPN), a request
        # that left after the answered one may still reach the home agent after it.
        later = t.last_sent_at is not None and answered is not None and (
            t.last_sent_at >= answered)
        t.cancel()
        self.vpn.register_at = self.vpn.ha_retry_at = None
        if not s.keep_alive_inside:
            self.stop("the network is trusted")
        return later

    # -- charon's events (through the driver) -------------------------------------

    def on_ready(self, ev: VpnReady, now: float) -> None:
        s, v = self.s, self.vpn
        if ev.ike_id is not None and v.up and (ev.ike_id, ev.tia) == (v.ike_id, v.tia):
            return  # the same SA reported again (initiate's answer and the event)
        v.ike_id = ev.ike_id
        s.actions.append(UseTia(ev.tia, ev.gateway, ev.gateway_address, ev.ike_id,
                                ev.nat_detected, ev.local, ev.remote))
        v.starting, v.retry_delay = False, VPN_RETRY_MIN
        # RFC 5266 3.3: a new TIA or another gateway is a new registration.
        new_tia = v.tia != ev.tia or v.gateway != ev.gateway
        v.tia, v.gateway = ev.tia, ev.gateway
        if new_tia:
            v.ha_retry_at, v.ha_retry_delay = None, HA_RETRY_MIN
        if s.policy is Policy.NEVER_VPN or s.vpn_client is None:
            self.stop("the policy is never-vpn")  # came up from an older start
        elif s.phase is State.TRUSTED and s.policy is not Policy.ALWAYS_VPN:
            if not s.keep_alive_inside:  # RFC 5266 3.4.2: no longer needed
                self.stop("the network is trusted")
        elif s.mode is not Mode.VPN or new_tia:  # (else: MOBIKE kept mc's SA)
            self.register(now, again=new_tia)

    def on_moved(self, now: float) -> None:
        self.vpn.move_by = None
        if self.vpn.up and self.vpn.register_at is not None:
            self.register(now)  # RFC 5266 3.3: the SA kept, now moved

    def on_rekeyed(self, ev: VpnRekeyed) -> None:
        v = self.vpn
        if v.ike_id is not None and v.ike_id == ev.old_ike_id:
            v.ike_id = ev.new_ike_id

    def on_lost(self, ev: VpnLost, now: float) -> None:
        s, v = self.s, self.vpn
        if ev.ike_id is not None and v.ike_id is not None and ev.ike_id != v.ike_id:
            return  # an SA we no longer use (rekeyed, or an older attempt)
        if ev.ike_id is not None and ev.ike_id == self._gone_ike and not v.up:
            return  # its loss was handled (a refused peer's teardown, CHILD then IKE)
        if ev.ike_id is not None:
            self._gone_ike = ev.ike_id
        was_up, gateway = v.up, v.gateway or ev.gateway
        self._drop_tia()
        v.register_at = None
        if s.vpn_client is not None:
            s.vpn_client.cancel()
        # The gateway in use went silent or away: the next one of the list at once
        # (a new IKE SA, a new TIA, a new registration), this one behind the others.
        # One refused before use (its peer outside the gate's set) goes behind the
        # others too, but on the retry back-off: every gateway refused must not
        # become a loop of set-ups.
        gone = (was_up or bool(ev.gateway)) and ev.gateway_gone and bool(gateway)
        failover = gone and was_up and self.order is not None and self.order.has_other(gateway)
        if gone and self.order is not None:
            self.order.dead(gateway, now)
        nxt = f"; trying {self.order.order(self.network(), now)[0]}" if (
            failover and self.order is not None) else ""
        if s.mode is Mode.VPN:  # a kill switch: shut, say why
            s.leave(State.UNTRUSTED, f"the VPN went down: {ev.reason}{nxt}")
        elif self.waiting and not was_up:
            s.enter(State.UNTRUSTED, Mode.NONE, f"the VPN did not come up: {ev.reason}")
        if failover and self.wanted and s.phase is not State.TRUSTED:
            self.start(now)
        elif self.wanted and s.phase is not State.TRUSTED:
            self._retry_later(now)

    def on_service_lost(self, ev: VpnServiceLost) -> None:
        s, v = self.s, self.vpn
        v.service_ok, v.service_error = False, ev.message
        self._drop_tia()
        v.register_at = v.retry_at = None
        if s.vpn_client is not None:
            s.vpn_client.cancel()
        if s.mode is Mode.VPN:
            s.leave(State.UNTRUSTED, ev.message)  # a kill switch: shut, say why
        elif self.waiting:
            s.enter(State.UNTRUSTED, Mode.NONE, ev.message)

    def on_service_back(self) -> None:
        s, v = self.s, self.vpn
        gone, v.service_ok, v.service_error = v.service_error, True, None
        if s.phase is State.UNTRUSTED and gone is not None and s.error == gone:
            s.enter(State.UNTRUSTED, Mode.NONE, None)
        self.start()

    # -- the outcomes of the registrations through the VPN (mode mc) ---------------

    def events(self, now: float) -> bool:
        """The VPN client's outcomes, in order; True if there were any."""
        s = self.s
        t = s.vpn_client
        if t is None:
            return False
        seen = False
        while (ev := t.next_event()) is not None:
            seen = True
            match ev:
                case Registered():
                    self._on_registered(ev)
                case TimedOut():
                    self._on_timed_out(t, ev, now)
                case Denied():
                    s.leave(OUTCOME_LEAVES_TO[Denied],
                            f"{ev.text} (registering through the VPN)")
                case Deregistered():
                    if s.mode is Mode.VPN:  # shutting down: mc's binding is gone
                        s.leave(OUTCOME_LEAVES_TO[Deregistered], None)
                case BindingLost():
                    if s.mode is Mode.VPN:
                        # The VPN stands: the home agent is what went (the gate
                        # shuts, the VPN stays, the retries below bring mc back).
                        # (a binding that lapsed with no renewal asked, across a
                        # suspend, says nothing of the home agent)
                        silent = self.vpn.up and self.vpn.ha_silent
                        s.leave(OUTCOME_LEAVES_TO[BindingLost],
                                HA_UNREACHABLE if silent else BINDING_RAN_OUT)
                    self.register(now)
        return seen

    def _on_registered(self, ev: Registered) -> None:
        s, v = self.s, self.vpn
        link = s.link
        if ev.care_of_address != v.tia or link is None:
            s.actions.append(Note("stale-binding",
                                  f"the home agent bound {ev.care_of_address} "
                                  "through the VPN, not its current address"))
            return
        # RFC 5266 3.4: the TIA registered through the VPN: mode mc.
        network = self.network()
        if self.order is not None and v.gateway and self.order.worked(network, v.gateway) and (
                network is not None):
            s.actions.append(RememberGateway(network, v.gateway))
        v.ha_silent = False
        v.ha_retry_at, v.ha_retry_delay = None, HA_RETRY_MIN
        if s.mode is not Mode.VPN:
            # The binding through the VPN replaced the direct one: renewing that
            # would take the home agent away from the tunnel.
            s.client.forget_binding()
        s.enter(State.UNTRUSTED, Mode.VPN, None)
        if s.configured is not Mode.VPN or s.configured_tia != v.tia:
            # RFC 5266 4: the TIA translated on its way (a gateway that NATs its pool):
            # the home agent UDP-tunnels (RFC 3519) inside IPsec (and its NAT-T).
            udp = ev.udp_tunnel
            s.actions.append(ConfigureDataPlane(
                Mode.VPN, link.iface, tia=v.tia, udp_tunnel=udp,
                keepalive_s=(ev.keepalive_interval or DEFAULT_KEEPALIVE) if udp else 0))
            s.configured, s.configured_tia = Mode.VPN, v.tia
            s.configured_keepalive_s = (ev.keepalive_interval or DEFAULT_KEEPALIVE) if udp else 0
        s.open(link)

    def _on_timed_out(self, t: RegistrationClient, ev: TimedOut, now: float) -> None:
        s = self.s
        if hint := discarded_hint(ev.discarded):  # through the VPN: no effect either
            s.actions.append(Note("replies-discarded", hint + " (through the VPN)"))
        tia = self.vpn.tia
        if tia is None:
            return  # the VPN is down: its loss cancelled this client, or will
        self.vpn.ha_silent = True
        if s.mode is Mode.VPN and t.binding is not None and t.binding.care_of_address == tia:
            s.actions.append(Note("renewal-timeout",
                                  "the home agent did not answer the renewal "
                                  "through the VPN; trying again"))
            self._retry_ha(now)
        elif self.wanted:
            # RFC 5266 3.3: after a new TIA every request through the VPN leaves from
            # it (the old one is no longer charon's); mc's old binding stands until
            # the new one replaces it or runs out (BindingLost).
            s.actions.append(Note("vpn-registration-timeout",
                                  "no reply through the VPN from the home "
                                  "agent; trying again"))
            if s.mode is not Mode.VPN and (s.phase is State.UNTRUSTED or (
                    s.policy is Policy.ALWAYS_VPN and not s.client.pending)):
                # Decided untrusted (or always-vpn: no direct probe), the VPN up, the
                # home agent silent: say that, not "probing" or nothing; the gate
                # stays shut.  A direct probe still out decides first.
                s.enter(State.UNTRUSTED, Mode.NONE, HA_UNREACHABLE)
            self._retry_ha(now)

    def _retry_ha(self, now: float) -> None:
        """The next attempt after an unanswered one, backed off with a spread: at once
        it made ~1500 requests an hour while the home agent was down."""
        v = self.vpn
        v.ha_retry_at = now + v.ha_retry_delay * (0.5 + 0.5 * self._jitter())
        v.ha_retry_delay = min(v.ha_retry_delay * 2, HA_RETRY_MAX)
