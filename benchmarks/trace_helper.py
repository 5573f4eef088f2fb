"""Run a Python module under tracemalloc, a snapshot on each SIGUSR2 (the soak's leak hunt).

    python benchmarks/trace_helper.py PYTHON -m MODULE ARGS...

The helper prefix of ``moves_bench.py --trace DIR``: ``PYTHON`` (the command's
interpreter) is dropped, ``MODULE`` runs as ``__main__`` with ``ARGS``; each
SIGUSR2 writes ``DIR/snap-<n>.pickle`` (``TRUSTROAM_TRACE_DIR``) after a full
collection, so two snapshots N moves apart show what grew, by allocation site.
The first SIGUSR2 only starts tracing (``snap-0.done``): traced from the start,
the helper's imports are too slow for the lab's start-up wait.  With
``TRUSTROAM_TRACE_MODE=light`` nothing is traced: each SIGUSR2 only writes
``snap-<n>.done`` with the live objects, threads, pymalloc blocks and glibc's
heap (``mallinfo2``: in use and free), so an untraced soak shows where RSS goes.
"""

from __future__ import annotations

import ctypes
import gc
import os
import re
import runpy
import signal
import sys
import threading
import tracemalloc
from pathlib import Path
from types import FrameType


def heap(xml: Path) -> str:
    """glibc's heap over every arena (``malloc_info``, kept in ``xml``): what it has
    from the system, and of that what is free (fragmentation), in KiB."""
    libc = ctypes.CDLL("libc.so.6")
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    f = libc.fopen(str(xml).encode(), b"w")
    libc.malloc_info(0, f)
    libc.fclose(f)
    text = xml.read_text().rsplit("</heap>", 1)[-1]  # the totals after the last arena
    free = sum(int(n) for n in re.findall(r'<total type="(?:fast|rest)" count="\d+" '
                                           r'size="(\d+)"', text))
    system = int(re.search(r'<system type="current" size="(\d+)"', text).group(1))  # type: ignore[union-attr]
    mmap = int(re.search(r'<total type="mmap" count="\d+" size="(\d+)"', text).group(1))  # type: ignore[union-attr]
    arenas = xml.read_text().count("<heap nr=")
    return (f"arenas={arenas} heap_system_kib={system // 1024} heap_free_kib={free // 1024} "
            f"mmapped_kib={mmap // 1024}")


def stats(xml: Path) -> str:
    return (f"objects={len(gc.get_objects())} threads={threading.active_count()} "
            f"pymalloc_blocks={sys.getallocatedblocks()} {heap(xml)}")


def main() -> None:
    if len(sys.argv) < 4 or sys.argv[2] != "-m":
        sys.exit("usage: trace_helper.py PYTHON -m MODULE ARGS...")
    out = Path(os.environ.get("TRUSTROAM_TRACE_DIR", "/tmp"))
    taken = [0]
    light = os.environ.get("TRUSTROAM_TRACE_MODE") == "light"

    def snap(_sig: int, _frame: FrameType | None) -> None:
        if light:
            gc.collect()
            (out / f"snap-{taken[0]}.done").write_text(
                stats(out / f"snap-{taken[0]}.xml") + "\n")
            taken[0] += 1
            return
        if not tracemalloc.is_tracing():
            tracemalloc.start(25)
            (out / "snap-0.done").write_text("tracing\n")
            return
        gc.collect()
        taken[0] += 1
        tracemalloc.take_snapshot().dump(str(out / f"snap-{taken[0]}.pickle"))
        (out / f"snap-{taken[0]}.done").write_text(
            f"{stats(out / f'snap-{taken[0]}.xml')} traced={tracemalloc.get_traced_memory()}\n")

    signal.signal(signal.SIGUSR2, snap)
    module = sys.argv[3]
    sys.argv = [module, *sys.argv[4:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
