"""The gate's captive-portal chains in a real nftables (issue 19; root, a namespace of
its own): a helper that died with a probe or a sign-in open leaves them shut."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from app.net import portal_gate
from app.net.gate_rules import TABLE, GatePolicy, render
from tests.haproc import env
from tests.requirements import require_root

NS = "tr-pg-mn"
HOME = IPv4Address("10.20.1.10")


@pytest.fixture(scope="module")
def ns() -> Iterator[str]:
    require_root("the portal gate test builds a network namespace")
    subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True, check=False)


def _nft(ns: str, script: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                   check=True)


def _rules(ns: str, chain: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "chain", "inet", TABLE,
                          chain], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines()
            if line.strip() and not line.strip().startswith(("table", "chain", "}", "type"))]


def test_a_helper_that_died_with_a_probe_open_leaves_the_portal_chains_empty(ns):
    _nft(ns, render(GatePolicy(IPv4Address("10.20.1.1"), HOME, "trmn0"), None))
    _nft(ns, portal_gate.render(HOME, ("eth0", 80), None))
    assert _rules(ns, "portal") and _rules(ns, "portal_in")
    subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                    "import asyncio; from app.net.gate import shut_left_gate; "
                    "asyncio.run(shut_left_gate())"], env=env(), check=True)
    assert _rules(ns, "portal") == [] and _rules(ns, "portal_in") == []
    assert _rules(ns, "portal_out") == []
