"""The captive-portal sign-in, timed as a user meets it, in the lab (root, Xvfb).

    sudo flock /tmp/trustroam-lab.lock python benchmarks/portal_bench.py [--runs 3]

Runs the whole-flow test (tests/ui/test_signin_lab.py: the real helper behind the
lab's portal on pub, the tray, the sign-in window) ``--runs`` times and reports
what it measured in each: "Sign in to this network…" clicked until the window
shows the portal's page (the window's process start, OpenSignIn, QtWebEngine's
start and the page load); the form posted by a click in the window until its
answer is shown; the window closed until mode mc (CloseSignIn, the VPN tried at
once: IKE, the registration through it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("click_to_page_ms", "post_to_signed_page_ms", "window_closed_to_mc_ms")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    got: list[dict[str, float]] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for i in range(args.runs):
        r = subprocess.run([sys.executable, "-m", "pytest", "tests/ui/test_signin_lab.py",
                            "-q", "-s", "-p", "no:cacheprovider"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600, check=False)
        line = next((x for x in r.stdout.splitlines()
                     if x.startswith("captive portal timings: ")), None)
        if r.returncode != 0 or line is None:
            print(r.stdout[-3000:], r.stderr[-2000:], sep="\n")
            return 1
        got.append(json.loads(line.split(": ", 1)[1]))
        print(f"run {i + 1}: " + ", ".join(f"{k} {got[-1][k]:.0f}" for k in KEYS), flush=True)
    print("| step | runs | median | worst |\n|---|---:|---:|---:|")
    for k in KEYS:
        v = [g[k] for g in got]
        print(f"| {k} | {len(v)} | {statistics.median(v):.0f} ms | {max(v):.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
