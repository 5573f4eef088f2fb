"""All moves, measured (issue 20): every ordered pair of the lab's access networks, and an
interface change in mc, with the real helper, charon and the agents (RFC 5266 3, 3.4, 4).

One world: the VPN gateways answer only from outside (as in most deployments),
the home agent, a foreign agent on fa1 and on fa2, and trustroamd with a profile
that names no interface (it manages the one holding the default route, so the
second link can take over).

- The walk (``tests.lab.move_walk.circuit``): 56 moves, every (from, to) pair of
  home, t1, t2, fa1, fa2, bnat (trusted, behind a NAT), pub and nat once, each
  landing in its mode (h, c, f, c over RFC 3519, mc), with one TCP session from
  the correspondent node echoing after every move and a ping stream whose losses
  are counted per move; pub <-> nat behind one gateway are MOBIKE only (no new
  registration at the home agent); captures on the untrusted links, judged
  frame by frame (``tests.lab.leaks``), hold nothing in clear.
- The interface change: mc on pub through eth0, the second link (eth1, the
  Wi-Fi) gets a lease on nat, eth0 is unplugged: a MOBIKE update only, the gate
  never shuts, no registration request reaches the home agent (captured on the
  home link), the TCP session lives.
- The soak (short form, ``SOAK_MOVES``): random moves from a printed seed with one
  TCP session; nothing in clear on the untrusted links, and no more of the
  helper's memory and descriptors, nft rules, routes, XFRM state or charon SAs at
  the end than at the start (both on pub, in mc).

``benchmarks/moves_bench.py`` walks the same circuit N times for the table in
``benchmarks/README.md``.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from app.lab.configs import fa_toml, write_helper_files
from app.lab.topology import MN, MN_IFACE2
from app.lab.world import Lab
from tests.lab.conftest import a_lab
from tests.lab.leaks import lab_policy, leaks, read_frames
from tests.lab.move_walk import (
    MODE_AT,
    UNTRUSTED,
    Move,
    circuit,
    per_move,
    random_order,
    resources,
    settled,
    table,
    walk,
)
from tests.lab.procs import (
    GW1,
    Proc,
    carries_data_again,
    echo_session,
    helper_world,
    history,
    mac_of_mn,
    wait_history,
)
from tests.lab.test_mc_walk import ha_registrations, props
from tests.lab.vpn_walk import bridge_capture, ping_stream

TIA_POOLS = "10.99.0.0/16"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from a_lab(gw_inside=False)  # the gateways answer only from outside


def any_link_profile(d: Path) -> tuple[Path, Path]:
    """The lab's mc profile without ``interface``: the helper manages the link that
    holds the default route (the second link takes over when eth0 goes)."""
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1,))
    prof = profiles / "corp.toml"
    text = prof.read_text()
    assert 'interface = "eth0"\n' in text, text
    prof.write_text(text.replace('interface = "eth0"\n', ""))
    return profiles, secrets


@pytest.fixture(scope="module")
def world(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("moves")
    profiles, secrets = any_link_profile(d)
    (d / "fa2.toml").write_text(fa_toml("fa2"))
    fa2 = Proc("tr-fa2", sys.executable, "-m", "app.agents.fa_cli", "--config",
               str(d / "fa2.toml"))
    try:
        fa2.wait("foreign agent on fa")
        with helper_world(lab.nm_bus(), d, profiles, secrets) as w:
            yield w
    finally:
        fa2.stop()


def test_rfc5266_every_ordered_pair_of_networks_lands_in_its_mode_with_one_tcp_session(
        lab: Lab, world: dict[str, object]) -> None:
    d = Path(str(world["dir"]))
    ha = world["ha"]
    assert isinstance(ha, Proc)
    wait_history(world, 0, "mode", {"mode": "h"}, timeout=30)
    order = circuit()
    assert order[0] == "home" and len(set(itertools.pairwise(order))) == 56
    mac = mac_of_mn()
    mobike_regs: list[tuple[str, str, list[str]]] = []

    def each(m: Move) -> None:
        print(f"{m.src} -> {m.dst}: {m.mode} in {m.mode_s:.2f} s", flush=True)
        if MODE_AT[m.src] == MODE_AT[m.dst] == "mc":
            # RFC 5266 3.3: behind one gateway the home agent keeps the TIA's binding.
            mobike_regs.append((m.src, m.dst, ha_registrations(ha, m.start)))

    t0 = time.monotonic()
    with ExitStack() as stack:
        pcaps = {net: stack.enter_context(bridge_capture(d / f"walk-{net}.pcap", net,
                                                         f"ether host {mac}"))
                 for net in UNTRUSTED}
        session = d / "walk"  # its own stop file (echo_session's)
        session.mkdir(exist_ok=True)
        client = stack.enter_context(echo_session(session))
        pings = stack.enter_context(ping_stream(drain=2.0))
        done = walk(world, lab, order, client, pings, lambda: str(props(world)["Mode"]),
                    on_move=each)
    print(f"walk of {len(done.moves)} moves: {time.monotonic() - t0:.0f} s")
    per_move(done, pings)
    print(table(done.moves))
    assert pings.result is not None
    print(f"ping stream: {pings.result.sent} sent, {pings.result.lost} lost")
    wrong = [(m.src, m.dst, m.mode) for m in done.moves if m.mode != MODE_AT[m.dst]]
    assert not wrong, f"moves that landed in another mode: {wrong}"
    assert {(m.src, m.dst) for m in done.moves} == set(itertools.pairwise(order))
    assert [r for r in mobike_regs if r[2]] == [], "a new registration on a MOBIKE move"
    for net in UNTRUSTED:
        bad = leaks(pcaps[net], lab_policy(mac))
        assert not bad, f"{net}: " + "\n".join(str(o) for o in bad[:10])
        assert [f for f in read_frames(pcaps[net]) if f["esp.spi"]], f"{net}: no ESP seen"


def second_link_mac() -> str:
    out = subprocess.run(["ip", "-n", MN, "-j", "link", "show", MN_IFACE2],
                         capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)[0]["address"])


def second_link_address(prefix: str, timeout: float = 15.0) -> str:
    """eth1's lease (its DHCP client's script puts it there with the default route)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ip", "-n", MN, "-j", "-4", "route", "show", "default", "dev",
                              MN_IFACE2], capture_output=True, text=True, check=False).stdout
        addrs = subprocess.run(["ip", "-n", MN, "-j", "-4", "addr", "show", MN_IFACE2],
                               capture_output=True, text=True, check=False).stdout
        try:
            have = [a["local"] for a in json.loads(addrs)[0]["addr_info"]
                    if a["local"].startswith(prefix)]
            if have and json.loads(out or "[]"):
                return str(have[0])
        except (ValueError, IndexError, KeyError):
            pass
        time.sleep(0.05)  # polling netlink state; dhclient gives no other signal
    raise TimeoutError(f"{MN_IFACE2} got no lease in {prefix}")


