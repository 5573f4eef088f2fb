"""Hypothesis strategies for every Mobile IP message and extension."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import strategies as st

from app.mip.extensions import (
    AuthExtension,
    NaiExtension,
    SkippedExtension,
    UdpTunnelReply,
    UdpTunnelRequest,
)
from app.mip.icmp import AgentAdvertisement, AgentFlags
from app.mip.messages import RegFlags, RegistrationReply, RegistrationRequest, TunnelData

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 0xFFFF_FFFF_FFFF_FFFF)
addr = st.builds(IPv4Address, u32)

auth_ext = st.builds(AuthExtension, st.sampled_from([32, 33, 34]), u32,
                     st.binary(min_size=0, max_size=251))
nai_ext = st.builds(NaiExtension, st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=60))
utrq = st.builds(UdpTunnelRequest, st.booleans(), st.booleans(), st.sampled_from([4, 47, 55]))
utrp = st.builds(UdpTunnelReply, st.sampled_from([0, 64]), st.booleans(), u16)
skipped = st.builds(SkippedExtension,
                    st.integers(128, 255).filter(lambda t: t not in (131, 144)),
                    st.binary(max_size=255))
extension = st.one_of(auth_ext, nai_ext, utrq, utrp, skipped)

request = st.builds(RegistrationRequest, st.builds(RegFlags, u8), u16, addr, addr, addr, u64,
                    st.lists(extension, max_size=5).map(tuple))
reply = st.builds(RegistrationReply, u8, u16, addr, addr, u64,
                  st.lists(extension, max_size=5).map(tuple))
tunnel = st.builds(TunnelData, st.binary(max_size=200), st.sampled_from([4, 47, 55]))
advert = st.builds(
    AgentAdvertisement, u16, u16, st.builds(AgentFlags, st.integers(0, 0xFFE0)),
    st.lists(addr, max_size=4).map(tuple),
    st.lists(st.tuples(addr, st.integers(-(2**31), 2**31 - 1)), max_size=3).map(tuple),
    u16, st.one_of(st.none(), st.lists(st.integers(0, 32), max_size=4).map(tuple)),
    st.sampled_from([0, 16])).filter(
    # RFC 5944 2.1.1: F or H, B only with F, an FA advertises a care-of address
    lambda a: bool(a.flags & (AgentFlags.F | AgentFlags.H))
    and (not a.flags & AgentFlags.B or bool(a.flags & AgentFlags.F))
    and (not a.flags & AgentFlags.F or bool(a.care_of_addresses)))
