"""Compare the tracemalloc snapshots of a traced soak (``moves_bench.py --trace DIR``).

    python benchmarks/trace_diff.py DIR [--top 15] [--first N]

Prints the traced total of each snapshot, then the top allocation sites (by size
growth, grouped by traceback) between snapshot N (default: the first) and the last.
"""

from __future__ import annotations

import argparse
import tracemalloc
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--first", type=int, default=1)
    ap.add_argument("--frames", type=int, default=8)
    args = ap.parse_args()
    paths = sorted(args.dir.glob("snap-*.pickle"), key=lambda p: int(p.stem.split("-")[1]))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>")]
    snaps = {p: tracemalloc.Snapshot.load(str(p)).filter_traces(ignore) for p in paths}
    for p, s in snaps.items():
        total = sum(st.size for st in s.statistics("filename"))
        print(f"{p.stem}: {total / 1024:.0f} KiB traced")
    first = next(p for p in paths if p.stem == f"snap-{args.first}")
    diff = snaps[paths[-1]].compare_to(snaps[first], "traceback")
    print(f"\ntop growth {first.stem} -> {paths[-1].stem}:")
    for st in diff[:args.top]:
        print(f"+{st.size_diff / 1024:.1f} KiB, +{st.count_diff} blocks "
              f"(now {st.size / 1024:.1f} KiB)")
        lines = st.traceback.format(limit=args.frames, most_recent_first=True)
        for line in lines[:2 * args.frames]:
            print("   ", line)


if __name__ == "__main__":
    main()