def test_rfc5266_3_4_an_interface_change_in_mc_is_a_mobike_update_only(
        lab: Lab, world: dict[str, object]) -> None:
    d = Path(str(world["dir"]))
    ha = world["ha"]
    assert isinstance(ha, Proc)
    t = time.time()
    lab.move("pub")
    wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)
    assert props(world)["Interface"] == "eth0"
    mac = mac_of_mn()
    try:
        with ExitStack() as stack:
            session = d / "interface-change"  # its own stop file (echo_session's)
            session.mkdir(exist_ok=True)
            client = stack.enter_context(echo_session(session))
            pings = stack.enter_context(ping_stream(drain=2.0))
            lab.plug_second("nat")  # the Wi-Fi joins the NATed network
            second_link_address("192.168.50.")
            mac2 = second_link_mac()
            pub = stack.enter_context(bridge_capture(d / "if-pub.pcap", "pub",
                                                     f"ether host {mac}"))
            nat = stack.enter_context(bridge_capture(d / "if-nat.pcap", "nat",
                                                     f"ether host {mac2}"))
            to_ha = stack.enter_context(bridge_capture(
                d / "if-ha.pcap", "home", f"udp dst port 434 and src net {TIA_POOLS}"))
            carries_data_again(client)
            assert props(world)["Interface"] == "eth0", "eth0's default route is the best"
            t = time.time()
            lab.unplug()  # the Ethernet cable out
            moved = wait_history(world, t, "mobike", timeout=30)
            print(f"MOBIKE: {moved} after {time.time() - t:.3f} s", flush=True)
            pings.wait_reply(after=time.time(), timeout=30)
            carries_data_again(client)  # the same TCP session, through the Wi-Fi
            p = props(world)
            assert p["Mode"] == "mc" and p["Interface"] == MN_IFACE2, p
            assert p["CareOfAddress"] == p["TunnelInnerAddress"], p
            entries = [(tm, k, dd) for tm, k, dd in history(world, 200) if tm >= t]
            for tm, k, dd in entries:  # (shown on failure: the change step by step)
                print(f"  +{(tm - t) * 1000:7.1f} ms {k} {dd}")
            since = [(k, dd) for _, k, dd in entries]
            assert [dd for k, dd in since if k in ("mode", "error")] == [], (
                f"the mode changed on an interface change: {since}")
            assert [dd for k, dd in since if k == "gate" and dd["blocked"] == "true"] == [], (
                f"the gate shut on an interface change: {since}")
            assert [dd for k, dd in since if k == "gate"][-1:] == [
                {**[dd for k, dd in since if k == "gate"][-1], "interface": MN_IFACE2,
                 "mode": "mc"}], since
            assert [k for k, dd in since if k == "probe-sent" and dd.get("vpn") == "true"
                    ] == [], f"registered through the VPN again: {since}"
            assert "vpn-up" not in [k for k, _ in since], "a new IKE SA"
            assert ha_registrations(ha, t) == []
        result = pings.result
        assert result is not None
        print(f"ping stream over the change: {result.sent} sent, {result.lost} lost, "
              f"longest run {result.longest_run}")
        assert read_frames(to_ha) == [], "a registration request reached the home agent"
        for pcap, m in ((pub, mac), (nat, mac2)):
            bad = leaks(pcap, lab_policy(m))
            assert not bad, f"{pcap.name}: " + "\n".join(str(o) for o in bad[:10])
        assert [f for f in read_frames(nat) if f["esp.spi"]], "no ESP on the Wi-Fi's link"
    finally:
        lab.unplug_second()


