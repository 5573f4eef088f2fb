"""Handing back what imports leave behind (the tray runs all session long)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def trim() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def plain_imports(uses_qt: tuple[str, ...] = ("ui",)) -> Iterator[None]:
    """Import without shiboken's ``__feature__`` hook.

    Once PySide6 is loaded, every import goes through shiboken's hook, which reads the
    whole source of each new module (into ``linecache``) to see whether it mentions
    PySide6 and so may select ``from __feature__`` options (snake_case...), and keeps
    it in memory.  Nothing in the tray selects
    a feature, so the modules imported here are entered in shiboken's table as the
    hook would have: "uses PySide, no feature" (0) for ``uses_qt`` packages, "not
    PySide" (-1) for the rest.  Without the hook (another PySide6), a plain import.
    """
    import builtins
    import sys

    hooked = builtins.__import__
    plain = getattr(builtins, "__orig_import__", None)
    table = getattr(sys.modules.get("shibokensupport.feature"), "pyside_feature_dict", None)
    if plain is None or not isinstance(table, dict):
        yield
        return
    before = set(sys.modules)
    builtins.__import__ = plain
    try:
        yield
    finally:
        builtins.__import__ = hooked
        for name in set(sys.modules) - before:
            table.setdefault(name, 0 if name.split(".")[0] in uses_qt else -1)
