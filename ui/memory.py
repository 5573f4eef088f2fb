"""Handing back what imports leave behind (the tray runs all session long)."""

from __future__ import annotations

import contextlib
import gc
import linecache


def trim() -> None:
    """Give the C heap's free pages back to the system (glibc's malloc_trim)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def release_import_leftovers() -> None:
    """After pyqtgraph's import: shiboken's check for ``from __feature__`` reads the
    source of every module that imports Qt into ``linecache`` (6 MB of text with
    pyqtgraph's) that nobody reads again; then the garbage and the freed heap go
    back.  (After the tray's own start it frees 1.4 MB of text but no resident
    page: the lines are small objects in arenas that stay partly used.)"""
    linecache.clearcache()
    gc.collect()
    trim()
