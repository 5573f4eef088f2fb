"""RFC 5944 3.6.2.1 b: a reply without a valid Mobile-Home authenticator changes nothing.

The direct request crosses the untrusted network in clear (RFC 5266 section 5),
so anyone there can echo its identification.  Each scenario runs twice on a fake
clock, once as is and once with an attacker who answers every request the
moment it leaves (direct and through the VPN) with every reply code, without an
authenticator, with one under another key, with a short one and with two.  What the
machine shows, opens, configures and sends, and what the home agent binds, must
be the same in both runs; the discarded replies only earn a history line (and,
with nothing else to say, a hint on an untrusted outcome's message).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from app.api import Mode, State
from app.mip.auth import Algorithm, append_authenticator
from app.mip.codes import ReplyCode
from app.mip.extensions import AuthExtension, ExtType
from app.mip.messages import RegistrationReply, RegistrationRequest
from app.mn.access_mode import AgentAdvert, Note, Send
from tests.support.identities import ALICE, HA, T0
from tests.support.world import EVIL, FA, NETS, World, trusted_world

WRONG_KEY = b"\x42" * 16


def forgeries(request: bytes, *, via_fa: bool = False) -> list[bytes]:
    """What an on-path attacker can send back: each code, echoing the identification,
    with no Mobile-Home authenticator, one under another key, a short one, and two.
    Through an FA, codes 64-127 without an authenticator are the FA's own denial,
    which RFC 5944 3.6.2.1 a lets a mobile node that shares no key with it take:
    those are left out there."""
    req = RegistrationRequest.decode(request)
    out = []
    for code in ReplyCode:
        head = RegistrationReply(code, req.lifetime, req.home_address, req.home_agent,
                                 req.identification).encode()
        if not (via_fa and 64 <= code <= 127):
            out.append(head)
        out.append(append_authenticator(head, ExtType.MOBILE_HOME_AUTH, 256, WRONG_KEY,
                                        Algorithm.HMAC_MD5))
        out.append(head + AuthExtension(ExtType.MOBILE_HOME_AUTH, 256, b"\x00" * 8).encode())
        out.append(append_authenticator(out[-2], ExtType.MOBILE_HOME_AUTH, 256, WRONG_KEY,
                                        Algorithm.HMAC_MD5))  # two of them
    return out


@dataclass
class Attacked(World):
    """The mc world (RFC 5266 3.4), with the attacker on every path if ``forging``."""

    forging: bool = False
    forged: int = 0

    def _carry(self, a: Send) -> None:
        super()._carry(a)
        if self.forging:
            self.at(0.0005, "forged", a.datagram.data)  # closer than the home agent

    def _deliver(self, kind: str, p: object) -> None:
        if kind == "forged":
            assert isinstance(p, bytes)
            for data in forgeries(p):
                self.forged += 1
                self.apply(self.m.receive(data, self.now))
        else:
            super()._deliver(kind, p)


def _hint_free(error: str | None) -> str | None:
    return None if error is not None and "discarded (RFC 5944 3.6.2.1)" in error else error


def trajectory(w: World) -> dict[str, object]:
    return {
        "statuses": [(s.phase, s.mode, s.iface, s.care_of_address, _hint_free(s.error),
                      s.handover_ms) for s in w.statuses],
        "gates": w.gates,
        "sent": [(t, s.iface, s.through_vpn, s.datagram.source, s.datagram.destination,
                  RegistrationRequest.decode(s.datagram.data).lifetime) for t, s in w.sent],
        "vpn": (w.started, w.stopped),
        "binding": w.ha_coa(),
        "end": (w.m.phase, w.m.mode, w.m.open_path, w.m.home_probe, w.configured),
    }


SCENARIOS = {
    # probing on an untrusted network, then mc (the direct probe retransmitted in mc,
    # the registration through the VPN and its renewal at 45 s of 60)
    "probing-then-mc": [("pub", 60.0)],
    # mc after a direct probe through a network nothing answers on: untrusted
    "untrusted": [("cafe", 20.0)],
    # c on a trusted network, its renewal at 45 s; then the home agent goes quiet:
    # renewals time out while the binding stands, until it runs out
    "c": [("t1", 40.0), ("ha-silent", 40.0)],
    # mc, then home: the home link's probe, the claim's deregistration, mode h
    "mc-then-h": [("pub", 20.0), ("home", 30.0)],
    # h straight away, then a move to mc and one back
    "h-mc-h": [("home", 20.0), ("nat", 20.0), ("home", 20.0)],
    # an untrusted network in the home prefix: mc there, never h
    "home-prefix-untrusted": [("home", 10.0), (EVIL, 60.0)],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_rfc5944_3_6_2_1_b_unauthenticated_replies_are_silently_discarded_in_every_state(name):
    runs = []
    for forging in (False, True):
        w = Attacked(forging=forging)
        for step, seconds in SCENARIOS[name]:
            if step == "ha-silent":  # renewals time out while a binding stands
                w.ha_down = True
            else:
                w.move(step)
            w.run(seconds)
        runs.append(w)
    plain, attacked = runs
    assert attacked.forged > 100, "the attacker answered"
    assert trajectory(attacked) == trajectory(plain)
    want = {"pub": Mode.VPN, "cafe": Mode.NONE, "t1": Mode.NONE, "home": Mode.HOME,
            EVIL: Mode.VPN}
    assert plain.m.mode is want[plain.net]
    assert attacked.m.client.discarded > 0 and plain.m.client.discarded == 0


def test_rfc5944_3_6_2_1_b_one_forged_reply_does_not_take_mc_down():
    """The review's case: one reply without an authenticator echoing the in-clear
    direct request while mc is up; mc must stay open (it went to error at the
    probe's timeout and came back only with the renewal, 450 s later)."""
    w = World()
    w.move("pub")
    w.run(1.0)
    assert w.m.mode is Mode.VPN
    direct = [s for _, s in w.sent if not s.through_vpn][-1]
    req = RegistrationRequest.decode(direct.datagram.data)
    forged = RegistrationReply(ReplyCode.HA_MN_AUTH_FAILED, 0, req.home_address,
                               req.home_agent, req.identification).encode()
    n = len(w.gates)
    w.apply(w.m.receive(forged, w.now))
    w.run(500)
    assert (w.m.phase, w.m.mode, w.m.error) == (State.UNTRUSTED, Mode.VPN, None)
    assert w.gates[n:] == [], "the mc gate never shut"
    assert all(s.phase is not State.ERROR for s in w.statuses)


def _run_fa(forging: bool) -> tuple[list[object], int]:
    """Mode f with no VPN: c on the FA link, f through the FA, renewals through it."""
    net = trusted_world()
    m = net.m
    seen: list[object] = []
    count = 0

    def go(actions, now):
        nonlocal count
        out = list(actions)
        if forging:
            for a in [x for x in actions if isinstance(x, Send)]:
                via = a.datagram.destination[0] != HA
                for data in forgeries(a.datagram.data, via_fa=via):
                    count += 1
                    out += m.receive(data, now)
        return net.roundtrip(out, now)

    acts = go(m.handle(NETS["fa1"].up, T0), T0)
    acts += go(m.handle(AgentAdvert("eth0", FA, 600), T0 + 0.01), T0 + 0.01)
    now = T0 + 0.01
    while (t := m.get_timer()) is not None and t < T0 + 700:
        now = t
        if now > T0 + 500:  # the FA and then the home agent go quiet
            net.fa_down, net.ha_down = True, now >= T0 + 600
        acts += go(m.handle_timer(now), now)
    seen = [(type(a).__name__, a) for a in acts if not isinstance(a, Send | Note)]
    seen += [("send", a.datagram.source, a.datagram.destination) for a in acts
             if isinstance(a, Send)]
    seen.append(("end", m.phase, m.mode, m.open_path, net.ha.bindings[ALICE].care_of_address))
    return seen, count


def test_rfc5944_3_6_2_1_b_unauthenticated_replies_through_a_foreign_agent_are_discarded():
    plain, _ = _run_fa(False)
    attacked, count = _run_fa(True)
    assert count > 100
    assert attacked == plain
    assert plain[-1][1:3] == (State.TRUSTED, Mode.FOREIGN_AGENT)
