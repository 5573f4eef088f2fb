"""Every ordered pair of the lab's access networks, in one walk: the order and its measures.

``circuit`` is an Eulerian circuit of the complete digraph on the lab's eight
access networks (56 moves, back where it started): every (from, to) pair once.
``walk`` moves the mobile node along it with the real helper, waiting at each
stop for the mode the network must give (``MODE_AT``); ``per_move`` turns the
ping stream of ``tests.lab.vpn_walk`` into each move's outage and lost packets;
``table`` is the Markdown that ``benchmarks/moves_bench.py`` keeps in
``benchmarks/README.md``.  The soak: ``random_order`` (seeded moves) and
``resources`` (what must not grow: the helper's memory and descriptors, the MN's
nft rules, routes, XFRM state and charon's SAs).  The CI test
(``tests/lab/test_all_moves.py``) and the benchmark walk the same circuit; only
the benchmark repeats it.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from app.lab.topology import MN
from app.lab.world import Lab
from tests.lab.procs import MN_VICI, Proc, carries_data_again, wait_history
from tests.lab.vpn_walk import PingStream

NETWORKS = ("home", "t1", "t2", "fa1", "fa2", "bnat", "pub", "nat")
"""The lab's access networks (``app.lab.topology.default``'s names)."""
MODE_AT = {"home": "h", "t1": "c", "t2": "c", "fa1": "f", "fa2": "f", "bnat": "c",
           "pub": "mc", "nat": "mc"}
"""RFC 5266's mode on each: h at home, c on the trusted DHCP links and behind the
trusted NAT (RFC 3519), f with a foreign agent, mc on the untrusted ones."""
UNTRUSTED = ("pub", "nat")


def circuit(nodes: Sequence[str] = NETWORKS) -> list[str]:
    """An Eulerian circuit of the complete digraph on ``nodes`` (Hierholzer's), from
    and back to ``nodes[0]``: every ordered pair is one step of it."""
    out = {n: [m for m in reversed(nodes) if m != n] for n in nodes}
    stack, path = [nodes[0]], []
    while stack:
        v = stack[-1]
        if out[v]:
            stack.append(out[v].pop())
        else:
            path.append(stack.pop())
    path.reverse()
    return path


@dataclass
class Move:
    src: str
    dst: str
    mode: str
    """The mode the helper reached (its ``Mode`` property)."""
    start: float
    """time.time() when the cable moved."""
    mode_s: float
    """Seconds until the mode (or, behind one gateway, MOBIKE) was in the history."""
    end: float = 0.0
    """When the next move began (or the walk ended)."""
    outage_ms: float = 0.0
    lost: int = 0


@dataclass
class Walk:
    moves: list[Move] = field(default_factory=list)


def walk(world: dict[str, object], lab: Lab, order: Sequence[str], client: Proc,
         pings: PingStream, mode_of: Callable[[], str],
         on_move: Callable[[Move], None] = lambda m: None) -> Walk:
    """Move along ``order`` (its first element is where the node is now); at each
    stop wait for its mode, a ping answered on the new path and the TCP session
    echoing again; ``on_move`` sees each move once its stop holds."""
    done = Walk()
    for src, dst in itertools.pairwise(order):
        want = MODE_AT[dst]
        t = time.time()
        lab.move(dst)
        if want == "mc" and MODE_AT[src] == "mc":
            wait_history(world, t, "mobike", timeout=30)  # one gateway: MOBIKE only
        else:
            wait_history(world, t, "mode", {"mode": want}, timeout=30)
        mode_s = time.time() - t
        pings.wait_reply(after=time.time(), timeout=30)
        carries_data_again(client)  # the same TCP session, on the new path
        if done.moves:
            done.moves[-1].end = t
        m = Move(src, dst, mode_of(), t, mode_s)
        done.moves.append(m)
        on_move(m)
    if done.moves:
        done.moves[-1].end = time.time()
    return done


def per_move(w: Walk, pings: PingStream) -> None:
    """Each move's outage (the longest time between two answered requests, by their
    send times, that ends in its window) and its requests never answered."""
    replies = sorted(pings.replies)
    result = pings.result
    sent_n = result.sent if result is not None else (replies[-1][0] + 1 if replies else 0)
    known = {seq: sent for seq, sent, _ in replies}
    seqs = sorted(known)
    if not seqs:
        return
    # The send time of a request never answered: between its answered neighbours.
    at: dict[int, float] = {}
    j = 0
    for s in range(sent_n):
        while j + 1 < len(seqs) and seqs[j + 1] <= s:
            j += 1
        p = seqs[j]
        if s in known:
            at[s] = known[s]
        elif s < p or j + 1 >= len(seqs):
            at[s] = known[p] + (s - p) * pings.interval
        else:
            n = seqs[j + 1]
            at[s] = known[p] + (s - p) * (known[n] - known[p]) / (n - p)
    for m in w.moves:
        m.lost = sum(1 for s in range(sent_n) if s not in known and m.start <= at[s] < m.end)
        prev = None
        worst = 0.0
        for s in seqs:
            ts = known[s]
            if prev is not None and m.start <= ts < m.end:
                worst = max(worst, ts - prev - pings.interval)
            prev = ts
        m.outage_ms = max(0.0, worst * 1000)


def table(moves: Sequence[Move]) -> str:
    """Markdown: one row per (from, to), with its median and worst outage, the
    packets lost (total over its runs) and the mode reached."""
    rows: dict[tuple[str, str], list[Move]] = {}
    for m in moves:
        rows.setdefault((m.src, m.dst), []).append(m)
    lines = ["| from | to | mode reached | runs | outage median | outage worst | "
             "packets lost (total) | mode in (median) |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for (src, dst), ms in sorted(rows.items(), key=lambda kv: (NETWORKS.index(kv[0][0]),
                                                              NETWORKS.index(kv[0][1]))):
        modes = sorted({m.mode for m in ms})
        outs = [m.outage_ms for m in ms]
        lines.append(
            f"| {src} ({MODE_AT[src]}) | {dst} ({MODE_AT[dst]}) | {', '.join(modes)} | "
            f"{len(ms)} | {statistics.median(outs):.0f} ms | {max(outs):.0f} ms | "
            f"{sum(m.lost for m in ms)} | {statistics.median(m.mode_s for m in ms):.2f} s |")
    return "\n".join(lines)


def random_order(seed: int, moves: int, start: str) -> list[str]:
    """``start``, then ``moves`` random moves (never to where the node is), the last
    one back to ``start`` so the end is compared with the start on the same network."""
    rng = random.Random(seed)
    order = [start]
    for i in range(moves - 1):
        # (the stop before the last is not ``start``: the last move is a move)
        order.append(rng.choice([n for n in NETWORKS if n != order[-1]
                                 and (i < moves - 2 or n != start)]))
    order.append(start)
    return order


def _lines(*cmd: str) -> list[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False).stdout
    return [line for line in out.splitlines() if line.strip()]


def resources(helper_pid: int) -> dict[str, int]:
    """What a soak must end with no more of than it started: the helper's resident
    memory (KiB) and open descriptors, the MN's nft rules, routes (every table), XFRM
    states and policies, and charon's IKE and CHILD SAs."""
    status = open(f"/proc/{helper_pid}/status").read()  # noqa: SIM115
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    ruleset = json.loads(subprocess.run(
        ["ip", "netns", "exec", MN, "nft", "-j", "list", "ruleset"], capture_output=True,
        text=True, timeout=20, check=True).stdout)["nftables"]
    sas = _lines("swanctl", "--list-sas", "--uri", f"unix://{MN_VICI}")
    return {
        "rss_kib": rss,
        "fds": len(os.listdir(f"/proc/{helper_pid}/fd")),
        "nft_rules": sum(1 for item in ruleset if "rule" in item),
        "routes": len(_lines("ip", "-n", MN, "-4", "route", "show", "table", "all")),
        "rules": len(_lines("ip", "-n", MN, "-4", "rule")),
        "xfrm_states": sum(1 for ln in _lines("ip", "-n", MN, "xfrm", "state")
                           if ln.startswith("src")),
        "xfrm_policies": sum(1 for ln in _lines("ip", "-n", MN, "xfrm", "policy")
                             if ln.startswith("src")),
        "ike_sas": sum(1 for ln in sas if re.match(r"^\S+: #\d+,", ln)),
        "child_sas": sum(1 for ln in sas if re.match(r"^\s+\S+: #\d+,", ln)),
    }


def settled(pid: int, before: dict[str, int], timeout: float = 10.0) -> dict[str, int]:
    """``resources`` once the last move's clean-up is done (the old home address and
    routes go after the gate opened, an old SA is deleted after the new path holds):
    nothing above ``before`` but memory, or what there is at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        now = resources(pid)
        if all(now[k] <= v for k, v in before.items() if k != "rss_kib") or (
                time.monotonic() > deadline):
            return now
        time.sleep(0.2)  # clean-up has no event to await
