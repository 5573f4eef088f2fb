"""``scripts/demo``, the README's main job, as CI runs it: root, no DISPLAY, no stdin.

It must walk the lab home -> t1 -> fa1 -> t2 -> pub -> home with the tray attached
under its own Xvfb, save a screenshot of the tray (icon + tooltip) per stop, show
the gate shut on pub, and leave nothing behind.  Builds the lab: run it under the
lab's lock (flock /tmp/trustroam-lab.lock python3 -m pytest tests/ui/test_demo.py).
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from pathlib import Path

from tests.requirements import require_root
from tests.ui.conftest import require_desktop_tools
from tests.ui.procs import ROOT, base_env

WALK = [("home", "trusted, mode h"), ("t1", "trusted, mode c"), ("fa1", "trusted, mode f"),
        ("t2", "trusted, mode c"), ("pub", "untrusted"), ("home", "trusted, mode h")]


def test_demo_headless_walks_with_the_tray_and_cleans_up() -> None:
    require_root()
    require_desktop_tools()
    from app.lab.world import Lab

    r = subprocess.run(["bash", "scripts/demo"], env=base_env(), cwd=ROOT,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300,
                       check=False)
    out = r.stdout
    shots_m = re.search(r"^screenshots in (\S+)$", out, re.M)
    logs_m = re.search(r"^logs in (\S+)$", out, re.M)
    try:
        assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
        assert "Traceback" not in out + r.stderr
        display = re.search(r"^tray: under Xvfb (:\d+) ", out, re.M)
        assert display, out[:500]
        sections = re.split(r"^== on (\S+) ==$", out, flags=re.M)[1:]
        stops = list(zip(sections[::2], sections[1::2], strict=True))
        assert [n for n, _ in stops] == [n for n, _ in WALK], out
        for (net, text), (_n, want) in zip(stops, WALK, strict=True):
            assert f"trustroam: {want}" in text, (net, text)
            if net == "pub":
                assert "gate: shut" in text and "100% packet loss" in text, text
            else:
                assert " 0% packet loss" in text, (net, text)
        assert shots_m, out
        shots = Path(shots_m.group(1))
        tips = [shots / f"{i}-{net}.png" for i, (net, _w) in enumerate(WALK)]
        notices = [shots / f"{i}-{net}-notification.png" for i, (net, _w) in
                   enumerate(WALK) if i]
        for f in tips + notices:
            assert f.is_file() and f.read_bytes()[:4] == b"\x89PNG", f
        # Each stop's tooltip differs from the one before (the tray followed the walk).
        pics = [f.read_bytes() for f in tips]
        assert all(a != b for a, b in itertools.pairwise(pics))
        # Nothing left: the lab is down, the private X server gone.
        assert not Lab().status()["up"]
        assert not Path(f"/tmp/.X11-unix/X{display.group(1)[1:]}").exists()
    finally:
        for m in (shots_m, logs_m):
            if m:
                shutil.rmtree(m.group(1), ignore_errors=True)
