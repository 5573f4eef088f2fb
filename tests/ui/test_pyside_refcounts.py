"""The Qt binding must not eat references to None and True.

PySide6 6.12.0 on Python 3.11 (Debian 12; None and True became immortal only in
3.12) drops one reference to None on every call of a method returning nothing, and
one to True on every ``Signal.emit``.  The tray lost 11 references to None per
helper snapshot (``_resync_menu``'s setEnabled/setChecked), so it died with "Fatal
Python error: none_dealloc" after some hundreds of property changes, or with the
status window's once-a-second countdown within hours; test runs aborted at exit
with bool_dealloc.  pyproject.toml keeps PySide6-Essentials below 6.12 for that.
"""

from __future__ import annotations

import sys

from tests.requirements import require


def test_qt_calls_keep_references_to_none_and_true() -> None:
    try:
        from PySide6.QtCore import QObject, QTimer, Signal
    except ImportError:
        require(False, "python module PySide6 missing: pip install -e '.[test]'")
        raise

    class Source(QObject):
        changed = Signal()

    timer, source = QTimer(), Source()
    calls = 50  # few enough that a leaking binding does not crash this test run
    none_before, true_before = sys.getrefcount(None), sys.getrefcount(True)
    for _ in range(calls):
        timer.setInterval(5)  # returns nothing
        source.changed.emit()  # returns True
    lost_none = none_before - sys.getrefcount(None)
    lost_true = true_before - sys.getrefcount(True)
    assert lost_none < calls // 2 and lost_true < calls // 2, (
        f"PySide6 dropped {lost_none} references to None and {lost_true} to True in "
        f"{calls} calls: this version crashes the tray (see pyproject.toml)")
