"""Lab fixtures: one lab per test module, torn down even when a test fails."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from app.lab.topology import MN, MN_IFACE
from app.lab.world import Lab
from tests.requirements import require_root


@pytest.fixture(autouse=True)
def _root() -> None:
    """Every lab test needs root: skipped with this reason locally, a failure in CI."""
    require_root()


def mn_address(timeout: float = 10.0, prefix: str = "") -> str:
    """Wait for the mobile node's DHCP address (optionally inside ``prefix``) and the
    default route that comes with it (the DHCP client sets them one after the other)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "-n", MN, "-j", "-4", "addr", "show", MN_IFACE],
                             capture_output=True, text=True, check=False)
        route = subprocess.run(["ip", "-n", MN, "-j", "-4", "route", "show", "default",
                                "dev", MN_IFACE], capture_output=True, text=True, check=False)
        try:
            gateways = [r.get("gateway", "") for r in json.loads(route.stdout or "[]")]
            for a in json.loads(out.stdout)[0]["addr_info"]:
                net = a["local"].rsplit(".", 1)[0] + "."
                if a["local"].startswith(prefix) and any(g.startswith(net) for g in gateways):
                    return str(a["local"])
        except (ValueError, IndexError, KeyError):
            pass
        time.sleep(0.02)  # polling netlink state; dhclient gives no other signal
    raise TimeoutError(f"mobile node got no address in {prefix or 'any network'!r}")


def ns_exec(node: str, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", node, *cmd], capture_output=True, text=True,
                          timeout=timeout, check=False)


def a_lab(**up: bool) -> Iterator[Lab]:
    """One lab for a module (``up``: ``Lab.up``'s options), torn down whatever happens."""
    require_root()
    world = Lab()
    world.down()  # a crashed earlier run must not block this one
    world.up(**up)
    try:
        yield world
    finally:
        world.down()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from a_lab()


@pytest.fixture(scope="module")
def lab_nm() -> Iterator[Lab]:
    """The lab with the real NetworkManager managing the MN's eth0 (private system bus)."""
    yield from a_lab(nm=True)
