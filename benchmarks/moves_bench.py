"""All moves, measured (issue 20): every ordered pair of the lab's networks, N times (root).

    sudo python benchmarks/moves_bench.py [--rounds 5] [--write]

The world of ``tests/lab/test_all_moves.py`` (gateways reachable only from
outside, the home agent, foreign agents on fa1 and fa2, trustroamd with the mc
profile through gw1 and no fixed interface); the walk of ``tests.lab.move_walk``:
an Eulerian circuit of the complete digraph on home, t1, t2, fa1, fa2, bnat, pub
and nat (56 moves), ``--rounds`` times, one TCP session from the correspondent
node echoing after every move, a ping stream (one request every 20 ms from the
CN to the home address) whose losses are counted per move.  Outage = the
longest time between two answered requests (by send time) in the move's window,
less one interval.  ``--write`` replaces the table in ``benchmarks/README.md``
(between its ``moves-table`` markers).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.lab.configs import fa_toml  # noqa: E402
from app.lab.world import Lab  # noqa: E402
from tests.lab.move_walk import MODE_AT, Move, circuit, per_move, table, walk  # noqa: E402
from tests.lab.procs import Proc, echo_session, helper_world, wait_history  # noqa: E402
from tests.lab.test_all_moves import any_link_profile  # noqa: E402
from tests.lab.test_mc_walk import props  # noqa: E402
from tests.lab.vpn_walk import ping_stream  # noqa: E402

BEGIN, END = "<!-- moves-table -->", "<!-- /moves-table -->"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--write", action="store_true", help="keep the table in benchmarks/README.md")
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
    t0 = time.monotonic()
    try:
        fa2 = Proc("tr-fa2", sys.executable, "-m", "app.agents.fa_cli", "--config",
                   str(d / "fa2.toml"))
        try:
            fa2.wait("foreign agent on fa")
            with helper_world(lab.nm_bus(), d, profiles, secrets) as world, ExitStack() as st:
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
        finally:
            fa2.stop()
    finally:
        lab.down()
    wrong = [(m.src, m.dst, m.mode) for m in moves if m.mode != MODE_AT[m.dst]]
    text = table(moves)
    note = (f"{len(moves)} moves ({args.rounds} rounds of the 56-move circuit) in "
            f"{time.monotonic() - t0:.0f} s, {time.strftime('%Y-%m-%d')}; "
            f"every move in its mode: {wrong or 'yes'}; the TCP session "
            "echoed after every move.")
    print(text)
    print(note)
    if args.write:
        readme = ROOT / "benchmarks" / "README.md"
        body = readme.read_text()
        block = f"{BEGIN}\n{note}\n\n{text}\n{END}"
        if BEGIN in body:
            body = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _m: block, body,
                          flags=re.S)
        else:
            body = body.rstrip("\n") + "\n\n" + block + "\n"
        readme.write_text(body)


if __name__ == "__main__":
    main()
