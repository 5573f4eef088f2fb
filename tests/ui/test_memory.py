"""What the tray does to stay small (issue 13's memory targets; numbers in benchmarks/)."""

from __future__ import annotations

import linecache
import math
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


LEAN_START = """
import sys
from ui import memory
memory.lean_imports()
import PySide6.QtWidgets
with memory.plain_imports():
    import qasync
    from ui.tray import Tray
maps = open("/proc/self/maps").read()
print("libssl" in maps, "libcrypto" in maps, "ssl" in sys.modules, "_hashlib" in sys.modules)
from dbus_fast.introspection import Node
Node.parse("<node><interface name='a.b'><method name='M'/></interface></node>")
import hashlib, ssl
print(hashlib.sha256 is sys.modules["_hashlib"].openssl_sha256, ssl.OPENSSL_VERSION[:7])
"""


def test_tray_starts_without_openssl_and_leaves_ssl_and_hashlib_whole() -> None:
    """The tray speaks no TLS: asyncio and dbus-fast are imported without OpenSSL
    (libssl and libcrypto: 4.7 MB of the closed tray, benchmarks/README.md); whoever
    imports ``ssl`` or ``hashlib`` afterwards (the keyring) gets the real ones."""
    import subprocess

    from tests.ui.procs import ROOT, base_env

    r = subprocess.run([sys.executable, "-c", LEAN_START], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, check=False,
                       env=base_env(QT_QPA_PLATFORM="offscreen"))
    assert r.returncode == 0 and r.stderr == "", r.stderr[-2000:]
    assert r.stdout.split("\n")[:2] == ["False False False False", "True OpenSSL"]


WINDOWS_READ = """
import linecache
from ui import memory
import PySide6.QtCore
with memory.plain_imports():  # as ui/main.py starts the tray
    from PySide6.QtWidgets import QApplication
    from ui.tray import Tray
app = QApplication([])
tray = Tray()
tray.show_status()
tray.show_profiles()
print(sorted(k.rsplit("/", 1)[-1] for k in linecache.cache if "/ui/" in k))
"""


def test_windows_are_imported_and_built_without_shibokens_source_reading() -> None:
    """The status window and the profile editor, imported when first opened, come in
    through ``memory.plain_imports`` as the start-up modules do: their source (and that
    of what they import) is not read into ``linecache`` for the session."""
    import subprocess

    from tests.ui.procs import ROOT, base_env

    r = subprocess.run([sys.executable, "-c", WINDOWS_READ], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, check=False,
                       env=base_env(QT_QPA_PLATFORM="offscreen"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_rtt_series_keeps_the_newest_compactly() -> None:
    from ui.rtt import RttSeries

    s = RttSeries(32)
    for i in range(100):
        s.append(float(i), i / 10)
    assert 32 <= len(s) <= 32 + 2 and s.last_time() == 99.0
    assert s.samples()[-1] == (99.0, 9.9)
    assert s.times.itemsize == 8  # flat doubles, not Python objects


def test_rtt_series_keeps_a_failed_probe_as_a_gap() -> None:
    """The plot breaks its line where a probe stopped answering: a NaN sample when a
    reachable probe turns unreachable (once), none for a repeated property."""
    from app.api import Probe
    from ui.rtt import RttSeries

    s = RttSeries(32)
    up = Probe(True, 5.0, 100.0)
    s.observe(up, None, 100.5)
    s.observe(up, up, 101.0)  # the same answer again: nothing
    down = Probe(False, 5.0, 100.0)
    s.observe(down, up, 130.0)
    s.observe(down, down, 131.0)
    s.observe(Probe(), down, 132.0)  # stopped on purpose: already a gap
    s.observe(Probe(True, 6.0, 140.0), Probe(), 140.2)
    t, v = zip(*s.samples(), strict=True)
    assert t == (100.0, 130.0, 140.0) and v[0] == 5.0 and math.isnan(v[1]) and v[2] == 6.0
