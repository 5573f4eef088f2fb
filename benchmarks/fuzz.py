"""Fuzz every app.mip decoder with N random and mutated inputs (default 2 million).

    python benchmarks/fuzz.py [N] [SEED]

Exits non-zero, with the input in hex, if anything but DecodeError escapes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.mip.errors import DecodeError
from tests import fuzzing


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2_000_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else int(time.time())
    t0 = time.perf_counter()
    ok = bad = 0
    for data in fuzzing.inputs(n, seed):
        for decode in fuzzing.DECODERS:
            try:
                decode(data)
                ok += 1
            except DecodeError:
                bad += 1
            except Exception as exc:
                print(f"{decode.__qualname__} raised {exc!r} on {data.hex()}", file=sys.stderr)
                return 1
    dt = time.perf_counter() - t0
    print(f"seed {seed}: {n} inputs x {len(fuzzing.DECODERS)} decoders in {dt:.1f} s: "
          f"{ok} decoded, {bad} rejected with DecodeError, nothing else raised")
    return 0


if __name__ == "__main__":
    sys.exit(main())
