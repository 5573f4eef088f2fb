"""RFC 5944 sections 2 and 3.7, RFC 3024 4.2: the foreign agent, one test per rule."""

from __future__ import annotations

import random
from ipaddress import IPv4Address

import pytest

from app.agents.fa_config import ForeignAgentConfig, HomeAgentSA
from app.agents.fa_core import ForeignAgent, ToHomeAgent, ToMobileNode, VisitorUp
from app.agents.ha_config import ForeignAgentSA
from app.agents.ha_core import HomeAgent
from app.mip.auth import Algorithm, append_authenticator
from app.mip.errors import DecodeError, UnknownExtensionError
from app.mip.extensions import NaiExtension, SkippedExtension
from app.mip.icmp import AgentAdvertisement, AgentFlags, _with_checksum
from app.mip.messages import RegFlags, RegistrationReply, RegistrationRequest
from tests.mipclient import KEY_A, Mn
from tests.support.identities import ALICE, HA, T0, config

A = IPv4Address
FA = A("10.40.1.1")
MN_SRC = (ALICE, 434)
FA_KEY = bytes(range(32, 48))


def fa(**kw) -> ForeignAgent:
    kw.setdefault("max_lifetime", 300)
    return ForeignAgent(ForeignAgentConfig(FA, "fa", **kw))


def fa_with_sa() -> ForeignAgent:
    return fa(home_agents=(HomeAgentSA(HA, 900, Algorithm.HMAC_MD5, FA_KEY),))


@pytest.fixture
def mn():
    return Mn(ALICE, HA, KEY_A, clock=lambda: T0)


def to_mn(res) -> list[RegistrationReply]:
    return [RegistrationReply.decode(a.data) for a in res.actions if isinstance(a, ToMobileNode)]


def to_ha(res) -> list[bytes]:
    return [a.data for a in res.actions if isinstance(a, ToHomeAgent)]


# -- 3.7.1 pending requests ---------------------------------------------------------

def test_rfc5944_3_7_1_pending_request_kept_7_seconds(mn):
    f = fa()
    f.from_mobile_node(mn.request(FA, lifetime=100, flags=RegFlags.T), MN_SRC, T0)
    assert to_mn(f.tick(T0 + 6.9)) == []
    # a slow home agent's acceptance after 6.5 s is relayed, not answered 78
    res = f.from_home_agent(RegistrationReply(1, 100, ALICE, HA, mn._last).encode(),
                            (HA, 434), T0 + 6.5)
    assert [r.code for r in to_mn(res)] == [1]


def test_rfc5944_3_7_1_pending_request_answered_78_after_7_seconds(mn):
    f = fa()
    f.from_mobile_node(mn.request(FA, lifetime=100, flags=RegFlags.T), MN_SRC, T0)
    assert [r.code for r in to_mn(f.tick(T0 + 7.0))] == [78]


def test_rfc5944_3_7_1_configured_timeout_below_7s_refused(tmp_path):
    from app.agents.fa_config import load
    from app.config import ConfigError
    p = tmp_path / "fa.toml"
    p.write_text('[foreign_agent]\ncare_of_address = "10.40.1.1"\ninterface = "fa"\n'
                 "registration_timeout = 3.0\n")
    with pytest.raises(ConfigError, match="registration_timeout"):
        load(p)


# -- RFC 3024 4.2.1 TTL --------------------------------------------------------------

@pytest.mark.parametrize(("ttl", "relayed"), [(255, True), (64, False), (254, False)])
def test_rfc3024_4_2_1_reverse_tunnel_request_needs_ttl_255_else_76(mn, ttl, relayed):
    res = fa().from_mobile_node(mn.request(FA, lifetime=100, flags=RegFlags.T), MN_SRC, T0,
                                ttl=ttl)
    assert bool(to_ha(res)) == relayed
    if not relayed:
        assert [r.code for r in to_mn(res)] == [76]


def test_rfc3024_4_2_1_ttl_not_checked_without_t(mn):
    res = fa().from_mobile_node(mn.request(FA, lifetime=100, flags=RegFlags(0)), MN_SRC, T0,
                                ttl=64)
    assert to_ha(res)


def test_rfc3024_4_2_1_76_at_most_once_a_second(mn):
    f = fa()
    codes = []
    for dt in (0.0, 0.3, 0.9, 1.0, 1.5):
        res = f.from_mobile_node(mn.request(FA, lifetime=100, flags=RegFlags.T), MN_SRC,
                                 T0 + dt, ttl=1)
        codes.append([r.code for r in to_mn(res)])
    assert codes == [[76], [], [], [76], []]


