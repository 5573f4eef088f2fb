"""Kernel ESP's address layout decided untrusted (RFC 5266 3.4, issue 17, review finding 1).

The real helper and charon, mode mc on pub, then the kernel-ESP layout emulated
(``tests/lab/kernel_esp.py``: the TIA on ``eth0`` as charon's kernel-netlink
puts it, and what leaves from it to the intranet encrypted whatever its route),
then a MOBIKE move to nat, after which ``eth0`` lists the TIA first and the new
lease after it.  The direct request ("without any VPN encapsulation") must
leave from the lease, never from the TIA; the decision must stay untrusted:
mc, no mode c, no link-up or gate naming the TIA, and the home address still
reached through the VPN.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from app.lab.world import Lab
from tests.dbus_client import properties, run_as
from tests.lab.conftest import a_lab
from tests.lab.kernel_esp import kernel_esp_layout, link_addresses, requests_from_tia
from tests.lab.procs import Proc, history, vpn_helper_world, wait_history
from tests.lab.vpn_walk import ping_stream


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from a_lab(gw_inside=False)  # the gateways answer only from outside


@pytest.fixture(scope="module")
def world(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    yield from vpn_helper_world(lab, tmp_path_factory.mktemp("kesp"))


def props(world: dict[str, object]) -> dict[str, object]:
    value = run_as(None, str(world["bus"]), properties)
    assert isinstance(value, dict), value
    return value


def decided_on_the_new_link(world: dict[str, object], since: float, timeout: float = 30
                            ) -> tuple[str, dict[str, str]]:
    """The direct probe's outcome after ``since``: its timeout (staying in mc) or a
    new mode; woken by the helper's property changes, else once a second."""
    monitor = world["monitor"]
    assert isinstance(monitor, Proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t, kind, d in history(world, 80):
            if t >= since and (kind == "direct-timeout" or kind in ("mode", "error")):
                return kind, d
        with contextlib.suppress(TimeoutError):
            monitor.wait("", timeout=max(0.05, min(1.0, deadline - time.monotonic())))
    raise AssertionError(f"no outcome of the direct probe since {since}: {history(world, 30)}")


def test_rfc5266_3_4_kernel_esp_layout_a_move_in_mc_stays_untrusted(
        lab: Lab, world: dict[str, object]) -> None:
    wait_history(world, 0, "mode", {"mode": "h"}, timeout=25)
    t = time.time()
    lab.move("pub")
    wait_history(world, t, "mode", {"mode": "mc"}, timeout=25)
    tia = str(props(world)["TunnelInnerAddress"])
    assert tia, props(world)
    check_the_move_stays_untrusted(lab, world, tia, "nat")


def check_the_move_stays_untrusted(lab: Lab, world: dict[str, object], tia: str,
                                   net: str) -> None:
    """In mc with ``tia``: the kernel-ESP layout, a MOBIKE move to ``net``, judged."""
    with kernel_esp_layout(tia), ping_stream(drain=0.5) as pings:
        t = time.time()
        lab.move(net)
        kind, details = decided_on_the_new_link(world, t)
        entries = [(k, d) for tm, k, d in history(world, 120) if tm >= t]
        print("history since the move:", *entries, sep="\n  ")
        layout = link_addresses()
        assert layout[0] == f"{tia}/32" and len(layout) == 2, layout  # TIA first, lease
        ups = [d for k, d in entries if k == "link-up"]
        assert ups and all(not d["address"].startswith(f"{tia}/") for d in ups), ups
        assert requests_from_tia() == 0, "a direct request left the link from the TIA"
        gates = [d for k, d in entries if k == "gate" and "address" in d]
        assert all(d["address"] != tia for d in gates), gates
        assert not [d for k, d in entries if k == "mode" and d.get("mode") != "mc"], entries
        assert kind == "direct-timeout", (kind, details)
        wait_history(world, t, "mobike", timeout=20)  # charon moved the SA: MOBIKE only
        p = props(world)
        assert p["Mode"] == "mc" and p["State"] == "untrusted", p
        assert p["TunnelInnerAddress"] == tia, p
        pings.wait_reply(after=time.time(), timeout=20)  # mc carries the home address
