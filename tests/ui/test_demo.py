"""``scripts/demo``, the README's main job, as CI runs it: root, no DISPLAY, no stdin.

It must walk the lab home -> t1 -> fa1 -> t2 -> pub -> nat -> home with the real
helper on a VPN profile (pub and nat in mode mc, nat reached by MOBIKE) and the tray
attached under its own Xvfb, save a screenshot of the tray (icon + tooltip) per
stop and of each settled change's notification, reach the home address from the CN
at every protected stop, show on nat the policy "Never use VPN" shutting the gate
with the helper's reason and "Automatic" bringing mc back, and leave nothing behind.
Builds the lab: run it under the lab's lock
(flock /tmp/trustroam-lab.lock python3 -m pytest tests/ui/test_demo.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.requirements import require_root
from tests.ui.conftest import require_desktop_tools
from tests.ui.procs import ROOT, base_env

# (section, what `trustroamctl status` says, the screenshots' name)
WALK = [("home", "trusted, mode h", "home"), ("t1", "trusted, mode c", "t1"),
        ("fa1", "trusted, mode f", "fa1"), ("t2", "trusted, mode c", "t2"),
        ("pub", "untrusted, mode mc", "pub"), ("nat", "untrusted, mode mc", "nat"),
        ("nat (policy never-vpn)", "untrusted, no mode", "nat-never-vpn"),
        ("nat (policy auto)", "untrusted, mode mc", "nat-auto"),
        ("home", "trusted, mode h", "home")]


def test_demo_headless_walks_with_the_tray_and_cleans_up() -> None:
    require_root()
    require_desktop_tools()
    from app.lab.world import Lab
    from app.mn.access_mode import NEVER_VPN_REASON

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
        sections = re.split(r"^== on (.+) ==$", out, flags=re.M)[1:]
        stops = list(zip(sections[::2], sections[1::2], strict=True))
        assert [n for n, _ in stops] == [n for n, _w, _f in WALK], out
        for (net, text), (_n, want, _f) in zip(stops, WALK, strict=True):
            assert f"trustroam: {want}" in text, (net, text)
            if "never-vpn" in net:
                # Nothing protected: the gate refuses, with the helper's own reason.
                assert "gate: shut" in text and "100% packet loss" in text, text
                assert f"error          {NEVER_VPN_REASON}" in text, text
                continue
            # Every other stop carries the home address, mc through the VPN
            # (RFC 5266 3.3).
            assert " 0% packet loss" in text, (net, text)
            if "mode mc" in want:
                assert "TIA            10.99.1." in text and "VPN gateway    172.16.0.11" \
                    in text, text
                # charon's NAT-T detection, after the MOBIKE move too.
                assert ("NAT            detected" in text) == net.startswith("nat"), text
        assert shots_m, out
        shots = Path(shots_m.group(1))
        tips = [shots / f"{i}-{f}.png" for i, (_n, _w, f) in enumerate(WALK)]
        # A settled change is announced; pub -> nat (mc -> mc, MOBIKE) is none.
        news = [i for i in range(1, len(WALK)) if WALK[i][1] != WALK[i - 1][1]]
        assert news == [1, 2, 3, 4, 6, 7, 8]
        notices = [shots / f"{i}-{WALK[i][2]}-notification.png" for i in news]
        assert not (shots / "5-nat-notification.png").exists()
        for f in tips + notices:
            assert f.is_file() and f.read_bytes()[:4] == b"\x89PNG", f
        # Each change's tooltip differs from the one before (the tray followed the walk).
        pics = [f.read_bytes() for f in tips]
        assert all(pics[i] != pics[i - 1] for i in news)
        # Nothing left: the lab is down, the private X server gone.
        assert not Lab().status()["up"]
        assert not Path(f"/tmp/.X11-unix/X{display.group(1)[1:]}").exists()
    finally:
        for m in (shots_m, logs_m):
            if m:
                shutil.rmtree(m.group(1), ignore_errors=True)
