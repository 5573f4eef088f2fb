"""The home agent and mobile nodes the unit and conformance suites share: two
mobile nodes on the home network 10.20.1.0/24, Alice (timestamps, HMAC-MD5) and
Bob (nonces, keyed MD5), and a fixed start time for fake clocks."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from app.agents.ha_config import HomeAgentConfig, MobileNodeConfig, ReplayStyle
from app.mip.auth import Algorithm
from tests.mipclient import KEY_A, KEY_B

HA = IPv4Address("10.20.1.1")
ALICE = IPv4Address("10.20.1.10")
BOB = IPv4Address("10.20.1.11")
T0 = 1_800_000_000.0


def config(**kw: Any) -> HomeAgentConfig:
    """The home agent serving Alice and Bob, with ``kw`` replacing its fields."""
    nodes = (
        MobileNodeConfig(ALICE, 256, Algorithm.HMAC_MD5, KEY_A, "alice@corp.example"),
        MobileNodeConfig(BOB, 257, Algorithm.KEYED_MD5, KEY_B, "bob@corp.example",
                         ReplayStyle.NONCE),
    )
    base = HomeAgentConfig(HA, IPv4Network("10.20.1.0/24"), nodes, state_dir=Path("/nonexist"))
    return replace(base, **kw)


ALICE_KEY_HEX = "00112233445566778899aabbccddeeff"
"""A key as a helper's profile/secrets files hold it (hex)."""
ALICE_PROFILE = """home_address = "10.20.1.10"
home_network = "10.20.1.0/24"
home_agent = "10.20.1.1"
spi = 256
"""
"""Alice's profile file, the least a helper accepts."""
