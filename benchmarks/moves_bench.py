"""All moves, measured (issue 20): every ordered pair of the lab's networks, N times (root).

    sudo python benchmarks/moves_bench.py [--rounds 5] [--soak 200] [--seed N] [--write]
                                          [--every 50] [--trace DIR]

The world of ``tests/lab/test_all_moves.py`` (gateways reachable only from
outside, the home agent, foreign agents on fa1 and fa2, trustroamd with the mc
profile through gw1 and no fixed interface); the walk of ``tests.lab.move_walk``:
an Eulerian circuit of the complete digraph on home, t1, t2, fa1, fa2, bnat, pub
and nat (56 moves), ``--rounds`` times, one TCP session from the correspondent
node echoing after every move, a ping stream (one request every 20 ms from the
CN to the home address) whose losses are counted per move.  Outage = the
longest time between two answered requests (by send time) in the move's window,
less one interval.  ``--soak N``: then N random moves from ``--seed`` (printed;
random if not given) with the same TCP session, starting and ending on pub in
mc, and the helper's memory and descriptors, the MN's nft rules, routes, XFRM
state and charon's SAs at both ends.  ``--write`` replaces the tables in
``benchmarks/README.md`` (between their ``moves-table`` / ``soak-table`` markers).
``--every K``: the helper's RSS after every K soak moves.  ``--trace DIR``: the
helper runs under tracemalloc (``benchmarks/trace_helper.py``) and a snapshot goes
to DIR at each RSS sample (``python benchmarks/trace_diff.py DIR`` compares them).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.lab.configs import fa_toml  # noqa: E402
from app.lab.world import Lab  # noqa: E402
from tests.lab.move_walk import (  # noqa: E402
    MODE_AT,
    Move,
    circuit,
    per_move,
    random_order,
    resources,
    settled,
    table,
    walk,
)
from tests.lab.procs import Proc, echo_session, helper_world, wait_history  # noqa: E402
from tests.lab.test_all_moves import any_link_profile  # noqa: E402
from tests.lab.test_mc_walk import props  # noqa: E402
from tests.lab.vpn_walk import ping_stream  # noqa: E402

MARKS = {"moves": ("<!-- moves-table -->", "<!-- /moves-table -->"),
         "soak": ("<!-- soak-table -->", "<!-- /soak-table -->")}


def keep(readme: Path, which: str, text: str) -> None:
    """Replace (or append) the ``which`` block of ``readme``."""
    begin, end = MARKS[which]
    body = readme.read_text()
    block = f"{begin}\n{text}\n{end}"
    if begin in body:
        body = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _m: block, body,
                      flags=re.S)
    else:
        body = body.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(body)


def snapshot(pid: int, trace: Path, n: int) -> None:
    """Have the traced helper write its ``n``-th tracemalloc snapshot into ``trace``."""
    os.kill(pid, signal.SIGUSR2)
    done = trace / f"snap-{n}.done"
    deadline = time.monotonic() + 120
    while not done.exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the helper writes it from its signal handler: no event to await


def soak(world: dict[str, object], lab: Lab, client: Proc, moves: int, seed: int,
         every: int = 50, trace: Path | None = None) -> str:
    """``moves`` random moves from ``seed`` on pub and back; the resources at both ends."""
    helper = world["helper"]
    assert isinstance(helper, Proc)
    pid = helper.p.pid
    t = time.time()
    lab.move("pub")
    wait_history(world, t, "gate", {"interface": "eth0", "mode": "mc"}, timeout=30)
    order = random_order(seed, moves, "pub")
    t0 = time.monotonic()
    with ping_stream(drain=2.0) as pings:
        pings.wait_reply(after=time.time(), timeout=30)
        before = settled(pid, resources(pid))
        if trace is not None:
            snapshot(pid, trace, 0)  # starts tracing
        rss: list[str] = []

        def sample(m: Move) -> None:
            n = len(rss) + 1
            if n % every == 0:
                if trace is not None:
                    snapshot(pid, trace, n // every)
                rss.append(f"{resources(pid)['rss_kib']}")
            else:
                rss.append("")

        done = walk(world, lab, order, client, pings, lambda: str(props(world)["Mode"]),
                    on_move=sample)
        after = settled(pid, before)
    per_move(done, pings)
    wrong = [(m.src, m.dst, m.mode) for m in done.moves if m.mode != MODE_AT[m.dst]]
    lines = [f"{moves} random moves, seed {seed}, {time.monotonic() - t0:.0f} s, "
             f"{time.strftime('%Y-%m-%d')}; every move in its mode: {wrong or 'yes'}; "
             f"pings lost {sum(m.lost for m in done.moves)} of "
             f"{pings.result.sent if pings.result else '?'}; the TCP session echoed after "
             "every move.", "", "| on pub, in mc | at the start | at the end |",
             "|---|---:|---:|"]
    lines += [f"| {k} | {before[k]} | {after[k]} |" for k in before]
    samples = [f"{(i + 1)}: {v}" for i, v in enumerate(rss) if v]
    lines += ["", f"The helper's RSS (KiB) after every {every} moves: {', '.join(samples)}."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--soak", type=int, default=0, help="random moves after the rounds")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--write", action="store_true", help="keep the table in benchmarks/README.md")
    ap.add_argument("--every", type=int, default=50, help="soak moves between RSS samples")
    ap.add_argument("--trace", type=Path, default=None,
                    help="run the helper under tracemalloc, snapshots into this directory")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("moves_bench: needs root")
    lab = Lab()
    lab.down()
    lab.up(gw_inside=False)
    d = Path(tempfile.mkdtemp(prefix="tr-moves-bench-"))
    profiles, secrets = any_link_profile(d)
    (d / "fa2.toml").write_text(fa_toml("fa2"))
    moves: list[Move] = []
    soaked = ""
    seed = args.seed if args.seed is not None else time.time_ns() % 1_000_000
    if args.soak:
        print(f"soak seed {seed}", flush=True)
    t0 = time.monotonic()
    try:
        fa2 = Proc("tr-fa2", sys.executable, "-m", "app.agents.fa_cli", "--config",
                   str(d / "fa2.toml"))
        try:
            fa2.wait("foreign agent on fa")
            prefix: tuple[str, ...] = ()
            if args.trace is not None:
                args.trace.mkdir(parents=True, exist_ok=True)
                os.environ["TRUSTROAM_TRACE_DIR"] = str(args.trace.resolve())
                prefix = (sys.executable, str(ROOT / "benchmarks" / "trace_helper.py"))
            with helper_world(lab.nm_bus(), d, profiles, secrets,
                              helper_prefix=prefix) as world, ExitStack() as st:
                wait_history(world, 0, "mode", {"mode": "h"}, timeout=30)
                client = st.enter_context(echo_session(d))
                for n in range(args.rounds):
                    with ping_stream(drain=2.0) as pings:
                        done = walk(world, lab, circuit(), client, pings,
                                    lambda: str(props(world)["Mode"]))
                    per_move(done, pings)
                    moves += done.moves
                    print(f"round {n + 1}: {len(done.moves)} moves, "
                          f"{sum(m.lost for m in done.moves)} pings lost", flush=True)
                if args.soak:
                    soaked = soak(world, lab, client, args.soak, seed, args.every,
                                  args.trace)
                    print(soaked, flush=True)
        finally:
            fa2.stop()
    finally:
        lab.down()
    readme = ROOT / "benchmarks" / "README.md"
    if moves:
        wrong = [(m.src, m.dst, m.mode) for m in moves if m.mode != MODE_AT[m.dst]]
        text = table(moves)
        note = (f"{len(moves)} moves ({args.rounds} rounds of the 56-move circuit) in "
                f"{time.monotonic() - t0:.0f} s, {time.strftime('%Y-%m-%d')}; "
                f"every move in its mode: {wrong or 'yes'}; the TCP session "
                "echoed after every move.")
        print(text)
        print(note)
        if args.write:
            keep(readme, "moves", f"{note}\n\n{text}")
    if soaked and args.write:
        keep(readme, "soak", soaked)


if __name__ == "__main__":
    main()
