"""The access-mode machine's direct side (RFC 5266 3.1, 3.4; RFC 5944 3.6), sans-I/O.

The outcomes of the registrations straight to the home agent and through a
foreign agent: trusted in mode c (co-located), f (through the link's FA, RFC 5266
3.1.3) or h (the home link's probe answered, then its claim, RFC 5266 3.1.1 and
RFC 5944 4.6); untrusted when nothing answers; an error when the home agent
refuses.  :class:`DirectSide` is a part the machine (``app.mn.access_mode``) owns:
it is given the machine's shared :class:`~app.mn.mode_state.ModeState` and its
VPN side explicitly (composition rather than a mixin: a direct answer ends the
path through the VPN, ``VpnSide.direct_won``, and nothing else of it is touched).
"""

from __future__ import annotations

from app.api import Mode, State
from app.mn.mode_events import AgentAdvert, ConfigureDataPlane, Note
from app.mn.mode_state import (
    BINDING_RAN_OUT,
    OUTCOME_LEAVES_TO,
    Link,
    ModeState,
    discarded_hint,
)
from app.mn.mode_vpn import DEFAULT_KEEPALIVE, VpnSide
from app.mn.registration import (
    BindingLost,
    Denied,
    Deregistered,
    Registered,
    TimedOut,
)


