"""The home link is proven, not guessed (RFC 5266 3.1.1; RFC 5944 2.4.3, 4.6), fake clock.

A link whose address is in the home prefix is probed like any other, from its
own address (a deregistration of that address alone: no binding, no proxy ARP
at the home agent).  Only the home agent's authenticated answer makes it the
home link; then, in RFC 5944 4.6's order, ARP for the home address is answered
again, the gratuitous ARP goes out (``ClaimHome``), and only then the
deregistration from the home address.  Until then nothing exposes the home
address: no ARP permission, no request from it.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface

import pytest

from app.api import Mode, State
from app.mip.messages import RegistrationRequest
from app.mn.access_mode import ClaimHome, ConfigureDataPlane, Gate, LinkDown, LinkUp, Note, Send
from tests.support.identities import T0
from tests.support.world import EVIL, NETS, Branch, Net, World, statuses, trusted_world

HOME_LINK = NETS["home"].up.address.ip


def _req(s: Send) -> RegistrationRequest:
    return RegistrationRequest.decode(s.datagram.data)


def _exposed(w: World, since: int = 0) -> list[object]:
    """Every action (from the ``since``-th) that exposes the home address on a link."""
    return [a for _, a in w.actions[since:] if isinstance(a, ClaimHome)
            or (isinstance(a, Gate) and a.home_probe is not None)
            or (isinstance(a, Send) and not a.through_vpn and a.datagram.source == w.home)
            or (isinstance(a, Gate) and a.path is not None and a.path.mode is Mode.HOME)]


@pytest.mark.parametrize("before", [None, "t1", "pub", "home"])
def test_rfc5944_4_6_an_untrusted_network_in_the_home_prefix_is_not_taken_for_home(before):
    """On a network that reuses the home prefix (10/8, 192.168/16 are everywhere) the
    mobile node is away from home: it must not answer ARP for its home address,
    broadcast ARP from it, nor send its deregistration from it (RFC 5944 4.6)."""
    w = World()
    if before is not None:
        w.move(before)
        w.run(20)
    n = len(w.actions)
    w.move(EVIL)
    w.run(60)
    assert _exposed(w, n) == []
    assert w.m.home_probe is None and w.m.home_claimed is None
    assert (w.m.phase, w.m.mode) == (State.UNTRUSTED, Mode.VPN)
    direct = [s for t, s in w.sent if not s.through_vpn and t >= w.now - 60]
    assert direct and {s.datagram.source for s in direct} == {NETS[EVIL].up.address.ip}
    w.agrees()


def test_rfc5944_4_6_no_vpn_an_untrusted_network_in_the_home_prefix_stays_shut():
    home = NETS["home-at-home"].up  # its own address is the home address
    net = trusted_world(ha_down=True)
    m = net.m
    acts = net.roundtrip(m.handle(home, T0), T0)
    now = T0
    while (t := m.get_timer()) is not None and now < T0 + 10:
        now = t
        acts += net.roundtrip(m.handle_timer(now), now)
    assert statuses(acts)[-1] == (State.UNTRUSTED, Mode.NONE)
    assert not [a for a in acts if isinstance(a, ClaimHome)
                or (isinstance(a, Gate) and (a.home_probe or a.path))]
    sends = [a for a in acts if isinstance(a, Send)]
    assert len(sends) == 3 and {s.datagram.source for s in sends} == {home.address.ip}


def test_rfc5266_3_1_1_the_home_link_is_probed_from_its_own_address_first():
    w = World()
    w.move("home")
    first = [a for _, a in w.actions]
    sends = [a for a in first if isinstance(a, Send)]
    assert len(sends) == 1 and not sends[0].through_vpn
    req = _req(sends[0])
    # A deregistration of the link's own address, from it: the home agent's answer
    # proves trust and changes no binding of ours.
    assert (sends[0].datagram.source, req.care_of_address, req.lifetime) == (
        HOME_LINK, HOME_LINK, 0)
    assert _exposed(w) == [], "nothing exposes the home address before the answer"
    w.run(5)
    assert (w.m.phase, w.m.mode) == (State.TRUSTED, Mode.HOME)
    w.agrees()


@pytest.mark.parametrize("before", ["t1", "pub"])
def test_rfc5944_4_6_returning_home_the_gratuitous_arp_goes_before_the_deregistration(before):
    """Returning home (from c, from mc): after the home agent's authenticated answer,
    ARP for the home address re-enabled, then the gratuitous ARP, then the
    deregistration from the home address (RFC 5944 4.6's order, 2.4.3)."""
    w = World()
    w.move(before)
    w.run(20)
    n = len(w.actions)
    w.move("home")
    w.run(5)
    acts = [a for _, a in w.actions[n:]]
    claim = next(i for i, a in enumerate(acts) if isinstance(a, ClaimHome))
    allow = next(i for i, a in enumerate(acts) if isinstance(a, Gate) and a.home_probe)
    dereg = next(i for i, a in enumerate(acts) if isinstance(a, Send) and not a.through_vpn
                 and a.datagram.source == w.home)
    probe = next(i for i, a in enumerate(acts) if isinstance(a, Send) and not a.through_vpn)
    assert probe < allow < claim < dereg, (probe, allow, claim, dereg)
    assert acts[claim] == ClaimHome("eth0")
    req = _req(acts[dereg])
    assert (req.care_of_address, req.lifetime) == (w.home, 0)
    assert sum(isinstance(a, ClaimHome) for a in acts) == 1
    assert (w.m.phase, w.m.mode) == (State.TRUSTED, Mode.HOME)
    w.agrees()


def test_rfc5266_3_1_1_a_home_prefix_link_whose_deregistration_goes_unanswered_is_mode_c():
    w = Branch()
    w.move("home")
    w.run(20)
    assert (w.m.phase, w.m.mode) == (State.TRUSTED, Mode.COLOCATED)
    assert w.m.home_probe is None and w.m.home_claimed is None
    acts = [a for _, a in w.actions]
    claim = next(i for i, a in enumerate(acts) if isinstance(a, ClaimHome))
    # The home address comes off the link (and its ARP shut) before mode c.
    withdrawn = next(i for i, a in enumerate(acts) if i > claim
                     and a == ConfigureDataPlane(Mode.NONE, None))
    reshut = next(i for i, a in enumerate(acts) if i > claim and isinstance(a, Gate)
                  and a.home_probe is None)
    c = acts.index(ConfigureDataPlane(Mode.COLOCATED, "eth0"))
    assert claim < reshut < c and claim < withdrawn < c
    assert any(isinstance(a, Note) and a.kind == "home-timeout" for a in acts)
    w.agrees()


def test_rfc5944_4_6_leaving_home_while_claiming_takes_the_home_address_off_the_link():
    """A move after the claim, before the deregistration's answer: the ARP permission
    and the home address go with the old link."""
    w = Branch()
    w.move("home")
    w.run(0.5)  # answered, claimed, deregistration out (never answered here)
    assert w.m.home_claimed == "eth0"
    n = len(w.actions)
    w.move(EVIL)
    acts = [a for _, a in w.actions[n:]]
    assert ConfigureDataPlane(Mode.NONE, None) in acts
    assert w.m.home_probe is None and w.m.home_claimed is None
    assert not [a for a in acts if isinstance(a, Gate) and a.home_probe]


def test_rfc5266_3_1_1_a_home_prefix_subnet_without_the_home_agent_on_it_is_never_claimed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A trusted subnet that reuses part of the home prefix (10.20.1.128/25) but has
    no home agent on it: the home agent's answer came through a router, so it proves
    trust, not the home link.  A co-located registration from the link's address,
    as on any trusted network; the home address never shows on it."""
    branch = Net(LinkUp("eth0", IPv4Interface("10.20.1.200/25"), IPv4Address("10.20.1.129")),
                 True, False)
    monkeypatch.setitem(NETS, "branch", branch)
    w = World()
    w.move("branch")
    w.run(5)
    assert (w.m.phase, w.m.mode) == (State.TRUSTED, Mode.COLOCATED)
    assert _exposed(w) == []
    first = _req(next(a for _, a in w.actions if isinstance(a, Send)))
    assert first.lifetime > 0 and first.care_of_address == branch.up.address.ip
    w.agrees()


def test_rfc5944_4_6_no_request_from_the_home_address_once_its_link_is_down():
    """On the home link the node's own address may be the home address; once that link
    is down its probe is not retransmitted from it (found by the gate machine)."""
    w = World(direct=0.0, through=0.0, auto_vpn=False, ha_down=True)
    w.move("home-at-home")
    iface = NETS["home-at-home"].up.iface
    w.apply(w.m.handle(LinkDown(iface), w.now))
    w.net = None
    n = len(w.sent)
    w.run(30)  # every retransmission timer the probe had
    assert w.sent[n:] == []
