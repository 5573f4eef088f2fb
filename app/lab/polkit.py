"""polkitd on the lab's private system bus, knowing TrustRoam's actions.

polkitd reads actions only from /usr/share/polkit-1/actions.  Rather than
install a file on the host, the lab gives polkitd a private mount namespace in
which that directory is a copy of the host's plus ``packaging/polkit``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

POLKITD = Path("/usr/lib/polkit-1/polkitd")
SYSTEM_ACTIONS = Path("/usr/share/polkit-1/actions")
OUR_ACTIONS = Path(__file__).resolve().parents[2] / "packaging" / "polkit"


def command(base: Path) -> list[str] | None:
    """The polkitd command line, or None when polkitd is not installed."""
    if not POLKITD.exists():
        return None
    actions = base / "polkit-actions"
    actions.mkdir(parents=True, exist_ok=True)
    for src in [*SYSTEM_ACTIONS.glob("*.policy"), *OUR_ACTIONS.glob("*.policy")]:
        shutil.copy(src, actions / src.name)
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f"mount --bind {actions} {SYSTEM_ACTIONS} && exec {POLKITD} --no-debug"]