class DirectSide:
    """The direct registration's half of the machine (see the module docstring)."""

    def __init__(self, s: ModeState, vpn: VpnSide) -> None:
        self._s = s
        self._vpn = vpn

    # -- the link's foreign agent (RFC 5266 3.1.3) ---------------------------------

    def advert(self, ev: AgentAdvert, now: float) -> None:
        s = self._s
        link = s.link
        if link is None or ev.iface != link.iface:
            return
        link.fa = ev
        # RFC 5266 3.1.3: an FA care-of address only once the network proved trusted.
        # Periodic adverts repeat: one attempt per link, none after the FA failed us.
        if s.use_foreign_agents and s.phase is State.TRUSTED and (
                s.mode is Mode.COLOCATED) and not s.via_fa and not link.fa_failed:
            s.open(link)  # the FA's registration port, on this proven link only
            self.register_via_fa(link, now)

    def register_via_fa(self, link: Link, now: float) -> None:
        s = self._s
        assert link.fa is not None
        if link.fa.busy:  # B: no new registration through it until it advertises again
            return
        s.via_fa = True
        self._s.client.register(link.fa.care_of_address, now, via=link.fa.address,
                             lifetime=link.fa.registration_lifetime)

    # -- the registrations' outcomes: one handler per event ----------------------------

    def events(self, now: float) -> bool:
        """The direct client's outcomes, in order; True if there were any."""
        seen = False
        while (ev := self._s.client.next_event()) is not None:
            seen = True
            match ev:
                case Registered():
                    self._on_registered(ev, now)
                case Deregistered():
                    self._on_deregistered(now)
                case TimedOut():
                    self._on_timed_out(ev, now)
                case Denied():
                    self._on_denied(ev, now)
                case BindingLost():
                    self._on_binding_lost()
        return seen

    def _on_registered(self, ev: Registered, now: float) -> None:
        s = self._s
        link = s.link
        if link is None or link.lost:
            return  # no link to open (RFC 5266 3.4: only the link that was answered)
        # The mode is what the home agent bound, not what we meant to ask: a late
        # renewal of an older binding must not open this link.
        if ev.care_of_address == link.address.ip:
            mode = Mode.COLOCATED  # RFC 5266 3.1.2: trusted, co-located care-of address
        elif link.fa is not None and ev.care_of_address == link.fa.care_of_address:
            mode = Mode.FOREIGN_AGENT  # RFC 5266 3.1.3: trusted, through the FA
        else:
            s.actions.append(Note("stale-binding",
                                      f"the home agent bound {ev.care_of_address}, "
                                      "not an address of this link"))
            return
        first = s.phase is not State.TRUSTED or s.mode is not mode
        again = self._vpn.direct_won(now)  # RFC 5266 3.4: a direct answer means trusted
        s.enter(State.TRUSTED, mode, None)
        if first:
            fa = ev.care_of_address if mode is Mode.FOREIGN_AGENT else None
            udp = ev.udp_tunnel and mode is Mode.COLOCATED  # RFC 3519: mode c only
            s.actions.append(ConfigureDataPlane(
                mode, link.iface, foreign_agent=fa, udp_tunnel=udp,
                keepalive_s=(ev.keepalive_interval or DEFAULT_KEEPALIVE) if udp else 0))
            s.configured = mode
        if again:
            # A request through the VPN may reach the home agent after the one
            # answered: ours must be the last it sees (mode shown == binding).
            s.actions.append(Note("direct-again", "registering directly once "
                                                      "more after the VPN's request"))
            self._s.client.reregister(now)  # (the FA's turn comes with its advert)
        elif (mode is Mode.COLOCATED and link.fa is not None
                and s.use_foreign_agents and not link.fa_failed):
            self.register_via_fa(link, now)  # RFC 5266 3.1.3: c, then f through the FA
        s.open(link)
        if first:
            s.judge_network(False, now)  # answered: trusted, probed on every visit

    def _on_deregistered(self, now: float) -> None:
        s = self._s
        link = s.link
        if link is None or link.lost:
            return
        if link.home_prefix and not link.claimed and not link.home_failed:
            # RFC 5266 3.1.1: the probe from this home-prefix link was answered: the
            # home link; RFC 5944 4.6's claim, then the deregistration from home.
            s.claim_home(link, now)
        elif link.claimed:
            # RFC 5944 2.4.3: the deregistration from the home address answered: mode h.
            if self._vpn.direct_won(now):
                s.actions.append(Note("direct-again", "deregistering once more "
                                                          "after the VPN's request"))
                self._s.client.deregister(now, at_home=True)
            s.enter(State.TRUSTED, Mode.HOME, None)
            s.actions.append(ConfigureDataPlane(Mode.HOME, link.iface))
            s.configured, s.home_claimed = Mode.HOME, None
            s.open(link)
            s.judge_network(False, now)  # the home link: trusted, probed on every visit
        else:
            s.leave(OUTCOME_LEAVES_TO[Deregistered], None)  # shutting down

    def _on_timed_out(self, ev: TimedOut, now: float) -> None:
        s = self._s
        # Replies that did not authenticate were discarded (RFC 5944 3.6.2.1 b): they
        # change nothing, this is the outcome of any timeout.  Anyone who saw the
        # request in clear can echo it, so they only earn a history line.
        hint = discarded_hint(ev.discarded)
        if hint:
            s.actions.append(Note("replies-discarded", hint))
        link = s.link
        here = link is not None and not link.lost
        trusted = s.phase is State.TRUSTED
        if link is not None and here and link.claimed:
            # RFC 5266 3.1.1: trusted (the probe was answered) but the home agent did
            # not answer from the home address: not its home link after all (a network
            # reusing the prefix).  A co-located registration from here: mode c.
            s.unclaim_home(link)
            s.actions.append(Note("home-timeout", "no reply to the deregistration "
                                                      "from the home address; "
                                                      "registering from this link"))
            self._s.client.register(link.address.ip, now)
        elif link is not None and trusted and s.via_fa:
            # RFC 5944 3.6.3: the FA failed us: back to a direct registration (mode c)
            # while the binding through the FA still stands.
            s.via_fa = False
            link.fa_failed = True
            s.actions.append(Note("fa-timeout", "no reply through the foreign "
                                                    "agent; registering directly"))
            self._s.client.register(link.address.ip, now)
        elif link is not None and here and trusted and self._s.client.binding is not None:
            # RFC 5944 3.6.3: a renewal went unanswered but the binding still stands:
            # keep the path and keep asking until it runs out (then BindingLost).
            # Always co-located, from the link's own address: the only direct request
            # whose source is ours (3.6.1.1).  An FA care-of address is asked for only
            # through its FA (3.7), which has failed us by now (the branch above).
            s.actions.append(Note("renewal-timeout",
                                      "the home agent did not answer the renewal; "
                                      "trying again until the binding runs out"))
            self._s.client.register(link.address.ip, now)
        elif here and trusted:
            s.leave(State.UNTRUSTED, BINDING_RAN_OUT)  # ran out this same step
            self._vpn.start(now)  # the home agent went: the VPN where the policy allows
        elif s.mode is Mode.VPN:
            # RFC 5266 3.4: no direct answer: untrusted, and mc carries on.
            s.actions.append(Note("direct-timeout", "no direct reply: the network "
                                                        "is untrusted, staying in mc"))
            if link is not None and here:
                link.probe_failed = True  # remembered at the step's end (ModeState.take)
        elif link is not None and s.phase is not State.UNTRUSTED:
            if here:
                link.probe_failed = True  # remembered if mc follows (ModeState.take)
            # RFC 5266 3.4: no direct answer: untrusted; the gate stays shut.
            reason = self._vpn.untrusted_reason()
            if reason is None and s.vpn_client is None:
                reason = hint or None  # nothing else to say: the history's hint
            s.leave(State.UNTRUSTED, reason)

    def _on_denied(self, ev: Denied, now: float) -> None:
        s = self._s
        link = s.link
        if link is not None and s.via_fa and s.phase is State.TRUSTED:
            # RFC 5944 3.6.2.3: the FA path was refused but the co-located binding still
            # stands: stay in mode c (renewed directly) rather than cut the user off.
            s.via_fa = False
            link.fa_failed = True
            s.actions.append(Note("fa-denied", ev.text + "; staying in mode c"))
            self._s.client.register(link.address.ip, now)
        else:
            # RFC 5944 3.6.2.3: the home agent refused: an error that says why.
            s.leave(OUTCOME_LEAVES_TO[Denied], ev.text)

    def _on_binding_lost(self) -> None:
        s = self._s
        # RFC 5944 3.6.2.2: the lifetime ran out with no renewal accepted.
        s.leave(OUTCOME_LEAVES_TO[BindingLost], BINDING_RAN_OUT)
        if s.phase is State.UNTRUSTED:
            # The home agent went (issue 20): the VPN where the policy allows, as on
            # arrival with it down; mc once it answers through it.
            self._vpn.start()
