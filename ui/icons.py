"""Where the state icons live, and loading them once each."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

from PySide6.QtGui import QIcon

_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "resources" / "icons",  # source tree / editable
    Path(sys.prefix) / "share" / "trustroam" / "icons",
    Path("/usr/share/trustroam/icons"),
)


def icons_dir() -> Path:
    for d in _CANDIDATES:
        if (d / "trustroam-offline.svg").is_file():
            return d
    raise FileNotFoundError("TrustRoam's icons are not installed (resources/icons)")


def icon_path(name: str) -> Path:
    return icons_dir() / f"{name}.svg"


@cache
def icon(name: str) -> QIcon:
    return QIcon(str(icon_path(name)))