# -- 3.7.2 / 3.7.2.3 denials -----------------------------------------------------------

def test_rfc5944_3_7_2_3_denial_copies_the_requests_lifetime(mn):
    [rep] = to_mn(fa().from_mobile_node(mn.request(FA, lifetime=120,
                                                   flags=RegFlags.T | RegFlags.M), MN_SRC, T0))
    assert rep.code == 72 and rep.lifetime == 120
    assert rep.identification == mn._last and rep.home_agent == HA


def test_rfc5944_3_7_2_3_69_carries_the_agents_maximum(mn):
    [rep] = to_mn(fa().from_mobile_node(mn.request(FA, lifetime=900, flags=RegFlags.T),
                                        MN_SRC, T0))
    assert rep.code == 69 and rep.lifetime == 300


def test_rfc5944_3_7_2_1_d_clear_coa_not_offered_77(mn):
    [rep] = to_mn(fa().from_mobile_node(mn.request("10.40.1.77", lifetime=100,
                                                   flags=RegFlags.T), MN_SRC, T0))
    assert rep.code == 77


# -- 3.7.2.2 relaying -------------------------------------------------------------------

def test_rfc5944_3_7_2_2_extensions_after_the_mhae_are_removed(mn):
    data = mn.request(FA, lifetime=100, flags=RegFlags.T)
    extra = SkippedExtension(200, b"for the FA").encode() + NaiExtension("x@y").encode()
    [relayed] = to_ha(fa().from_mobile_node(data + extra, MN_SRC, T0))
    assert relayed == data  # up to and including the MHAE, unchanged


def test_rfc5944_3_7_2_2_fhae_appended_after_the_mhae(mn):
    data = mn.request(FA, lifetime=100, flags=RegFlags.T)
    [relayed] = to_ha(fa_with_sa().from_mobile_node(data + SkippedExtension(200, b"x").encode(),
                                                    MN_SRC, T0))
    req = RegistrationRequest.decode(relayed)
    assert relayed.startswith(data) and [getattr(e, "ext_type", None)
                                         for e in req.extensions][-2:] == [32, 34]


def test_rfc5944_3_8_2_2_no_fhae_on_deregistration_of_another_agents_coa(mn):
    data = mn.request("10.50.1.1", lifetime=0, flags=RegFlags(0))
    [relayed] = to_ha(fa_with_sa().from_mobile_node(data, MN_SRC, T0))
    assert RegistrationRequest.decode(relayed).foreign_home_auth is None


def test_rfc5944_3_7_2_2_deregistration_of_another_coa_relayed_and_answered(mn):
    # End to end with the home agent core: another FA's CoA, deregistered through us.
    f = fa_with_sa()
    ha = HomeAgent(config(foreign_agents=(ForeignAgentSA(FA, 900, Algorithm.HMAC_MD5,
                                                         FA_KEY),)))
    other = "10.50.1.1"
    ha.handle_request(mn.request(other, flags=RegFlags.D | RegFlags.T), (A(other), 434), T0)
    [relayed] = to_ha(f.from_mobile_node(mn.request(other, lifetime=0, flags=RegFlags(0)),
                                         MN_SRC, T0 + 1))
    out = ha.handle_request(relayed, (A("10.0.0.11"), 434), T0 + 1)
    assert out.code == 1 and ALICE not in ha.bindings
    assert [r.code for r in to_mn(f.from_home_agent(out.reply, (HA, 434), T0 + 1))] == [1]


# -- 3.7.3 replies ------------------------------------------------------------------------

def test_rfc5944_3_7_3_2_extensions_not_covered_by_the_mhae_removed(mn):
    f = fa_with_sa()
    f.from_mobile_node(mn.request(FA, lifetime=100, flags=RegFlags.T), MN_SRC, T0)
    msg = append_authenticator(RegistrationReply(1, 100, ALICE, HA, mn._last).encode(), 32,
                               256, KEY_A, Algorithm.HMAC_MD5)
    signed = append_authenticator(msg, 34, 900, FA_KEY, Algorithm.HMAC_MD5)
    out = [a.data for a in f.from_home_agent(signed, (HA, 434), T0).actions
           if isinstance(a, ToMobileNode)]
    assert out == [msg]


