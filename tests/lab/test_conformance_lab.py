"""RFC 5944 end to end in the lab with the real helper, against the real agents.

What the conformance suite (tests/conformance) shows on the pure cores, here on
the wire: the request through a foreign agent leaves from the home address
with TTL 255 (tshark reads it), a renewal through a foreign agent that died
falls back to a direct registration with the TCP session alive, and a mobile
node whose clock is an hour ahead of the home agent's registers after one 133.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.lab.configs import HA, HOME, PROFILE_TOML, write_helper_files
from app.lab.topology import SWITCH
from app.lab.world import LabState
from tests.lab.procs import (
    Proc,
    carries_data_again,
    echo_session,
    helper_world,
    history,
    wait_history,
)
from tests.requirements import TSHARK, require, require_tshark

FA = "10.40.1.1"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


@pytest.fixture
def world(lab, tmp_path) -> Iterator[dict[str, object]]:
    profiles, secrets = write_helper_files(tmp_path, "corp")
    # A short lifetime: the renewal through the FA comes within the test.
    (profiles / "corp.toml").write_text("lifetime = 20\n" + PROFILE_TOML)
    with helper_world(lab.nm_bus(), tmp_path, profiles, secrets,
                      fa_advert_interval=0.5) as w:
        yield w


def test_rfc5944_3_6_1_1_request_through_the_fa_leaves_from_the_home_address_ttl_255(
        lab, world, tmp_path):
    require_tshark()
    pcap = tmp_path / "fa1.pcap"
    cap = Proc(SWITCH, "tcpdump", "-U", "--immediate-mode", "-n", "-i", "br-fa1", "-w",
               str(pcap), "udp dst port 434", stderr_lines=True)
    assert cap.err is not None
    cap.err.wait("listening on")
    _away_from(lab, "fa1")
    t = time.time()
    try:
        lab.move("fa1")
        wait_history(world, t, "mode", {"state": "trusted", "mode": "f"}, timeout=20)
    finally:
        cap.p.send_signal(2)
        cap.p.wait(10)
    out = subprocess.run([str(TSHARK), "-r", str(pcap), "-T", "fields", "-e", "ip.src",
                          "-e", "ip.dst", "-e", "ip.ttl", "-e", "mip.type", "-e", "mip.coa",
                          "-e", "mip.flags"], capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in out.stdout.splitlines() if line.strip()]
    to_fa = [r for r in rows if r[1] == FA and r[3] == "1"]
    assert to_fa, rows
    for src, _dst, ttl, _type, coa, _flags in to_fa:
        assert (src, ttl, coa) == (HOME, "255", FA), to_fa
    direct = [r for r in rows if r[1] == HA and r[3] == "1"]
    assert direct and all(r[0] != HOME for r in direct), direct  # co-located: the CoA


def test_a_renewal_through_a_dead_fa_falls_back_to_mode_c_with_the_session_alive(
        lab, world, tmp_path):
    _away_from(lab, "fa1")
    t = time.time()
    lab.move("fa1")
    wait_history(world, t, "mode", {"state": "trusted", "mode": "f"}, timeout=20)
    with echo_session(tmp_path) as client:
        fa = world["fa"]
        assert isinstance(fa, Proc)
        fa.stop()  # the FA dies; its link's router (the namespace) still routes
        dead = time.time()
        note = wait_history(world, dead, "fa-timeout", timeout=30)
        assert "directly" in note["text"], note
        mode = wait_history(world, dead, "mode", {"state": "trusted", "mode": "c"},
                            timeout=15)
        assert mode
        lost = [k for tm, k, d in _entries(world) if tm >= dead and k == "mode"
                and d.get("state") != "trusted"]
        assert not lost, lost  # never error or untrusted while the HA answers directly
        carries_data_again(client)

def _away_from(lab, net: str) -> None:
    """Start elsewhere: the helper's first probe must not race the move under test."""
    if LabState.load().mn_net == net:
        lab.move("t2")


def _entries(world: dict[str, object]) -> list[tuple[float, str, dict[str, str]]]:
    return history(world, 100)


@pytest.fixture
def world_ha_an_hour_behind(lab, tmp_path) -> Iterator[dict[str, object]]:
    """The HA's clock an hour behind the MN's (libfaketime): the MN is an hour ahead."""
    require(LIBFAKETIME.exists(), "libfaketime is not installed (scripts/install-deps "
                                  "installs the faketime package)")
    profiles, secrets = write_helper_files(tmp_path, "corp")
    if LabState.load().mn_net != "t1":
        lab.move("t1")  # before the helper starts: its first registration is the test
    # The library itself, not the faketime wrapper: the wrapper forks, and stopping
    # it would leave the home agent running.
    with helper_world(lab.nm_bus(), tmp_path, profiles, secrets,
                      ha_env={"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "-1h"}) as w:
        yield w


def test_rfc5944_3_6_2_3_a_clock_an_hour_ahead_registers_after_one_133(
        lab, world_ha_an_hour_behind):
    w = world_ha_an_hour_behind
    wait_history(w, 0, "mode", {"state": "trusted", "mode": "c"}, timeout=20)
    ha = w["ha"]
    assert isinstance(ha, Proc)
    lines = ha.wait("new binding")
    mismatches = [ln for ln in lines if "identification mismatch (133)" in ln]
    assert len(mismatches) == 1, lines


@pytest.mark.parametrize("replay", ["timestamp", "nonce"])
@pytest.mark.parametrize("one_way", [0.2, 0.6])
def test_rfc5944_3_6_3_a_distant_home_agent_reaches_trusted(lab, tmp_path, replay, one_way):
    """A home agent 400 ms or 1.2 s away (a transparent delaying forwarder in the
    internal router), in both replay modes, with the real helper."""
    profiles, secrets = write_helper_files(tmp_path, "corp")
    (profiles / "corp.toml").write_text(f'replay = "{replay}"\n' + PROFILE_TOML)
    if LabState.load().mn_net == "t1":
        lab.move("t2")
    delay = Proc("tr-ir", sys.executable, "-m", "tests.lab.delay", "--to", HA,
                 "--one-way", str(one_way))
    try:
        delay.wait("DELAYING")
        with helper_world(lab.nm_bus(), tmp_path, profiles, secrets, replay=replay) as w:
            t = time.time()
            lab.move("t1")
            wait_history(w, t, "mode", {"state": "trusted", "mode": "c"}, timeout=20)
            entries = history(w, 60)
            since, up = max((tm, d) for tm, k, d in entries if k == "link-up")
            assert up["address"].startswith("10.30.1."), up  # the probe on t1
            answered = [d for tm, k, d in entries if tm >= since and k == "probe-answered"]
            assert answered and float(answered[0]["rtt_ms"]) >= 2 * one_way * 1000, answered
    finally:
        delay.stop()
