"""What the tray does to stay small (issue 13's memory targets; numbers in benchmarks/)."""

from __future__ import annotations

import linecache
import sys
from pathlib import Path
from typing import Any

import pytest


def test_imports_skip_shibokens_source_reading(qapp: Any, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from ui import memory

    for name in ("tr_mem_hooked", "tr_mem_plain"):
        (tmp_path / f"{name}.py").write_text("X = 1\n" + "# padding\n" * 50)
    monkeypatch.syspath_prepend(str(tmp_path))
    linecache.clearcache()
    table = sys.modules["shibokensupport.feature"].pyside_feature_dict
    try:
        # The premise: with PySide6 loaded, an import reads the module's whole source.
        import tr_mem_hooked  # noqa: F401
        assert any(k.endswith("tr_mem_hooked.py") for k in linecache.cache)
        with memory.plain_imports():
            import tr_mem_plain  # noqa: F401
        assert not any(k.endswith("tr_mem_plain.py") for k in linecache.cache)
        assert table["tr_mem_plain"] == -1  # entered as the hook would: not PySide
        import builtins
        assert builtins.__import__ is builtins.__feature_import__  # the hook is back
    finally:
        for name in ("tr_mem_hooked", "tr_mem_plain"):
            sys.modules.pop(name, None)
            table.pop(name, None)
        linecache.clearcache()


def test_rtt_series_keeps_the_newest_compactly() -> None:
    from ui.rtt import RttSeries

    s = RttSeries(32)
    for i in range(100):
        s.append(float(i), i / 10)
    assert 32 <= len(s) <= 32 + 2 and s.last_time() == 99.0
    assert s.samples()[-1] == (99.0, 9.9)
    assert s.times.itemsize == 8  # flat doubles, not Python objects


FALLBACK = """
import sys
from PySide6.QtWidgets import QApplication
app = QApplication([])
import ui.status_window as sw
sw.USED_NAMES = (*sw.USED_NAMES, "NameNoPyqtgraphHas")  # the trimmed import "fails"
pg = sw._pyqtgraph()
assert "pyqtgraph.imageview" in sys.modules  # the plain import, in full
w = pg.PlotWidget(enableMenu=False, axisItems={"bottom": pg.DateAxisItem()})
w.plot([1.0, 2.0], [3.0, 4.0])
w.show()
app.processEvents()
print("plotted")
"""


def test_an_incompatible_pyqtgraph_is_imported_plainly() -> None:
    """Should the trimmed import not fit a pyqtgraph release, the window still plots."""
    import subprocess

    from tests.ui.procs import ROOT, base_env

    r = subprocess.run([sys.executable, "-c", FALLBACK], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, env=base_env(QT_QPA_PLATFORM="offscreen"),
                       check=False)
    assert r.returncode == 0 and "plotted" in r.stdout, r.stderr[-2000:]
