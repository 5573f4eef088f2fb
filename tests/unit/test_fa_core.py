"""The foreign agent's relay decisions, with a fake clock."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from app.agents.fa_config import ForeignAgentConfig, load
from app.agents.fa_core import ForeignAgent, ToHomeAgent, ToMobileNode, VisitorDown, VisitorUp
from app.mip.icmp import AgentAdvertisement, AgentFlags
from app.mip.messages import RegFlags, RegistrationReply
from tests.mipclient import KEY_A, Mn

A = IPv4Address
FA = A("10.40.1.1")
HA = A("10.20.1.1")
HOME = A("10.20.1.10")
MN_SRC = (A("10.40.1.150"), 434)
T0 = 1_800_000_000.0


@pytest.fixture
def fa():
    return ForeignAgent(ForeignAgentConfig(FA, "fa", max_lifetime=300))


@pytest.fixture
def mn():
    return Mn(HOME, HA, KEY_A, clock=lambda: T0)


def only(actions, kind):
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, actions
    return found[0]


def test_relay_and_reply_creates_visitor(fa, mn):
    data = mn.request(FA, lifetime=200, flags=RegFlags.T)
    res = fa.from_mobile_node(data, MN_SRC, T0)
    out = only(res.actions, ToHomeAgent)
    assert out.data == data and out.home_agent == HA  # relayed unchanged, MHAE intact
    rep = RegistrationReply(0, 200, HOME, HA, mn._last).encode()
    res = fa.from_home_agent(rep, (HA, 434), T0 + 0.1)
    up = only(res.actions, VisitorUp)
    assert up.visitor.home_address == HOME and up.visitor.reverse_tunnel
    assert up.visitor.expires_at == T0 + 0.1 + 200
    back = only(res.actions, ToMobileNode)
    assert back.data == rep and (back.address, back.port) == MN_SRC
    assert res.actions.index(up) < res.actions.index(back)  # route before reply


def test_denied_by_ha_is_relayed_without_visitor(fa, mn):
    fa.from_mobile_node(mn.request(FA, lifetime=100), MN_SRC, T0)
    res = fa.from_home_agent(RegistrationReply(131, 0, HOME, HA, mn._last).encode(), (HA, 434),
                             T0)
    assert not [a for a in res.actions if isinstance(a, VisitorUp)]
    assert RegistrationReply.decode(only(res.actions, ToMobileNode).data).code == 131


def test_unmatched_reply_dropped(fa, mn):
    res = fa.from_home_agent(RegistrationReply(0, 100, HOME, HA, 12345).encode(), (HA, 434), T0)
    assert res.actions == [] and "matches no pending" in res.log[0]


@pytest.mark.parametrize(("kw", "code"), [
    ({"lifetime": 301}, 69),
    ({"flags": RegFlags.T | RegFlags.M}, 72),
    ({"coa": "10.40.1.77", "flags": RegFlags.T}, 77),
    ({"sign": False}, 70),
])
def test_fa_denials(fa, mn, kw, code):
    coa = kw.pop("coa", FA)
    kw.setdefault("lifetime", 100)
    res = fa.from_mobile_node(mn.request(coa, **kw), MN_SRC, T0)
    rep = RegistrationReply.decode(only(res.actions, ToMobileNode).data)
    assert rep.code == code
    assert not [a for a in res.actions if isinstance(a, ToHomeAgent)]
    if code == 69:
        assert rep.lifetime == 300  # tells the MN what it may ask


def test_reverse_tunnel_codes():
    off = ForeignAgent(ForeignAgentConfig(FA, "fa", reverse_tunnelling=False))
    req = Mn(HOME, HA, KEY_A).request(FA, flags=RegFlags.T)
    assert RegistrationReply.decode(
        only(off.from_mobile_node(req, MN_SRC, T0).actions, ToMobileNode).data).code == 74
    must = ForeignAgent(ForeignAgentConfig(FA, "fa", reverse_tunnel_required=True))
    req = Mn(HOME, HA, KEY_A).request(FA, flags=RegFlags(0))
    assert RegistrationReply.decode(
        only(must.from_mobile_node(req, MN_SRC, T0).actions, ToMobileNode).data).code == 75


def test_registration_timeout_78(fa, mn):
    fa.from_mobile_node(mn.request(FA, lifetime=100), MN_SRC, T0)
    assert fa.tick(T0 + 6.9).actions == []
    res = fa.tick(T0 + 7.0)
    assert RegistrationReply.decode(only(res.actions, ToMobileNode).data).code == 78


def test_visitor_expiry_and_deregistration(fa, mn):
    fa.from_mobile_node(mn.request(FA, lifetime=100), MN_SRC, T0)
    fa.from_home_agent(RegistrationReply(0, 100, HOME, HA, mn._last).encode(), (HA, 434), T0)
    assert fa.next_deadline() == T0 + 100
    assert isinstance(fa.tick(T0 + 100).actions[0], VisitorDown) and not fa.visitors
    fa.from_mobile_node(mn.request(FA, lifetime=100), MN_SRC, T0)
    fa.from_home_agent(RegistrationReply(0, 100, HOME, HA, mn._last).encode(), (HA, 434), T0)
    fa.from_mobile_node(mn.request(FA, lifetime=0), MN_SRC, T0 + 1)
    res = fa.from_home_agent(RegistrationReply(0, 0, HOME, HA, mn._last).encode(), (HA, 434),
                             T0 + 1)
    assert isinstance(res.actions[0], VisitorDown) and not fa.visitors


def test_advertisement(fa):
    a = AgentAdvertisement.decode(fa.advertisement())
    b = AgentAdvertisement.decode(fa.advertisement())
    assert a.care_of_addresses == (FA,) and AgentFlags.F in a.flags and AgentFlags.T in a.flags
    assert a.registration_lifetime == 300 and a.code == 16
    assert b.sequence == a.sequence + 1
    fa._sequence = 0xFFFF
    fa.advertisement()
    assert AgentAdvertisement.decode(fa.advertisement()).sequence == 256  # RFC 5944 2.1.1


def test_fa_ha_security_association_both_ways(mn):
    from app.agents.fa_config import HomeAgentSA
    from app.mip.auth import Algorithm, append_authenticator, verify
    from app.mip.extensions import AuthExtension
    from app.mip.messages import RegistrationRequest

    key = bytes(range(16))
    fa = ForeignAgent(ForeignAgentConfig(FA, "fa", max_lifetime=300, home_agents=(
        HomeAgentSA(HA, 900, Algorithm.HMAC_MD5, key),)))
    res = fa.from_mobile_node(mn.request(FA, lifetime=100), MN_SRC, T0)
    relayed = RegistrationRequest.decode(only(res.actions, ToHomeAgent).data)
    fhae = relayed.extensions[-1]
    assert isinstance(fhae, AuthExtension) and fhae.ext_type == 34 and fhae.spi == 900
    assert verify(Algorithm.HMAC_MD5, key, fhae.covered, fhae.authenticator)
    # An unauthenticated reply (a forgery on the FA-HA path) is refused with 68.
    res = fa.from_home_agent(RegistrationReply(0, 100, HOME, HA, mn._last).encode(), (HA, 434),
                             T0)
    assert RegistrationReply.decode(only(res.actions, ToMobileNode).data).code == 68
    assert not fa.visitors
    fa.from_mobile_node(mn.request(FA, lifetime=100), MN_SRC, T0)
    good = append_authenticator(RegistrationReply(0, 100, HOME, HA, mn._last).encode(), 34, 900,
                                key, Algorithm.HMAC_MD5)
    res = fa.from_home_agent(good, (HA, 434), T0)
    assert only(res.actions, VisitorUp) and fa.visitors


def test_config_gre_key(tmp_path):
    """``gre`` in [foreign_agent]: on by default, false turns it off, else the key is named."""
    from app.config import ConfigError
    base = '[foreign_agent]\ncare_of_address = "10.40.1.1"\ninterface = "fa"\n'
    p = tmp_path / "fa.toml"
    p.write_text(base)
    assert load(p).gre
    p.write_text(base + "gre = false\n")
    assert not load(p).gre
    p.write_text(base + 'gre = "no"\n')
    with pytest.raises(ConfigError) as err:
        load(p)
    assert err.value.key == "foreign_agent.gre" and "true or false" in err.value.message