def test_rfc5944_3_7_3_1_exactly_one_fhae_in_the_reply(mn):
    f = fa_with_sa()
    f.from_mobile_node(mn.request(FA, lifetime=100, flags=RegFlags.T), MN_SRC, T0)
    msg = RegistrationReply(1, 100, ALICE, HA, mn._last).encode()
    twice = append_authenticator(append_authenticator(msg, 34, 900, FA_KEY,
                                                      Algorithm.HMAC_MD5),
                                 34, 900, FA_KEY, Algorithm.HMAC_MD5)
    assert [r.code for r in to_mn(f.from_home_agent(twice, (HA, 434), T0))] == [68]


def test_rfc5944_3_7_3_2_visitor_lifetime_at_most_the_agents_maximum(mn):
    f = fa(max_lifetime=300)
    f.from_mobile_node(mn.request(FA, lifetime=200, flags=RegFlags.T), MN_SRC, T0)
    res = f.from_home_agent(RegistrationReply(1, 5000, ALICE, HA, mn._last).encode(),
                            (HA, 434), T0)
    [up] = [a for a in res.actions if isinstance(a, VisitorUp)]
    assert up.visitor.expires_at == T0 + 300


# -- 4.1 / 3.3 encapsulations: GRE (G) offered, minimal (M) not ------------------------

def test_rfc5944_4_1_foreign_agent_relays_a_gre_request_and_tunnels_the_visitor_in_gre(mn):
    """G asked, GRE offered (the default): relayed to the home agent, and the visitor
    entry says GRE, both ways (RFC 3024 3: the reverse tunnel is the forward's twin)."""
    f = fa()
    res = f.from_mobile_node(mn.request(FA, lifetime=100, flags=RegFlags.T | RegFlags.G),
                             MN_SRC, T0)
    assert len(to_ha(res)) == 1 and not to_mn(res)
    res = f.from_home_agent(RegistrationReply(1, 100, ALICE, HA, mn._last).encode(),
                            (HA, 434), T0)
    [up] = [a for a in res.actions if isinstance(a, VisitorUp)]
    assert up.visitor.gre and up.visitor.reverse_tunnel


def test_rfc3024_4_2_1_gre_turned_off_72(mn):
    """``gre = false``: the requested encapsulation is unavailable here, 72."""
    res = fa(gre=False).from_mobile_node(mn.request(FA, lifetime=100,
                                                    flags=RegFlags.T | RegFlags.G), MN_SRC, T0)
    assert [r.code for r in to_mn(res)] == [72] and not to_ha(res)


def test_rfc3024_4_2_1_minimal_encapsulation_72(mn):
    res = fa().from_mobile_node(mn.request(FA, lifetime=100, flags=RegFlags.T | RegFlags.M),
                                MN_SRC, T0)
    assert [r.code for r in to_mn(res)] == [72] and not to_ha(res)


@pytest.mark.parametrize("gre", [True, False])
def test_rfc5944_2_1_1_g_advertised_when_gre_is_offered(gre):
    adv = AgentAdvertisement.decode(fa(gre=gre).advertisement())
    assert (AgentFlags.G in adv.flags) is gre and AgentFlags.M not in adv.flags


def test_rfc5944_4_1_gre_registration_end_to_end_through_the_fa(mn):
    """A mobile node that asks only for GRE registers through our FA with our HA."""
    f = fa_with_sa()
    ha = HomeAgent(config(foreign_agents=(ForeignAgentSA(FA, 900, Algorithm.HMAC_MD5,
                                                         FA_KEY),)))
    [relayed] = to_ha(f.from_mobile_node(mn.request(FA, lifetime=100,
                                                    flags=RegFlags.T | RegFlags.G), MN_SRC, T0))
    out = ha.handle_request(relayed, (A("10.0.0.11"), 434), T0)
    assert out.code == 1 and ha.bindings[ALICE].gre
    res = f.from_home_agent(out.reply, (HA, 434), T0)
    assert [r.code for r in to_mn(res)] == [1]
    assert [a.visitor.gre for a in res.actions if isinstance(a, VisitorUp)] == [True]


# -- 2.1.1 / 2.3 / 1.9 advertisements ----------------------------------------------------

def test_rfc5944_2_3_advertisement_interval_randomised():
    f = fa(advert_interval=1.0)
    rng = random.Random(7)
    gaps = [f.advert_delay(rng) for _ in range(200)]
    assert all(0.75 <= g <= 1.0 for g in gaps) and len({round(g, 3) for g in gaps}) > 50


