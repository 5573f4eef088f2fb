"""SaveProfile stores ``dumps(p)``: whatever a valid profile holds, ``[vpn]`` table
included, must read back as the same profile."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from app.mip.auth import Algorithm
from app.mn import profile as profiles
from app.mn.profile import Profile
from app.mn.registration import ReplayMode, UdpTunnelling
from app.vpn.profile import (
    AEAD,
    ENCRYPTION,
    ESN,
    INTEGRITY,
    KEY_EXCHANGE,
    PRF,
    AuthMethod,
    VpnConfig,
    identity_problem,
)

HOME_NET = IPv4Network("10.20.1.0/24")
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
# A name needs one label that is not all digits (else it reads as a bad address).
HOST = st.builds(lambda a, b: f"{a}.{b}", LABEL, st.from_regex(r"[a-z][a-z0-9]{0,5}",
                                                                fullmatch=True))
GATEWAY = st.one_of(HOST, st.builds(lambda n: str(IPv4Address(n)),
                                    st.integers(0x0100_0000, 0xDFFF_FFFF)))
# One line of text, 1 to 255 bytes, not blank: quotes, backslashes and tabs included.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0\n\r"),
               min_size=1, max_size=40).filter(lambda s: s.strip() != "")
NAI = TEXT.filter(str.isprintable)
PATH = st.lists(st.from_regex(r"[A-Za-z0-9_. \"\\-]{1,8}", fullmatch=True)
                .filter(lambda s: s not in (".", "..")), min_size=1, max_size=3
                ).map(lambda parts: Path("/", *parts))
# What validation accepts: identities of one peer, proposals of allowed algorithms.
IDENTITY = TEXT.filter(lambda s: not identity_problem(s))


def _one(names: frozenset[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(sorted(names))


IKE_PROPOSAL = st.one_of(
    st.builds("-".join, st.tuples(_one(ENCRYPTION), _one(INTEGRITY),
                                  _one(KEY_EXCHANGE))),
    st.builds("-".join, st.tuples(_one(AEAD), _one(PRF), _one(KEY_EXCHANGE))))
ESP_PROPOSAL = st.one_of(
    st.builds("-".join, st.tuples(_one(ENCRYPTION), _one(INTEGRITY))),
    st.builds("-".join, st.tuples(_one(AEAD), _one(KEY_EXCHANGE), _one(ESN))))
NETWORK = st.builds(lambda n, plen: IPv4Network((n, plen), strict=False),
                    st.integers(0, 0xFFFF_FFFF), st.integers(8, 30))


@st.composite
def vpn_configs(draw: st.DrawFn) -> VpnConfig:
    auth = draw(st.sampled_from(AuthMethod))
    pubkey = auth is AuthMethod.PUBKEY
    maybe_path = st.none() | PATH
    return VpnConfig(
        gateways=tuple(draw(st.lists(GATEWAY, min_size=1, max_size=3, unique=True))),
        identity=draw(IDENTITY), auth=auth, remote_identity=draw(st.none() | IDENTITY),
        ca_file=draw(maybe_path),
        cert_file=draw(PATH) if pubkey else None, key_file=draw(PATH) if pubkey else None,
        keep_alive_inside=draw(st.booleans()), dpd_delay=draw(st.integers(1, 3600)),
        # parse() fills an absent intranet with the home network: never empty.
        intranet=tuple(draw(st.just([HOME_NET]) | st.lists(NETWORK, min_size=1, max_size=3))),
        ike_proposals=tuple(draw(st.lists(IKE_PROPOSAL, max_size=2))),
        esp_proposals=tuple(draw(st.lists(ESP_PROPOSAL, max_size=2))))


@st.composite
def profiles_(draw: st.DrawFn) -> Profile:
    return Profile(
        name=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
        home_address=IPv4Address("10.20.1.10"), home_network=HOME_NET,
        home_agent=IPv4Address("10.20.1.1"), spi=draw(st.integers(256, 0xFFFF_FFFF)),
        algorithm=draw(st.sampled_from(Algorithm)), nai=draw(st.none() | NAI),
        lifetime=draw(st.integers(1, 65534)),
        renew_fraction=draw(st.floats(0.1, 0.95)),
        interface=draw(st.none() | st.from_regex(r"[a-z][a-z0-9.]{0,14}", fullmatch=True)),
        initial_timeout=draw(st.floats(1.0, 30.0)), retries=draw(st.integers(0, 20)),
        replay=draw(st.sampled_from(ReplayMode)),
        udp_tunnelling=draw(st.sampled_from(UdpTunnelling)),
        foreign_agents=draw(st.booleans()), gate_enabled=draw(st.booleans()),
        vpn=draw(st.none() | vpn_configs()), source="profile")


@settings(max_examples=300)
@given(profiles_())
def test_dumps_reads_back_as_the_same_profile(p: Profile) -> None:
    text = profiles.dumps(p)
    assert profiles.loads(text) == p, text


def test_a_vpn_table_is_written_only_when_there_is_one() -> None:
    base = Profile("corp", IPv4Address("10.20.1.10"), HOME_NET, IPv4Address("10.20.1.1"),
                   256, source="profile")
    assert "[vpn]" not in profiles.dumps(base)
    with_vpn = dataclasses.replace(base, vpn=VpnConfig(("vpn.corp.example",), "alice",
                                                       intranet=(HOME_NET,)))
    text = profiles.dumps(with_vpn)
    assert '[vpn]\ngateways = ["vpn.corp.example"]\nidentity = "alice"\n' in text
    assert "intranet" not in text  # the default follows home_network
    assert profiles.loads(text) == with_vpn
