"""What some tests need from the machine, and what happens when it is missing.

Locally a missing requirement is a skip that says why (and pytest counts it).
In CI (``TRUSTROAM_CI=1``, set by ``.ci/run``) nothing CI can run may be
skipped: a missing requirement fails the run instead.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = bool(os.environ.get("TRUSTROAM_CI"))
IS_ROOT = os.geteuid() == 0
TSHARK = shutil.which("tshark")


def require(ok: bool, reason: str) -> None:
    """Skip (locally) or fail (in CI) the calling test or fixture unless ``ok``."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"{reason}; CI must run this test, not skip it")
    pytest.skip(reason)


def require_root(what: str = "the lab needs root for network namespaces") -> None:
    require(IS_ROOT, f"{what} (run as root; CI does)")


def require_tshark() -> None:
    require(TSHARK is not None, "tshark is not installed (scripts/install-deps installs it)")
