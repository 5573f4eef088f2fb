"""RFC 5266 5: no direct probe on a network already judged untrusted, fake clock.

The direct probe shows the visited network the home agent's address, the NAI,
the home address and an authenticator.  With ``[probe] skip_known_untrusted``
a network whose probe went unanswered is remembered by its identity; the next
visit goes straight to the VPN (decided at the link-up's instant), unless the
identity changed or the verdict is older than ``recheck_after``.  The real
machine, the real home agent core, the shared discrete-event world.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.api import Mode, Policy, State
from app.config import ConfigError
from app.mn.access_mode import ConfigureDataPlane, PolicySet, RememberNetwork, Status
from app.mn.known_networks import MAX_REMEMBERED, KnownNetworks, KnownNetworksConfig
from app.mn.profile import loads
from tests.support.identities import T0
from tests.support.world import NETS, TIA, World, machine, registration

WEEK = 7 * 86400.0


def world(enabled: bool = True, recheck_after: float = WEEK,
          entries: dict[str, float] | None = None) -> World:
    known = KnownNetworks(KnownNetworksConfig(enabled, recheck_after), entries)
    cfg = registration(lifetime=60, initial_timeout=1.0, retries=2)
    return World(m=machine(cfg, vpn=True, use_foreign_agents=False, known=known))


def visit(w: World, net: str, network: str | None) -> float:
    """``World.move`` with the network's identity on the link-up."""
    w.net = net
    w.epoch += 1
    w.outbox.clear()
    w.apply(w.m.handle(replace(NETS[net].up, network=network), w.now))
    if w.vpn_tia is not None and w.auto_vpn:
        w.at(w.roam, "mobike" if NETS[net].gateway else "vpn-lost", w.vpn_epoch)
    return w.now


def direct_sends(w: World, since: float) -> list[float]:
    return [t for t, s in w.sent if not s.through_vpn and t >= since]


def remembered(w: World) -> list[tuple[str, bool]]:
    return [(a.network, a.untrusted) for _, a in w.actions if isinstance(a, RememberNetwork)]


def test_rfc5266_5_a_known_untrusted_network_sees_no_direct_probe_and_is_decided_at_once():
    w = world()
    visit(w, "pub", "pub-1")
    w.run(10)  # the probe's budget (1 + 2 + 4 s) ran out: untrusted, in mc
    assert (w.m.phase, w.m.mode) == (State.UNTRUSTED, Mode.VPN)
    assert remembered(w) == [("pub-1", True)]
    visit(w, "t1", "t1-1")
    w.run(2)
    assert (w.m.phase, w.m.mode) == (State.TRUSTED, Mode.COLOCATED)

    t = visit(w, "pub", "pub-1")
    decided = [s for at, s in w.actions if at == t and isinstance(s, Status)]
    assert decided and decided[-1].phase is State.UNTRUSTED, "decided in the link-up step"
    w.run(10)
    assert direct_sends(w, t) == [], "no Registration Request in clear to the home agent"
    assert [s for at, s in w.sent if at >= t and s.through_vpn], "registered through the VPN"
    assert (w.m.phase, w.m.mode) == (State.UNTRUSTED, Mode.VPN)
    assert w.ha_coa() == TIA
    w.agrees()


def test_rfc5266_5_a_changed_identity_is_probed_again():
    w = world()
    visit(w, "pub", "pub-1")
    w.run(10)
    visit(w, "t1", "t1-1")
    w.run(2)
    t = visit(w, "pub", "pub-2")  # another router's MAC on the same subnet
    w.run(10)
    assert len(direct_sends(w, t)) == 3, "probed: 1 + 2 retransmissions"
    assert remembered(w)[-1] == ("pub-2", True)


def test_rfc5266_5_a_verdict_older_than_recheck_after_is_probed_again_and_renewed():
    w = world(recheck_after=60.0)
    visit(w, "pub", "pub-1")
    w.run(10)
    visit(w, "t1", "t1-1")
    w.run(61)
    t = visit(w, "pub", "pub-1")
    w.run(10)
    assert len(direct_sends(w, t)) == 3
    assert remembered(w) == [("pub-1", True), ("pub-1", True)]


def test_rfc5266_5_a_trusted_network_whose_home_agent_was_down_is_not_remembered():
    # No answer directly nor through the VPN: nothing shows the network untrusted
    # (the home agent may be down, the datagrams lost), so it is probed next time.
    w = world()
    w.ha_down = True
    visit(w, "t1gw", "t1-1")
    w.run(10)
    assert w.m.mode is not Mode.VPN
    assert remembered(w) == []
    w.ha_down = False
    visit(w, "pub", "pub-1")
    w.run(10)
    t = visit(w, "t1gw", "t1-1")
    w.run(3)
    assert direct_sends(w, t), "not probed"
    assert (w.m.phase, w.m.mode) == (State.TRUSTED, Mode.COLOCATED)


def test_rfc5266_5_where_the_vpn_fails_on_a_skipped_network_it_is_probed_and_an_answer_forgets():
    # A verdict on a trusted network (a hotspot that copied its identity, a file of an
    # older version): the VPN cannot come up from inside (t1: no gateway), so the
    # network is probed after all, answers, and is forgotten.
    w = world(entries={"t1-1": T0})
    t = visit(w, "t1", "t1-1")
    assert direct_sends(w, t) == [], "skipped first"
    w.run(5)  # the VPN fails after 3 s
    assert direct_sends(w, t), "not probed once the VPN failed"
    assert (w.m.phase, w.m.mode) == (State.TRUSTED, Mode.COLOCATED)
    assert remembered(w) == [("t1-1", False)]