def test_rfc5944_2_3_multicast_advertisement_rate_limited():
    f = fa()
    assert f.may_advertise(T0) and not f.may_advertise(T0 + 0.01)
    assert f.may_advertise(T0 + 0.2)


def test_rfc5944_2_1_1_busy_agent_sets_b_with_f():
    f = fa(max_visitors=1)
    f.visitors[ALICE] = object()  # type: ignore[assignment]
    adv = AgentAdvertisement.decode(f.advertisement())
    assert AgentFlags.B in adv.flags and AgentFlags.F in adv.flags


def test_rfc5944_2_1_1_busy_agent_refuses_new_mobile_nodes_66(mn):
    f = fa(max_visitors=1)
    f.visitors[A("10.20.1.77")] = object()  # type: ignore[assignment]
    [rep] = to_mn(f.from_mobile_node(mn.request(FA, lifetime=100, flags=RegFlags.T),
                                     MN_SRC, T0))
    assert rep.code == 66


def _advert(flags: AgentFlags, coas=(FA,), extra: bytes = b"") -> bytes:
    raw = AgentAdvertisement(1, 300, flags, coas).encode()
    return _with_checksum(raw[:2] + b"\0\0" + raw[4:] + extra)


@pytest.mark.parametrize("flags", [AgentFlags.B | AgentFlags.H, AgentFlags.T, AgentFlags(0)])
def test_rfc5944_2_1_1_advertisement_with_impossible_flags_discarded(flags):
    with pytest.raises(DecodeError):
        AgentAdvertisement.decode(_advert(flags))


def test_rfc5944_2_1_1_foreign_agent_advertisement_without_coa_discarded():
    with pytest.raises(DecodeError):
        AgentAdvertisement.decode(_advert(AgentFlags.F, coas=()))


def test_rfc5944_1_9_unknown_non_skippable_advertisement_extension_discards_it():
    with pytest.raises(UnknownExtensionError):
        AgentAdvertisement.decode(_advert(AgentFlags.F, extra=b"\x63\x02ab"))


def test_rfc5944_1_9_unknown_skippable_advertisement_extension_skipped():
    adv = AgentAdvertisement.decode(_advert(AgentFlags.F, extra=b"\xc8\x02ab\x13\x01\x18"))
    assert adv.care_of_addresses == (FA,) and adv.prefix_lengths == (24,)




@pytest.mark.parametrize("replay", ["timestamp", "nonce"])
def test_rfc5944_3_7_3_1_resync_through_an_fa_sharing_keys_with_the_ha(replay):
    # The 133 that a first nonce request (or a wrong clock) earns must reach the
    # mobile node through an FA that checks the HA's Foreign-Home authenticator.
    from app.mn.registration import (
        Registered,
        RegistrationClient,
        RegistrationConfig,
        ReplayMode,
    )
    from tests.mipclient import KEY_B
    from tests.support.identities import BOB

    f = fa_with_sa()
    ha = HomeAgent(config(foreign_agents=(ForeignAgentSA(FA, 900, Algorithm.HMAC_MD5,
                                                         FA_KEY),)))
    if replay == "nonce":
        cfg = RegistrationConfig(BOB, HA, 257, Algorithm.KEYED_MD5, KEY_B, lifetime=100,
                                 replay=ReplayMode.NONCE)
    else:
        cfg = RegistrationConfig(ALICE, HA, 256, Algorithm.HMAC_MD5, KEY_A, lifetime=100)
    c = RegistrationClient(cfg)
    if replay == "timestamp":
        c.clock_offset = 3600.0
    c.register(FA, T0, via=FA, lifetime=100)
    codes = []
    for _ in range(3):
        for d in c.datagrams_to_send():
            for up in to_ha(f.from_mobile_node(d.data, (cfg.home_address, 434), T0, ttl=d.ttl)):
                out = ha.handle_request(up, (A("10.0.0.11"), 434), T0)
                for a in f.from_home_agent(out.reply, (HA, 434), T0).actions:
                    if isinstance(a, ToMobileNode):
                        codes.append(RegistrationReply.decode(a.data).code)
                        c.receive(a.data, T0)
    assert codes == [133, 1]
    assert isinstance(c.next_event(), Registered)


def test_rfc3024_4_2_1_ttl_check_can_be_turned_off_for_nonconformant_nodes(mn):
    res = fa(require_ttl_255=False).from_mobile_node(
        mn.request(FA, lifetime=100, flags=RegFlags.T), MN_SRC, T0, ttl=64)
    assert to_ha(res)
