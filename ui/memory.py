"""What the tray does to stay small (it runs all session long): the one home of its
import tricks.  Each is measured by ``benchmarks/tray_bench.py`` (the tray's rows of
benchmarks/README.md give what each saves) and checked by tests/ui/test_memory.py.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def _missing(*names: str) -> Iterator[None]:
    """While inside, ``import name`` fails as on a Python built without it; afterwards
    the name is importable again (the mark goes, nothing stays in ``sys.modules``)."""
    for name in names:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in names:
            del sys.modules[name]


def lean_imports() -> None:
    """Import asyncio and the D-Bus library without OpenSSL (the tray speaks no TLS).

    - asyncio imports ``ssl`` (libssl, libcrypto: 4 MB resident): imported while ``ssl``
      is marked missing, its modules keep ``ssl = None``;
    - dbus-fast's introspection imports ``hashlib`` for SHA-256 cache keys, and
      ``hashlib`` loads OpenSSL's libcrypto (the closed tray 3.5 MB larger):
      imported while ``_hashlib`` is marked missing, it gets Python's own SHA-256.
      That ``hashlib`` is then taken out of ``sys.modules``, so whoever imports it
      later (the keyring, on a secret request) gets the whole OpenSSL one.

    Any later ``import ssl`` or ``import hashlib`` gets the real module.  When
    something imported them already (tests, a plugin), they are paid for: no-op.
    """
    if "asyncio" not in sys.modules and "ssl" not in sys.modules:
        with _missing("ssl"):
            import asyncio.base_events
            import asyncio.selector_events
            import asyncio.sslproto  # noqa: F401
    if "dbus_fast" not in sys.modules and "hashlib" not in sys.modules:
        with _missing("_hashlib"):
            import dbus_fast  # noqa: F401
        sys.modules.pop("hashlib", None)


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
