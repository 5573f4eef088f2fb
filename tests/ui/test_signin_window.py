"""The sign-in window's parts (issue 19): one page with a fresh off-the-record profile,
popups kept in it, the address read-only; and the tray never loads QtWebEngine."""

from __future__ import annotations

import subprocess
import sys

from tests.ui.procs import ROOT, base_env

PARTS = """
from PySide6.QtWebEngineCore import QWebEnginePage
from ui.signin_window import build
w = build("http://203.0.113.1/portal/login")
print(w.profile.isOffTheRecord(), w.profile.storageName() == "",
      w.address.isReadOnly(), w.address.text(),
      w.page.createWindow(QWebEnginePage.WebWindowType.WebBrowserTab) is w.page,
      w.page.profile() is w.profile)
"""

GUARDED = """
import os
from PySide6.QtCore import QUrl
from PySide6.QtWebEngineCore import QWebEnginePage, QWebEngineSettings
from ui.signin_window import build
w = build("http://203.0.113.1/portal/login")
link = QWebEnginePage.NavigationType.NavigationTypeLinkClicked
print([w.page.acceptNavigationRequest(QUrl(u), link, True) for u in
       ("https://portal.example/", "http://203.0.113.1/", "about:blank", "mailto:a@b.c",
        "steam://run/1", "file:///etc/passwd", "ssh://x")],
      w.page.settings().unknownUrlSchemePolicy()
      == QWebEngineSettings.UnknownUrlSchemePolicy.DisallowUnknownUrlSchemes,
      "QTWEBENGINE_REMOTE_DEBUGGING" in os.environ, "QTWEBENGINE_CHROMIUM_FLAGS" in os.environ)
"""

TRAY = """
import sys
from PySide6.QtWidgets import QApplication
from ui.tray import Tray
app = QApplication([])
tray = Tray()
tray.signin_action.setVisible(True)
print(sorted(m for m in sys.modules if "WebEngine" in m))
"""


def _run(code: str, **env: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=False,
                       env=base_env(QT_QPA_PLATFORM="offscreen", **env))
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip().splitlines()[-1]


def test_the_signin_window_is_one_off_the_record_page_with_a_read_only_address():
    assert _run(PARTS) == "True True True http://203.0.113.1/portal/login True True"


def test_the_tray_never_loads_qtwebengine():
    assert _run(TRAY) == "[]"


def test_the_signin_window_opens_no_other_scheme_and_drops_debugging_and_chromium_flags():
    # Review-portal finding 7: mailto:, steam:... would start an external program in
    # the window's cgroup (clear HTTPS out); a debugging port or flags would let
    # other programs drive the window.
    out = _run(GUARDED, QTWEBENGINE_REMOTE_DEBUGGING="9222",
               QTWEBENGINE_CHROMIUM_FLAGS="--proxy-server=127.0.0.1:8080")
    assert out == "[True, True, True, False, False, False, False] True False False"
