"""The profile editor and the status window, in this process (pytest-qt, qasync loop)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from app.api import Policy
from tests.ui.conftest import run

GOOD = {"name": "corp2", "home_address": "10.20.1.10", "home_network": "10.20.1.0/24",
        "home_agent": "10.20.1.1", "spi": "300"}


@pytest.fixture
def editor(tray: Any, qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    tray.show_profiles()
    ed = tray.profile_dialog
    for k, v in GOOD.items():
        ed.widgets[k].setText(v)
    return ed


def test_editor_validates_as_you_type_naming_the_field(double: Any, editor: Any) -> None:
    ed = editor
    assert ed.message.text() == "" and ed.save_button.isEnabled()
    ed.widgets["home_address"].setText("10.30.0.5")
    assert ed.message.text() == ("home_address: 10.30.0.5 is not a host address of "
                                 "home_network 10.20.1.0/24")
    assert not ed.save_button.isEnabled()
    assert "border" in ed.widgets["home_address"].styleSheet()
    ed.widgets["home_address"].setText("10.20.1.10")
    ed.widgets["spi"].setText("12")
    assert ed.message.text() == "spi: 12 is reserved (0-255); use 256 or above"
    ed.widgets["spi"].setText("300")
    ed.widgets["home_agent"].setText("10.20.1.x")
    assert ed.message.text() == "home_agent: '10.20.1.x' is not an IPv4 address"
    ed.widgets["home_agent"].setText("10.20.1.1")
    ed.key_edit.setText("hex:abcd")
    assert ed.message.text() == "Mobile-Home key (hex:…): is 2 bytes; it must be 16 to 64"
    ed.key_edit.setText("")
    ed.widgets["name"].setText("")
    assert ed.message.text() == "name: is required"
    assert not ed.save_button.isEnabled()


def test_editor_vpn_fields_checked_by_the_helpers_parser(double: Any, editor: Any,
                                                         tmp_path: Path) -> None:
    """The [vpn] table: validated as you type by app/vpn/profile.py (messages name the
    field), only the secret its auth uses is offered, exported without secrets."""
    ed = editor
    w = ed.widgets
    visible = lambda: [k for k, e in ed.secret_edits.items()  # noqa: E731
                       if ed.secret_forms[k].isRowVisible(e)]
    assert visible() == ["mn_ha_key"]  # no VPN yet: no VPN secret, no [vpn] table
    w["vpn.gateways"].setText("vpn1.corp.example, bad_host!")
    assert ed.message.text() == ("vpn.gateways[1]: 'bad_host!' is not an IP address or "
                                 "host name")
    assert not ed.save_button.isEnabled() and "border" in w["vpn.gateways"].styleSheet()
    w["vpn.gateways"].setText("vpn1.corp.example, 192.0.2.7")
    assert ed.message.text() == "vpn.identity: is required"
    assert "border" in w["vpn.identity"].styleSheet()
    w["vpn.identity"].setText("alice@corp.example")
    assert ed.message.text() == "" and ed.save_button.isEnabled()
    assert visible() == ["mn_ha_key", "vpn_psk"]  # auth psk
    w["vpn.auth"].setCurrentText("eap-mschapv2")
    assert visible() == ["mn_ha_key", "vpn_password"]
    w["vpn.auth"].setCurrentText("pubkey")
    assert ed.message.text() == 'vpn.cert_file: is required with auth = "pubkey"'
    w["vpn.cert_file"].setText("/etc/trustroam/alice.pem")
    w["vpn.key_file"].setText("alice.key")
    assert ed.message.text() == "vpn.key_file: 'alice.key' must be an absolute path"
    w["vpn.key_file"].setText("/etc/trustroam/alice.key")
    w["vpn.intranet"].setText("10.0.0.0/8, 10.1.0.1/16")
    assert ed.message.text() == ("vpn.intranet[1]: '10.1.0.1/16' is not an IPv4 network "
                                 "like 10.0.0.0/8")
    w["vpn.intranet"].setText("10.0.0.0/8")
    w["vpn.dpd_delay"].setText("99999")
    assert ed.message.text().startswith("vpn.dpd_delay: ")
    w["vpn.dpd_delay"].setText("30")
    w["vpn.esp_proposals"].setText("aes128gcm16-x25519, AES!")
    assert ed.message.text().startswith("vpn.esp_proposals[1]: ")
    w["vpn.esp_proposals"].setText("aes128gcm16-x25519")
    assert ed.message.text() == "" and visible() == ["mn_ha_key", "vpn_key_passphrase"]
    ed.secret_edits["vpn_key_passphrase"].setText("not-in-files")
    out = tmp_path / "roam.toml"
    assert ed.export_file(out)
    text = out.read_text()
    assert "[vpn]" in text and 'gateways = ["vpn1.corp.example", "192.0.2.7"]' in text
    assert 'key_file = "/etc/trustroam/alice.key"' in text and "not-in-files" not in text
    assert 'esp_proposals = ["aes128gcm16-x25519"]' in text
    ed.load_values({})
    assert ed.import_file(out) and ed.values()["vpn.auth"] == "pubkey"
    assert ed.values()["vpn.gateways"] == "vpn1.corp.example, 192.0.2.7"
    bad = tmp_path / "psk-in-file.toml"
    bad.write_text(text + 'vpn_psk = "x"\n')
    assert not ed.import_file(bad)
    assert ed.message.text().startswith(f"{bad}: vpn.vpn_psk: secrets do not belong")


def test_editor_saves_through_save_profile_and_shows_refusal(double: Any, editor: Any,
                                                             tray: Any, qloop: Any) -> None:
    assert run(qloop, editor.save()), editor.message.text()
    calls = run(qloop, double.calls())
    saved = [c for c in calls if c.startswith("SaveProfile-text ")]
    assert saved and 'name = "corp2"' in saved[-1] and "[probe]" in saved[-1]

    async def listed() -> None:
        while "corp2" not in tray.profiles:  # profile-saved Event -> ListProfiles again
            await asyncio.sleep(0.02)

    run(qloop, listed())
    run(qloop, double.call("Fail", "ss", ["SaveProfile", "Not authorized: administrator "
                                                         "authentication required"]))
    assert not run(qloop, editor.save())
    assert editor.message.text() == ("Not saved: Not authorized: administrator "
                                     "authentication required")


def test_editor_import_export_without_secrets(double: Any, editor: Any, tmp_path: Path) -> None:
    ed = editor
    ed.widgets["nai"].setText("alice@corp.example")
    ed.widgets["features.gate"].setChecked(False)
    out = tmp_path / "corp2.toml"
    assert ed.export_file(out)
    text = out.read_text()
    assert 'nai = "alice@corp.example"' in text and "gate = false" in text
    ed.load_values({})
    assert ed.import_file(out)
    assert ed.values()["nai"] == "alice@corp.example"
    assert ed.values()["features.gate"] == "false"
    bad = tmp_path / "with-key.toml"
    bad.write_text('mn_ha_key = "hex:00112233445566778899aabbccddeeff"\n' + text)
    assert not ed.import_file(bad)
    assert ed.message.text().startswith(f"{bad}: mn_ha_key: secrets do not belong")
    bad.write_text(text + 'psk = "x"\n')  # lands in [features]: refused there too
    assert not ed.import_file(bad)
    assert ed.message.text().startswith(f"{bad}: features.psk: secrets do not belong")
    typo = tmp_path / "typo.toml"
    typo.write_text(text.replace("lifetime", "liftime"))
    assert not ed.import_file(typo)
    assert ed.message.text() == f"{typo}: liftime: is not a known setting"


def test_status_window_path_history_filter_rtt_handovers(double: Any, tray: Any,
                                                         qloop: Any, qtbot: Any) -> None:
    from PySide6.QtWidgets import QWidget

    from ui.status_window import path_nodes

    now = time.time()

    async def drive() -> None:
        await double.call("Emit", "sa{ss}", ["link-up", {"iface": "eth0"}])
        await double.call("Emit", "sa{ss}", ["handover", {"mode": "c", "ms": "42.0"}])
        await double.set(state="untrusted", mode="mc", tunnel_inner_address="10.99.0.5",
                         vpn_gateway="vpn1.corp.example", last_handover_ms=42.0)
        for i in range(5):
            await double.set(home_agent_probe=[True, 2.0 + i, now - 50 + i],
                             vpn_probe=[True, 20.0 + i, now - 50 + i])

    run(qloop, drive())
    tray.show_status()
    w = tray.status_window
    run(qloop, w.reload_history())
    qtbot.waitUntil(lambda: tray.snapshot is not None and tray.snapshot.vpn_probe.rtt_ms == 24)
    boxes, links, secure = path_nodes(tray.snapshot)
    # mc: laptop -> ESP -> the gateway (by name) -> Mobile IP -> home agent.
    assert boxes == ["This computer", "VPN gateway\nvpn1.corp.example", "Home agent"]
    assert secure and links == ["ESP (TIA 10.99.0.5)", "Mobile IP (mode mc)"]
    assert w.fields["tia"].text() == "10.99.0.5"
    assert w.fields["vpn"].text() == "vpn1.corp.example: reachable, last RTT 24.0 ms"
    assert "VPN gateway vpn1.corp.example: reachable, last RTT 24.0 ms" in tray.tooltip_text()
    assert tray._icon_name == "trustroam-vpn"
    assert w.fields["handover"].text() == "42 ms"
    # In mc the registration through the VPN is the proof: the window says so, as the
    # tooltip does, instead of the direct probe's result (issue 19's words).
    assert w.fields["ha"].text() == "through the VPN, not registered yet"
    # The RTT plot holds every answered probe.
    ys = [v for _t, v in w.plot.series["vpn"].samples()]
    assert ys == [20.0, 21.0, 22.0, 23.0, 24.0]
    # History from GetHistory, then live from the Event signal.
    kinds = [w.model.index(r, 1).data() for r in range(w.model.rowCount())]
    assert kinds[:2] == ["link-up", "handover"]
    run(qloop, double.call("Emit", "sa{ss}", ["error", {"reason": "fa-timeout"}]))
    qtbot.waitUntil(lambda: w.model.rowCount() == len(kinds) + 1)
    # Filtering by kind and by text (the History tab's page is built when first shown).
    w.tabs.setCurrentIndex(w.tabs.indexOf(w.findChild(QWidget, "history-page")))
    assert w.kind_filter is not None and w.text_filter is not None
    w.kind_filter.setCurrentIndex(w.kind_filter.findData("handover"))
    assert w.proxy.rowCount() == 1
    w.kind_filter.setCurrentIndex(0)
    w.text_filter.setText("fa-timeout")
    assert w.proxy.rowCount() == 1
    w.text_filter.setText("")
    assert w.handovers.rowCount() == 1 and w.handovers.index(0, 2).data() == "42.0"


def test_never_vpn_refusal_shown_blocked_with_the_reason(double: Any, tray: Any,
                                                        qloop: Any, qtbot: Any) -> None:
    """Through the D-Bus double: policy never-vpn on an untrusted network."""
    from ui.status_window import path_nodes, path_note

    reason = "untrusted network and policy never-vpn: traffic blocked"
    run(qloop, double.set(state="untrusted", mode="none", policy="never-vpn", error=reason))
    qtbot.waitUntil(lambda: tray.snapshot is not None and tray.snapshot.error == reason)
    assert tray._icon_name == "trustroam-untrusted"
    tip = tray.tooltip_text()
    assert f"NOT protected: {reason}" in tip and "Policy: Never use VPN" in tip
    assert tray.policy_actions[Policy.NEVER_VPN].isChecked()
    tray.show_status()
    w = tray.status_window
    _boxes, links, secure = path_nodes(tray.snapshot)
    assert not secure and links == ["NOT protected: blocked"]
    assert path_note(tray.snapshot) == reason
    assert w.fields["state"].text().endswith(reason)
    assert not w.diagram.grab().isNull()  # the note under the boxes paints
    qtbot.waitUntil(lambda: tray.coalescer.announced is not None
                    and tray.coalescer.announced[2] == reason, timeout=4000)


def test_status_window_opened_before_the_helper_answered_gets_the_history(
        double: Any, qloop: Any, qapp: Any, qtbot: Any) -> None:
    """``trustroam --status`` opens the window before the tray has reached the helper:
    the history is fetched when the helper appears, not left empty."""
    from ui.tray import Tray

    run(qloop, double.call("Emit", "sa{ss}", ["link-up", {"iface": "eth0"}]))
    t = Tray(ask_secrets=False)
    try:
        t.show_status()  # as ui/main.py does, before the loop runs Tray.start
        w = t.status_window
        run(qloop, t.start())
        qtbot.waitUntil(lambda: w.model.rowCount() > 0)
        assert w.model.index(0, 1).data() == "link-up"
    finally:
        t.close()
        qapp.processEvents()


def test_status_window_asks_the_history_once_when_the_helper_appears_meanwhile(
        double: Any, tray: Any, qloop: Any, qtbot: Any) -> None:
    """``trustroam --status``: the window's history pages may be on their way when the
    helper's GetAll answer announces that same helper: its history is not asked a
    second time (two 1000-row replies at once cost the open window ~2 MB,
    benchmarks/README.md)."""
    run(qloop, double.call("Emit", "sa{ss}", ["link-up", {"iface": "eth0"}]))
    helper = tray.helper
    asked: list[int] = []
    real = helper.call

    async def counting(member: str, *args: Any) -> Any:
        if member == "GetHistoryPage":
            asked.append(1)
        return await real(member, *args)

    helper.call = counting
    tray.show_status()
    w = tray.status_window
    qtbot.waitUntil(lambda: bool(asked))  # the history's (one) page on its way
    tray._helper_appeared()  # as the GetAll answer does at start
    run(qloop, w.reloading)
    assert len(asked) == 1
    assert w.model.index(0, 1).data() == "link-up"


def test_closing_the_status_window_frees_the_plot(double: Any, tray: Any, qloop: Any,
                                                  qtbot: Any) -> None:
    run(qloop, double.call("Emit", "sa{ss}", ["link-up", {"iface": "eth0"}]))
    tray.show_status()
    w = tray.status_window
    reloading = w.reloading  # GetHistory, still on its way
    gone: list[bool] = []
    w.destroyed.connect(lambda: gone.append(True))
    w.close()
    qtbot.waitUntil(lambda: bool(gone))  # the widget, its plot and table are deleted
    assert tray.status_window is None
    run(qloop, asyncio.gather(reloading, return_exceptions=True))
    assert reloading.cancelled()  # it would have filled the deleted table
    tray.show_status()  # "Status…" again builds a fresh window
    assert tray.status_window is not None and tray.status_window is not w
    run(qloop, tray.status_window.reloading)
    assert tray.status_window.model.rowCount() > 0


NO_PLOTTING_LIBRARY = """
import sys
from PySide6.QtWidgets import QApplication
app = QApplication([])
from ui.tray import Tray
tray = Tray()
tray.show_status()
tray.status_window.grab()
print(sorted(m for m in ("numpy", "pyqtgraph") if m in sys.modules))
"""


def test_status_window_needs_no_plotting_library() -> None:
    """Memory (issue 18: the window open within 70 MB): the plot is painted with QPainter;
    neither numpy nor pyqtgraph (34 MB with the window's share) is imported."""
    import subprocess
    import sys

    from tests.ui.procs import ROOT, base_env

    r = subprocess.run([sys.executable, "-c", NO_PLOTTING_LIBRARY], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, check=False,
                       env=base_env(QT_QPA_PLATFORM="offscreen"))
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])


