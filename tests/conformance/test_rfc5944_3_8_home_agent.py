"""RFC 5944 section 3.8: the home agent's registration processing, one test per rule."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from app.agents.ha_config import ForeignAgentSA
from app.agents.ha_core import HomeAgent
from app.mip import ident
from app.mip.auth import Algorithm, append_authenticator
from app.mip.messages import RegFlags, RegistrationReply
from tests.mipclient import KEY_A, KEY_B, Mn
from tests.support.identities import ALICE, BOB, HA, T0, config

A = IPv4Address
COA = "10.30.0.5"
SRC = (A(COA), 434)
FA_COA = A("10.40.1.1")
FA_SRC = (A("10.0.0.11"), 434)  # the FA's address towards the home agent
FA_KEY = bytes(range(32, 48))
OTHER_FA_COA = A("10.50.1.1")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def alice(clock):
    return Mn(ALICE, HA, KEY_A, clock=clock)


def fa_ha(**kw):
    return HomeAgent(config(foreign_agents=(ForeignAgentSA(FA_COA, 900, Algorithm.HMAC_MD5,
                                                           FA_KEY),), **kw))


def with_fhae(data: bytes, key: bytes = FA_KEY) -> bytes:
    return append_authenticator(data, 34, 900, key, Algorithm.HMAC_MD5)


def code(out) -> int | None:
    return None if out.reply is None else RegistrationReply.decode(out.reply).code


# -- 3.8.2.1 a ------------------------------------------------------------------

def test_rfc5944_3_8_2_1_a_no_security_association_silently_discarded(clock):
    stranger = Mn(A("10.20.1.99"), HA, KEY_A, clock=clock)
    out = HomeAgent(config()).handle_request(stranger.request(COA), SRC, clock.now)
    assert out.reply is None
    assert "no security association" in out.log  # logged


def test_rfc5944_3_8_2_1_a_no_authorization_enabling_extension_silently_discarded(
        alice, clock):
    out = HomeAgent(config()).handle_request(alice.request(COA, sign=False), SRC, clock.now)
    assert out.reply is None and "no mobile-home authentication" in out.log


def test_rfc5944_3_8_2_1_a_invalid_authenticator_131_signed(alice, clock):
    out = HomeAgent(config()).handle_request(alice.request(COA, key=b"\x01" * 16), SRC,
                                             clock.now)
    assert code(out) == 131
    alice.check_reply(out.reply)  # carries a valid Mobile-Home authenticator


# -- 3.8.2.1 b before c -------------------------------------------------------------

def test_rfc5944_3_8_2_1_b_identification_checked_before_foreign_agent_133_not_132(
        alice, clock):
    ha = fa_ha()
    alice.clock_offset = -3600  # stale identification AND no FHAE
    out = ha.handle_request(alice.request(str(FA_COA), flags=RegFlags.T), FA_SRC, clock.now)
    assert code(out) == 133


# -- 3.8.2.1 c / 3.7.2.2: FHAE only for registrations --------------------------------

def test_rfc5944_3_8_2_1_c_registration_through_fa_with_sa_needs_fhae(alice, clock):
    ha = fa_ha()
    out = ha.handle_request(alice.request(str(FA_COA), flags=RegFlags.T), FA_SRC, clock.now)
    assert code(out) == 132


def test_rfc5944_3_8_2_1_c_exactly_one_fhae(alice, clock):
    ha = fa_ha()
    data = with_fhae(with_fhae(alice.request(str(FA_COA), flags=RegFlags.T)))
    assert code(ha.handle_request(data, FA_SRC, clock.now)) == 132


def test_rfc5944_3_8_2_1_c_deregistration_relayed_by_any_fa_needs_no_fhae(alice, clock):
    ha = fa_ha()
    out = ha.handle_request(with_fhae(alice.request(str(FA_COA), flags=RegFlags.T)), FA_SRC,
                            clock.now)
    assert code(out) == 1
    clock.now += 1
    # relayed by another FA (no SA with us), which adds no FHAE for a CoA not its own
    out = ha.handle_request(alice.request(str(FA_COA), lifetime=0, flags=RegFlags(0)),
                            (A("10.0.0.99"), 434), clock.now)
    assert code(out) == 1 and ALICE not in ha.bindings


def test_rfc5944_3_8_2_1_c_deregistration_sent_directly_with_the_fas_coa(alice, clock):
    ha = fa_ha()
    ha.handle_request(with_fhae(alice.request(str(FA_COA), flags=RegFlags.T)), FA_SRC,
                      clock.now)
    clock.now += 1
    out = ha.handle_request(alice.request(str(FA_COA), lifetime=0, flags=RegFlags(0)),
                            (A("192.0.2.7"), 434), clock.now)
    assert code(out) == 1 and ALICE not in ha.bindings


def test_rfc5944_3_8_2_1_d_fhae_from_an_fa_without_sa_discarded(alice, clock):
    ha = HomeAgent(config())  # shares no key with any FA
    data = with_fhae(alice.request(str(FA_COA), flags=RegFlags.T))
    out = ha.handle_request(data, FA_SRC, clock.now)
    assert out.reply is None and "discarded" in out.log
    assert ALICE not in ha.bindings


# -- 3.8.2.2 Accepting a Valid Request ----------------------------------------------

def test_rfc5944_3_8_2_2_lifetime_0_removes_only_the_binding_to_that_coa(alice, clock):
    ha = HomeAgent(config())
    ha.handle_request(alice.request(COA), SRC, clock.now)
    clock.now += 1
    out = ha.handle_request(alice.request("10.30.9.9", lifetime=0), SRC, clock.now)
    assert code(out) == 1
    assert ha.bindings[ALICE].care_of_address == A(COA)
    assert out.changes == ()
    clock.now += 1
    out = ha.handle_request(alice.request(COA, lifetime=0), SRC, clock.now)
    assert code(out) == 1 and ALICE not in ha.bindings


def test_rfc5944_3_8_2_2_coa_equal_home_address_removes_every_binding(alice, clock):
    ha = HomeAgent(config())
    ha.handle_request(alice.request(COA), SRC, clock.now)
    clock.now += 1
    out = ha.handle_request(alice.request(str(ALICE), lifetime=0), (ALICE, 434), clock.now)
    assert code(out) == 1 and ALICE not in ha.bindings


def test_rfc5944_3_8_2_2_lifetime_never_increased(alice, clock):
    out = HomeAgent(config(max_lifetime=300)).handle_request(alice.request(COA, lifetime=20),
                                                             SRC, clock.now)
    assert RegistrationReply.decode(out.reply).lifetime == 20


# -- 3.8.3.1 IP/UDP fields: a node at home --------------------------------------------

@pytest.mark.parametrize("stale", [False, True])
def test_rfc5944_3_8_3_1_reply_to_a_node_at_home_goes_on_the_home_link(alice, clock, stale):
    ha = HomeAgent(config())
    ha.handle_request(alice.request(COA), SRC, clock.now)
    clock.now += 1
    # stale: denied (133), so the binding to the CoA still exists
    i = ident.ntp_from_unix(clock.now - 3600) if stale else None
    out = ha.handle_request(alice.request(str(ALICE), lifetime=0, identification=i),
                            (ALICE, 434), clock.now)
    assert code(out) == (133 if stale else 1)
    assert (ALICE in ha.bindings) == stale
    assert out.home_link
    # ... and never for a node away from home
    clock.now += 1
    assert not ha.handle_request(alice.request(COA), SRC, clock.now).home_link


# -- 3.8.3.2 Registration Reply fields ---------------------------------------------------

@pytest.mark.parametrize("flags", [RegFlags.D | RegFlags.T, RegFlags.S | RegFlags.D])
def test_rfc5944_3_8_3_2_code_1_without_simultaneous_bindings(alice, clock, flags):
    out = HomeAgent(config()).handle_request(alice.request(COA, flags=flags), SRC, clock.now)
    assert code(out) == 1


def test_rfc5944_3_8_3_2_identification_low_bits_copied_and_home_agent_field(alice, clock):
    data = alice.request(COA)
    out = HomeAgent(config()).handle_request(data, SRC, clock.now)
    rep = RegistrationReply.decode(out.reply)
    assert rep.home_agent == HA and rep.identification == alice._last


# -- 3.3, 4.1 encapsulations: GRE (G) offered, minimal (M) not --------------------------

@pytest.mark.parametrize("flags", [RegFlags.D | RegFlags.G, RegFlags.D | RegFlags.G | RegFlags.T,
                                   RegFlags.G | RegFlags.T])
def test_rfc5944_3_3_g_bit_accepted_binding_tunnelled_in_gre(alice, clock, flags):
    """G asks for GRE; with ``gre = true`` (the default) the request is accepted and
    the binding is tunnelled in GRE (the data plane reads ``Binding.gre``)."""
    ha = HomeAgent(config())
    out = ha.handle_request(alice.request(COA, flags=flags), SRC, clock.now)
    assert code(out) == 1
    assert ha.bindings[ALICE].gre and RegFlags.G in ha.bindings[ALICE].flags
    assert "in GRE" in out.log


def test_rfc5944_3_3_without_g_the_binding_is_ip_in_ip(alice, clock):
    ha = HomeAgent(config())
    assert code(ha.handle_request(alice.request(COA), SRC, clock.now)) == 1
    assert not ha.bindings[ALICE].gre


def test_rfc5944_3_8_2_3_gre_turned_off_139(alice, clock):
    """``gre = false``: G asks for an encapsulation this agent does not offer, 139."""
    ha = HomeAgent(config(gre=False))
    out = ha.handle_request(alice.request(COA, flags=RegFlags.D | RegFlags.G), SRC, clock.now)
    assert code(out) == 139 and ALICE not in ha.bindings and "home_agent.gre" in out.log


@pytest.mark.parametrize("flags", [RegFlags.D | RegFlags.M, RegFlags.D | RegFlags.M | RegFlags.G])
def test_rfc5944_3_8_2_3_minimal_encapsulation_139(alice, clock, flags):
    ha = HomeAgent(config())
    assert code(ha.handle_request(alice.request(COA, flags=flags), SRC, clock.now)) == 139


def test_rfc5944_3_3_renewal_without_g_moves_the_binding_to_ip_in_ip(alice, clock):
    ha = HomeAgent(config())
    ha.handle_request(alice.request(COA, flags=RegFlags.D | RegFlags.G), SRC, clock.now)
    clock.now += 1
    out = ha.handle_request(alice.request(COA), SRC, clock.now)
    assert code(out) == 1 and not ha.bindings[ALICE].gre
    assert out.changes[0].previous is not None and out.changes[0].previous.gre


# -- 5.7.2 Nonces -----------------------------------------------------------------

def test_rfc5944_5_7_2_a_delayed_copy_does_not_void_the_nonce_given(clock):
    bob = Mn(BOB, HA, KEY_B, spi=257, algorithm=Algorithm.KEYED_MD5, clock=clock,
             nonce_mode=True)
    ha = HomeAgent(config(), nonce=iter(range(1000, 2000)).__next__)
    first = bob.request(COA)
    rep = bob.check_reply(ha.handle_request(first, SRC, clock.now).reply)
    assert rep.code == 133
    bob.learn(rep)
    resynced = bob.request(COA)
    # the unchanged retransmission of the first request arrives late ...
    late = bob.check_reply(ha.handle_request(first, SRC, clock.now).reply)
    assert late.code == 133 and ident.high(late.identification) == bob.ha_nonce
    # ... and the request made with the nonce the HA gave is still accepted
    assert bob.check_reply(ha.handle_request(resynced, SRC, clock.now).reply).code == 1


def test_rfc5944_5_7_a_request_denied_132_cannot_be_replayed_with_a_valid_fhae(alice, clock):
    ha = fa_ha()
    data = alice.request(str(FA_COA), flags=RegFlags.T)
    assert code(ha.handle_request(with_fhae(data, key=b"\x05" * 16), FA_SRC, clock.now)) == 132
    assert code(ha.handle_request(with_fhae(data), FA_SRC, clock.now)) == 133
