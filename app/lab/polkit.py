"""polkitd on the lab's private system bus, knowing TrustRoam's actions.

polkitd reads actions only from /usr/share/polkit-1/actions.  Rather than
install a file on the host, the lab gives polkitd a private mount namespace in
which that directory is a copy of the host's plus ``packaging/polkit``, and
/etc/polkit-1/rules.d a copy of the host's rules in the lab's state
(``rules_dir``): a test may add a rule there, as an administrator would, and
polkitd picks it up (it watches the directory).
"""

from __future__ import annotations

import shutil
from pathlib import Path

POLKITD = Path("/usr/lib/polkit-1/polkitd")
SYSTEM_ACTIONS = Path("/usr/share/polkit-1/actions")
SYSTEM_RULES = Path("/etc/polkit-1/rules.d")
OUR_ACTIONS = Path(__file__).resolve().parents[2] / "packaging" / "polkit"


def command(base: Path) -> list[str] | None:
    """The polkitd command line, or None when polkitd is not installed."""
    if not POLKITD.exists():
        return None
    actions = base / "polkit-actions"
    actions.mkdir(parents=True, exist_ok=True)
    for src in [*SYSTEM_ACTIONS.glob("*.policy"), *OUR_ACTIONS.glob("*.policy")]:
        shutil.copy(src, actions / src.name)
    rules = rules_dir(base)
    shutil.rmtree(rules, ignore_errors=True)
    rules.mkdir(parents=True, mode=0o755)
    if SYSTEM_RULES.is_dir():
        for src in SYSTEM_RULES.glob("*.rules"):
            shutil.copy(src, rules / src.name)
    mount_rules = f"mount --bind {rules} {SYSTEM_RULES} && " if SYSTEM_RULES.is_dir() else ""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            f"mount --bind {actions} {SYSTEM_ACTIONS} && {mount_rules}"
            f"exec {POLKITD} --no-debug"]


def rules_dir(base: Path) -> Path:
    """Where the lab's polkitd reads /etc/polkit-1/rules.d from."""
    return base / "polkit-rules"