def test_status_window_builds_its_tables_when_their_tab_is_first_shown(
        double: Any, tray: Any, qloop: Any, qtbot: Any) -> None:
    """Memory (issue 18: the window open within 70 MB): opened on the plot, the window
    has no table nor filter yet; their data is kept from the start, so the History
    tab, when shown, lists every row and offers every kind seen before it was built."""
    from PySide6.QtWidgets import QComboBox, QLineEdit, QTableView

    run(qloop, double.call("Emit", "sa{ss}", ["link-up", {"iface": "eth0"}]))
    run(qloop, double.call("Emit", "sa{ss}", ["handover", {"mode": "c", "ms": "42.0"}]))
    tray.show_status()
    w = tray.status_window
    run(qloop, w.reloading)
    w.grab()  # painted, as on the screen
    assert w.tabs.currentIndex() == 0
    assert w.findChildren(QTableView) == [] and w.findChildren(QComboBox) == []
    assert w.findChildren(QLineEdit) == []
    rows = w.model.rowCount()
    assert rows >= 2 and w.handovers.rowCount() == 1
    w.tabs.setCurrentIndex(1)
    history = w.findChild(QTableView, "history")
    assert history is not None and history.model().rowCount() == rows
    kinds = [w.kind_filter.itemData(i) for i in range(w.kind_filter.count())]
    assert kinds[0] == "" and {"link-up", "handover"} <= set(kinds[1:])
    run(qloop, double.call("Emit", "sa{ss}", ["error", {"reason": "fa-timeout"}]))
    qtbot.waitUntil(lambda: w.kind_filter.findData("error") > 0)  # live, once built
    w.tabs.setCurrentIndex(2)
    handovers = w.findChild(QTableView, "handovers")
    assert handovers is not None and handovers.model().index(0, 2).data() == "42.0"