SOAK_MOVES = int(os.environ.get("TRUSTROAM_SOAK_MOVES", "20"))
"""The short form in CI; ``benchmarks/moves_bench.py --soak 200`` is the long one."""
RSS_SLACK_KIB = 2048
"""The helper's resident memory may move by the allocator's pages, not by a leak:
2 MiB over the soak (a leak of 100 KiB a move would show in 20 moves)."""


def test_soak_random_moves_with_one_tcp_session_leave_nothing_behind(
        lab: Lab, world: dict[str, object]) -> None:
    seed = int(os.environ.get("TRUSTROAM_SOAK_SEED", str(time.time_ns() % 1_000_000)))
    print(f"soak: {SOAK_MOVES} moves, seed {seed} (TRUSTROAM_SOAK_SEED={seed} repeats it)",
          flush=True)
    helper = world["helper"]
    assert isinstance(helper, Proc)
    pid = helper.p.pid  # (ip netns exec execs the helper: the same process)
    d = Path(str(world["dir"])) / "soak"
    d.mkdir(exist_ok=True)
    t = time.time()
    lab.move("pub")
    # (mc may hold across this move: the gate opening on eth0 in mc is the sign)
    wait_history(world, t, "gate", {"interface": "eth0", "mode": "mc"}, timeout=30)
    mac = mac_of_mn()
    order = random_order(seed, SOAK_MOVES, "pub")
    with ExitStack() as stack:
        pcaps = {net: stack.enter_context(bridge_capture(d / f"soak-{net}.pcap", net,
                                                         f"ether host {mac}"))
                 for net in UNTRUSTED}
        client = stack.enter_context(echo_session(d))
        pings = stack.enter_context(ping_stream(drain=2.0))
        before = settled(pid, resources(pid))
        done = walk(world, lab, order, client, pings, lambda: str(props(world)["Mode"]))
        after = settled(pid, before)
    print(f"soak order: {' '.join(order)}")
    print(f"soak resources at the start: {before}\n               at the end:   {after}")
    wrong = [(m.src, m.dst, m.mode) for m in done.moves if m.mode != MODE_AT[m.dst]]
    assert not wrong, f"seed {seed}: moves that landed in another mode: {wrong}"
    grown = {k: (v, after[k]) for k, v in before.items() if k != "rss_kib" and after[k] > v}
    assert not grown, f"seed {seed}: grew over the soak: {grown}"
    assert after["rss_kib"] - before["rss_kib"] <= RSS_SLACK_KIB, (seed, before, after)
    for net in UNTRUSTED:
        bad = leaks(pcaps[net], lab_policy(mac))
        assert not bad, f"seed {seed}, {net}: " + "\n".join(str(o) for o in bad[:10])
