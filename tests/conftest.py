from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYTHONPATH", str(ROOT))

# The whole pyroute2 package, before any test imports app.net.netlink: that module
# puts a bare stand-in package in its place when pyroute2 is not imported yet (the
# helper's memory), and tests that use pyroute2's full API would then not find it.
import pyroute2  # noqa: E402, F401
from hypothesis import settings  # noqa: E402

# Timing is not what these properties are about: on a loaded 2-core CI box a
# slow example must not fail the run (benchmarks/ measures speed).
settings.register_profile("trustroam", deadline=None)
settings.load_profile("trustroam")