def test_status_fields_selectable_once_the_pointer_is_over_them(tray: Any, qtbot: Any) -> None:
    """Memory: a field gets its text-selection machinery (a QTextDocument each) when
    the pointer first enters it, not when the window opens; then the mouse selects."""
    from PySide6.QtCore import QPoint, QPointF, Qt
    from PySide6.QtGui import QEnterEvent, QTextDocument
    from PySide6.QtWidgets import QApplication

    tray.show_status()
    w = tray.status_window
    field = w.fields["home"]
    field.setText("10.20.1.10")
    assert w.findChildren(QTextDocument) == []
    select = Qt.TextInteractionFlag.TextSelectableByMouse
    assert not any(f.textInteractionFlags() & select for f in w.fields.values())
    before = field.grab().toImage()
    at = QPointF(2, field.height() / 2)
    QApplication.sendEvent(field, QEnterEvent(at, at, QPointF(field.mapToGlobal(at))))
    assert field.textInteractionFlags() == select
    assert field.grab().toImage() == before  # painted the same
    y = field.height() // 2
    qtbot.mousePress(field, Qt.MouseButton.LeftButton, pos=QPoint(1, y))
    qtbot.mouseMove(field, QPoint(field.width() - 1, y))
    qtbot.mouseRelease(field, Qt.MouseButton.LeftButton, pos=QPoint(field.width() - 1, y))
    assert field.selectedText() == "10.20.1.10"


