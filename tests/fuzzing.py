"""Random and mutated inputs for every decoder; shared by the suite and benchmarks/fuzz.py."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address

from app.mip.auth import Algorithm, append_authenticator
from app.mip.errors import DecodeError
from app.mip.extensions import NaiExtension, SkippedExtension, UdpTunnelReply, UdpTunnelRequest
from app.mip.icmp import AgentAdvertisement, AgentFlags, AgentSolicitation
from app.mip.messages import (
    RegFlags,
    RegistrationReply,
    RegistrationRequest,
    TunnelData,
    decode_message,
)

A = IPv4Address
DECODERS: list[Callable[[bytes], object]] = [
    decode_message, RegistrationRequest.decode, RegistrationRequest.decode_header,
    RegistrationReply.decode, TunnelData.decode, AgentAdvertisement.decode,
    AgentSolicitation.decode,
]


def seeds() -> list[bytes]:
    rrq = RegistrationRequest(RegFlags.D | RegFlags.T, 600, A("10.20.1.10"), A("10.20.1.1"),
                              A("10.30.0.5"), 1 << 40,
                              (NaiExtension("alice@corp.example"), UdpTunnelRequest(True),
                               SkippedExtension(200, b"abc"))).encode()
    rrp = RegistrationReply(0, 600, A("10.20.1.10"), A("10.20.1.1"), 1 << 40,
                            (UdpTunnelReply(0, True, 110),)).encode()
    adv = AgentAdvertisement(1, 600, AgentFlags.F | AgentFlags.T, (A("10.30.1.1"),),
                             ((A("10.30.1.1"), 0),), prefix_lengths=(24,)).encode()
    return [
        append_authenticator(rrq, 32, 256, b"k" * 16, Algorithm.HMAC_MD5),
        append_authenticator(rrp, 32, 256, b"k" * 16, Algorithm.HMAC_MD5),
        TunnelData(b"\x45" + bytes(39)).encode(), adv, AgentSolicitation().encode(),
    ]


def inputs(n: int, seed: int = 5266) -> Iterator[bytes]:
    """n inputs: half random bytes (biased to plausible type bytes), half mutations."""
    rng = random.Random(seed)
    base = seeds()
    for i in range(n):
        if i % 2 == 0:
            size = rng.choice([0, 1, 3, 4, 7, 8, 19, 20, 23, 24, 25, 30, 44, 60, 120])
            data = bytearray(rng.getrandbits(8) for _ in range(size))
            if data:
                data[0] = rng.choice([1, 3, 4, 9, 10, rng.getrandbits(8)])
            yield bytes(data)
        else:
            data = bytearray(rng.choice(base))
            for _ in range(rng.randint(1, 4)):
                op = rng.randrange(4)
                if op == 0 and data:
                    data[rng.randrange(len(data))] = rng.getrandbits(8)
                elif op == 1 and data:
                    del data[rng.randrange(len(data)):]
                elif op == 2:
                    data.insert(rng.randrange(len(data) + 1), rng.getrandbits(8))
                elif data:
                    p = rng.randrange(len(data))
                    data[p] ^= 1 << rng.randrange(8)
            yield bytes(data)


def run(n: int, seed: int = 5266) -> tuple[int, int]:
    """Feed n inputs to every decoder; return (decoded, rejected).  Anything else raises."""
    ok = bad = 0
    for data in inputs(n, seed):
        for decode in DECODERS:
            try:
                decode(data)
                ok += 1
            except DecodeError:
                bad += 1
    return ok, bad