def test_rfc5266_5_the_home_link_answered_forgets_its_verdict():
    w = world(entries={"home-1": T0})
    w.apply(w.m.handle(PolicySet(Policy.NEVER_VPN), w.now))  # so it is probed
    visit(w, "home", "home-1")
    w.run(5)
    assert (w.m.phase, w.m.mode) == (State.TRUSTED, Mode.HOME)
    assert remembered(w) == [("home-1", False)]


def test_rfc5266_5_with_charon_not_running_a_known_network_is_probed_and_says_why():
    w = world(entries={"pub-1": T0})
    w.charon_lost("charon is not running")
    t = visit(w, "pub", "pub-1")
    w.run(10)
    assert len(direct_sends(w, t)) == 3
    assert w.m.phase is State.UNTRUSTED and w.m.error == "charon is not running"


def test_rfc5266_5_from_mode_c_a_known_network_withdraws_the_data_plane_and_shuts():
    w = world(entries={"pub-1": T0})
    visit(w, "t1", "t1-1")
    w.run(2)
    assert w.configured is Mode.COLOCATED
    t = visit(w, "pub", "pub-1")
    at_once = [a for at, a in w.actions if at == t]
    assert w.gate is None or w.m.mode is Mode.VPN
    assert any(isinstance(a, ConfigureDataPlane) and a.mode is Mode.NONE for a in at_once)
    w.run(10)
    assert (w.m.phase, w.m.mode) == (State.UNTRUSTED, Mode.VPN)


def test_rfc5266_5_a_renewal_timeout_or_a_lost_link_is_no_verdict():
    w = world()
    visit(w, "t1", "t1-1")
    w.run(2)
    w.ha_down = True  # renewals unanswered until the binding runs out
    w.run(120)
    assert remembered(w) == []


def test_rfc5266_3_4_without_the_option_every_link_change_is_probed():
    w = world(enabled=False, entries={"pub-1": T0})
    t = visit(w, "pub", "pub-1")
    w.run(10)
    assert len(direct_sends(w, t)) == 3
    assert remembered(w) == []


def test_rfc5266_5_a_link_with_no_identity_is_probed():
    w = world(entries={"pub-1": T0})
    t = visit(w, "pub", None)
    w.run(10)
    assert len(direct_sends(w, t)) == 3
    assert remembered(w) == []


def test_rfc5266_5_never_vpn_still_probes_a_known_untrusted_network():
    # Without a VPN to go to, only the probe can find the network trusted.
    w = world(entries={"pub-1": T0})
    w.apply(w.m.handle(PolicySet(Policy.NEVER_VPN), w.now))
    t = visit(w, "pub", "pub-1")
    w.run(10)
    assert len(direct_sends(w, t)) == 3


def test_rfc5266_5_a_verdict_from_the_future_counts_as_stale():
    # The wall clock was set back after the verdict: probe rather than trust it.
    w = world(entries={"pub-1": T0 + 3600})
    t = visit(w, "pub", "pub-1")
    w.run(10)
    assert len(direct_sends(w, t)) == 3


def test_the_store_keeps_the_newest_verdicts_only():
    k = KnownNetworks(KnownNetworksConfig(True))
    for i in range(MAX_REMEMBERED + 5):
        k.judged(f"n{i}", True, float(i))
    assert len(k.entries) == MAX_REMEMBERED
    assert "n0" not in k.entries and f"n{MAX_REMEMBERED + 4}" in k.entries
    k.judged("n10", True, 1e6)  # seen again: the newest now
    assert list(k.entries)[-1] == "n10"


BASE = ('name = "corp"\nhome_address = "10.20.1.10"\nhome_network = "10.20.1.0/24"\n'
        'home_agent = "10.20.1.1"\nspi = 256\n')


VPN = '[vpn]\ngateways = ["192.0.2.7"]\nidentity = "alice@corp.example"\n'


def test_profile_option_and_its_messages():
    p = loads(BASE + "[probe]\nskip_known_untrusted = true\nrecheck_after = 3600\n" + VPN)
    assert p.known_networks == KnownNetworksConfig(True, 3600.0)
    assert loads(BASE).known_networks == KnownNetworksConfig(False, WEEK)
    with pytest.raises(ConfigError) as e:
        loads(BASE + "[probe]\nrecheck_after = 10\n")
    assert "probe.recheck_after" in str(e.value)
    with pytest.raises(ConfigError) as e:
        loads(BASE + "[probe]\nskip_known_untrusted = \"yes\"\n")
    assert "probe.skip_known_untrusted" in str(e.value)
    with pytest.raises(ConfigError) as e:
        loads(BASE + "[probe]\nskip_known_untrusted = true\n")
    assert "probe.skip_known_untrusted: needs a [vpn] table" in str(e.value)
    p2 = loads(BASE + "[probe]\nskip_known_untrusted = true\nrecheck_after = 3600\n" + VPN)
    from app.mn.profile import dumps
    assert loads(dumps(p2)) == p2