def test_history_rows_keep_no_python_object_per_row(tray: Any) -> None:
    """The history's rows live in a few flat buffers: 1000 rows add no small Python
    objects (which would pin the allocator arenas of the fetch's temporaries: the open
    window's memory, benchmarks/README.md)."""
    import gc
    import sys

    from app.api import HistoryEntry

    tray.show_status()
    w = tray.status_window
    entries = [HistoryEntry(1e9 + i, "link-up", {"iface": f"eth{i}"}) for i in range(1000)]
    w.add_event(entries[0])  # the kind's first row may keep its name
    gc.collect()
    before = sys.getallocatedblocks()
    for e in entries[1:]:
        w.add_event(e)
    gc.collect()
    assert w.model.rowCount() >= 1000
    assert sys.getallocatedblocks() - before < 100
    assert w.model.index(w.model.rowCount() - 1, 2).data() == "iface=eth999"


def test_history_table_keeps_its_newest_rows() -> None:
    from PySide6.QtCore import Qt

    from ui.status_window import HistoryModel

    m = HistoryModel(3)
    for i in range(5):
        m.append(1e9 + i, "kind", f"n={i}")
    assert m.rowCount() == 3
    assert [m.index(r, 2).data() for r in range(3)] == ["n=2", "n=3", "n=4"]
    assert m.headerData(1, Qt.Orientation.Horizontal) == "Kind"


