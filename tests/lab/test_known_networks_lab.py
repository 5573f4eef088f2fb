"""RFC 5266 5 in the lab: no direct probe on a network already judged untrusted.

The real helper with ``[probe] skip_known_untrusted = true`` and a state
directory, charon, the home agent.  pub is judged untrusted on the first visit
(its probe unanswered, mode mc); after a trusted network, the next visit to pub
must send nothing to the home agent's address in clear (tcpdump on pub's bridge,
tshark decodes) and still reach mc; once pub's router has another MAC (another
network for all the laptop can tell), it is probed again.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.lab.configs import HA, write_helper_files
from app.lab.world import Lab
from tests.lab.conftest import a_lab
from tests.lab.leaks import read_frames
from tests.lab.procs import GW1, helper_world, history, mac_of_mn, wait_history
from tests.lab.vpn_walk import bridge_capture

ROUTER, ROUTER_IFACE = "tr-er", "pub"
"""pub's router (app/lab/topology.py) and its port on pub."""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from a_lab(gw_inside=False)


@pytest.fixture(scope="module")
def world(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("known")
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1,))
    f = profiles / "corp.toml"
    text = f.read_text()
    assert "retries = 1\n" in text
    f.write_text(text.replace("retries = 1\n", "retries = 1\nskip_known_untrusted = true\n", 1))
    with helper_world(lab.nm_bus(), d, profiles, secrets,
                      helper_args=("--state-dir", str(d / "state"))) as w:
        yield w


def router_mac(mac: str | None = None) -> str:
    """pub's router's MAC; set to ``mac`` first if given."""
    if mac is not None:
        subprocess.run(["ip", "-n", ROUTER, "link", "set", "dev", ROUTER_IFACE, "address", mac],
                       check=True)
    out = subprocess.run(["ip", "-n", ROUTER, "-br", "link", "show", ROUTER_IFACE],
                         capture_output=True, text=True, check=True).stdout.split()
    return out[2]


def visit(lab: Lab, world: dict[str, object], net: str, mode: str) -> float:
    t = time.time()
    lab.move(net)
    wait_history(world, t, "mode", {"mode": mode}, timeout=25)
    return t


def to_home_agent(pcap: Path) -> list[dict[str, str]]:
    """Frames of the capture whose outermost IPv4 header is to the home agent."""
    return [dict(f.fields) for f in read_frames(pcap) if f["ip.dst"] == HA]


def remembered(world: dict[str, object]) -> dict[str, float]:
    path = Path(str(world["dir"])) / "state" / "known-networks.json"
    if not path.exists():
        return {}
    doc = json.loads(path.read_text())
    return dict(doc["untrusted"])


def test_rfc5266_5_on_a_known_untrusted_network_nothing_goes_to_the_home_agent_in_clear(
        lab: Lab, world: dict[str, object]) -> None:
    d = Path(str(world["dir"]))
    wait_history(world, 0, "mode", {"mode": "h"}, timeout=25)
    mac = mac_of_mn()
    original = router_mac()
    try:
        # First visit: probed (the probe's budget, 1 + 2 s, runs out in mc), remembered.
        with bridge_capture(d / "first.pcap", "pub", f"ether host {mac}") as first:
            t = visit(lab, world, "pub", "mc")
            wait_history(world, t, "direct-timeout", timeout=15)
        assert to_home_agent(first), "the first visit's probe was not seen: judged nothing"
        assert len(remembered(world)) == 1, remembered(world)

        visit(lab, world, "t1", "c")
        with bridge_capture(d / "again.pcap", "pub", f"ether host {mac}") as again:
            t = visit(lab, world, "pub", "mc")
            wait_history(world, t, "known-untrusted", timeout=5)
            # A probe would have left in the link-up's step, before mc: in the capture.
        assert to_home_agent(again) == [], to_home_agent(again)[:5]
        frames = read_frames(again)
        assert [f for f in frames if f["esp.spi"]], "no ESP on the second visit: judged nothing"
        kinds = [k for tm, k, dd in history(world, 60)
                 if tm >= t and k == "probe-sent" and dd.get("vpn") != "true"]
        assert kinds == [], "a direct probe on a known-untrusted network"

        # Another router on pub's subnet: another network, probed again.
        router_mac("02:00:5e:10:00:99")
        visit(lab, world, "t1", "c")
        with bridge_capture(d / "changed.pcap", "pub", f"ether host {mac}") as changed:
            t = visit(lab, world, "pub", "mc")
            wait_history(world, t, "direct-timeout", timeout=15)
        assert to_home_agent(changed), "a changed identity was not probed"
        assert len(remembered(world)) == 2, remembered(world)
    finally:
        router_mac(original)
