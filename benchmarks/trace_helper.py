"""Run a Python module under tracemalloc, a snapshot on each SIGUSR2 (the soak's leak hunt).

    python benchmarks/trace_helper.py PYTHON -m MODULE ARGS...

The helper prefix of ``moves_bench.py --trace DIR``: ``PYTHON`` (the command's
interpreter) is dropped, ``MODULE`` runs as ``__main__`` with ``ARGS``; each
SIGUSR2 writes ``DIR/snap-<n>.pickle`` (``TRUSTROAM_TRACE_DIR``) after a full
collection, so two snapshots N moves apart show what grew, by allocation site.
The first SIGUSR2 only starts tracing (``snap-0.done``): traced from the start,
the helper's imports are too slow for the lab's start-up wait.
"""

from __future__ import annotations

import gc
import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        sys.exit("usage: trace_helper.py PYTHON -m MODULE ARGS...")
    out = Path(os.environ.get("TRUSTROAM_TRACE_DIR", "/tmp"))
    taken = [0]

    def snap(_sig: int, _frame: FrameType | None) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(25)
            (out / "snap-0.done").write_text("tracing\n")
            return
        gc.collect()
        taken[0] += 1
        tracemalloc.take_snapshot().dump(str(out / f"snap-{taken[0]}.pickle"))
        (out / f"snap-{taken[0]}.done").write_text(
            f"{len(gc.get_objects())} objects, traced {tracemalloc.get_traced_memory()}\n")

    signal.signal(signal.SIGUSR2, snap)
    module = sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