def test_history_fetch_decodes_a_page_at_a_time_and_never_holds_every_row_twice(
        tray: Any, qloop: Any) -> None:
    """The history comes in GetHistoryPage's pages of 100, each kept as one block until
    all are in, then put in the table one row at a time: never 1000 decoded rows at
    once, nor a list of as many entries beside them (those peaks of small objects
    stayed in Python's allocator: the open window 0.4 MB larger for the list, ~1.5 MB
    for the whole reply, benchmarks/README.md)."""
    import tracemalloc

    tray.show_status()
    w = tray.status_window
    run(qloop, w.reloading)  # the window's own first fetch
    asked: list[tuple[int, int]] = []

    class Helper:
        owner = ":1.99"

        async def history_page(self, offset: int, n: int) -> tuple[int, list[Any]]:
            asked.append((offset, n))
            # As the bus decodes a reply: the page's rows made afresh at each call.
            return 1000, [[1e9 + i, "link-up", {"iface": f"eth{i}", "reason": "carrier " * 4}]
                          for i in range(max(0, 1000 - offset - n), 1000 - offset)]

        async def call(self, member: str, *_: Any) -> list[Any]:  # GetHistory: all at once
            return [(await self.history_page(0, 1000))[1]]

    real, tray.helper = tray.helper, Helper()
    tracemalloc.start()
    try:
        run(qloop, w.reload_history())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        tray.helper = real
    assert asked == [(100 * i, 100) for i in range(10)]
    assert w.model.rowCount() == 1000
    assert w.model.index(0, 2).data() == "iface=eth0, reason=" + "carrier " * 4
    assert w.model.index(999, 2).data() == "iface=eth999, reason=" + "carrier " * 4
    assert peak < 250_000, peak  # the code before: 350 KB (the whole reply decoded)


def test_status_window_reads_the_newest_1000_history_rows_in_pages_of_100(
        double: Any, tray: Any, qloop: Any) -> None:
    """Over D-Bus, from the helper double's GetHistoryPage: all 1000 rows shown (as
    GetHistory gave them), newest last, asked as ten pages of 100, newest first."""
    run(qloop, double.call("EventBurst", "u", [1050]))
    helper = tray.helper
    asked: list[list[int]] = []
    real = helper.call

    async def counting(member: str, *args: Any) -> Any:
        if member == "GetHistoryPage":
            asked.append(list(args[1]))
        return await real(member, *args)

    helper.call = counting
    tray.show_status()
    w = tray.status_window
    run(qloop, w.reloading)
    assert asked == [[100 * i, 100] for i in range(10)]
    assert w.model.rowCount() == 1000
    assert {w.model.index(r, 1).data() for r in (0, 999)} == {"probe-answered"}
    times = [w.model.times[r] for r in range(1000)]
    assert times == sorted(times)
