"""The status window: state and addresses, the traffic's path, probe RTTs, history.

Created on first use.  While it is hidden nothing here runs; while shown, a
one-second timer counts the binding down.
"""

from __future__ import annotations

import asyncio
import gc
import marshal
import sys
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QPointF,
    QRectF,
    QSortFilterProxyModel,
    Qt,
    QTimer,
)
from PySide6.QtGui import QColor, QPainter, QPen, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QTableView,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.api import HistoryEntry, Mode, Snapshot, State
from app.client_bus import finite, shown
from ui import memory, presentation
from ui.helper_client import entry
from ui.rtt_plot import RttPlot
from ui.tray_view import TrayView

HISTORY_FETCH = 1000
HISTORY_PAGE = 100  # rows a GetHistoryPage asks: the decoding's peak is a page's
HISTORY_ROWS = 5000  # rows the open window keeps (the oldest go first)
REPLOT_MS = 100


async def history_pages(fetch: Callable[[int, int], Awaitable[tuple[int, list[Any]]]],
                        total: int, page: int = HISTORY_PAGE) -> AsyncIterator[list[Any]]:
    """The newest ``total`` history rows, GetHistoryPage's pages newest first (each
    page's rows oldest first), every row once.

    Offsets count back from the newest, so k events arriving between two pages move
    k rows the last page had into the next one: the reply's count of entries
    recorded numbers its rows, those k are dropped, and the next offset reaches back
    from the oldest row got (no gap).  The events themselves come as Event signals.
    """
    oldest: int | None = None  # number (count recorded before it) of the oldest row got
    recorded = got = 0
    for _ in range(4 * (total // page + 1)):  # bounded, even under a flood of events
        offset = 0 if oldest is None else recorded - oldest
        if got >= total or offset > total:  # done, or the rest is older than asked
            return
        n = min(page, total - got)
        recorded, rows = await fetch(offset, n)
        short = len(rows) < n  # the helper's oldest kept is in this page
        first = recorded - offset - len(rows)
        if oldest is not None:
            del rows[max(0, oldest - first):]  # the rows the last page had
        if rows:
            oldest = first
            got += len(rows)
            yield rows
        if short:
            return


def path_nodes(snap: Snapshot | None) -> tuple[list[str], list[str], bool]:
    """(boxes, link labels, secure) of the path the traffic takes in this mode."""
    if snap is None:
        return ["This computer", "TrustRoam service?"], ["not running"], False
    m, s = snap.mode, snap.state
    if s is State.TRUSTED and m is Mode.HOME:
        return ["This computer", "Home network"], ["direct (mode h)"], True
    if s is State.TRUSTED and m is Mode.COLOCATED:
        return (["This computer", "Visited network", "Home agent"],
                [f"CoA {shown(snap.care_of_address, 40) or '?'}", "IP-in-IP tunnel (mode c)"],
                True)
    if s is State.TRUSTED and m is Mode.FOREIGN_AGENT:
        return (["This computer", "Foreign agent", "Home agent"],
                ["link", "tunnel (mode f)"], True)
    if m is Mode.VPN and s in (State.TRUSTED, State.UNTRUSTED):
        gateway = "VPN gateway" + (f"\n{shown(snap.vpn_gateway, 40)}" if snap.vpn_gateway
                                   else "")
        return (["This computer", gateway, "Home agent"],
                [f"ESP (TIA {shown(snap.tunnel_inner_address, 40) or '?'})",
                 "Mobile IP (mode mc)"], True)
    if s is State.UNTRUSTED:
        return ["This computer", "Untrusted network"], ["NOT protected: blocked"], False
    if s is State.PROBING:
        return ["This computer", "?"], ["checking…"], False
    if s is State.ERROR:
        return ["This computer", "Home agent"], ["error"], False
    return ["This computer"], [], False


def path_note(snap: Snapshot | None) -> str:
    """The line under the diagram: why there is no protected path, when known."""
    if snap is None:
        return ""
    if snap.state is State.UNTRUSTED and snap.mode is not Mode.VPN:
        return presentation.blocked_reason(snap)
    if snap.state is State.ERROR:
        return presentation.friendly_error(snap.error)
    return ""


class PathDiagram(QWidget):
    """The boxes and links of the path the traffic takes (``path_nodes``), green when
    protected, red and dashed when not, with the reason under it (``path_note``)."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("path-diagram")
        self.setMinimumHeight(110)
        self.snap: Snapshot | None = None

    def set_snapshot(self, snap: Snapshot | None) -> None:
        self.snap = snap
        self.update()

    def paintEvent(self, _ev: Any) -> None:
        boxes, links, secure = path_nodes(self.snap)
        note = path_note(self.snap)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        n = len(boxes)
        bw, bh = min(150.0, (w - 20) / max(1, 2 * n - 1)), 40.0
        gap = (w - 20 - n * bw) / max(1, n - 1) if n > 1 else 0
        y = (h - bh) / 2 - (10 if note else 0)
        if note:
            p.setPen(QColor("#c62828"))
            p.drawText(QRectF(10, y + bh + 6, w - 20, h - y - bh - 6),
                       Qt.AlignmentFlag.AlignHCenter | Qt.TextFlag.TextWordWrap, note)
        line = QColor("#1e8a3c" if secure else "#c62828")
        for i, label in enumerate(boxes):
            x = 10 + i * (bw + gap)
            p.setPen(QPen(QColor("#333"), 1.5))
            p.setBrush(QColor("#eef"))
            p.drawRoundedRect(QRectF(x, y, bw, bh), 6, 6)
            p.drawText(QRectF(x, y, bw, bh), Qt.AlignmentFlag.AlignCenter, label)
            if i < len(links) and i + 1 < n:
                x0, x1 = x + bw, x + bw + gap
                pen = QPen(line, 3)
                if not secure:
                    pen.setStyle(Qt.PenStyle.DashLine)
                p.setPen(pen)
                p.drawLine(QPointF(x0, y + bh / 2), QPointF(x1 - 6, y + bh / 2))
                p.drawLine(QPointF(x1 - 12, y + bh / 2 - 6), QPointF(x1 - 4, y + bh / 2))
                p.drawLine(QPointF(x1 - 12, y + bh / 2 + 6), QPointF(x1 - 4, y + bh / 2))
                p.setPen(QColor("#222"))
                p.drawText(QRectF(x0, y - 24, gap, 20), Qt.AlignmentFlag.AlignCenter, links[i])
        p.end()


class Field(QLabel):
    """A field's value: plain text (bus text is never markup), selectable with the mouse.

    Selection is switched on when the pointer first enters the field: a selectable
    QLabel keeps a QTextDocument and its editing control from the start (the window's
    eleven: 0.5 MB, benchmarks/README.md); it paints the text the same either way."""

    def __init__(self) -> None:
        super().__init__()
        self.setTextFormat(Qt.TextFormat.PlainText)

    def enterEvent(self, ev: Any) -> None:
        if self.textInteractionFlags() != Qt.TextInteractionFlag.TextSelectableByMouse:
            self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        super().enterEvent(ev)


class HistoryModel(QAbstractTableModel):
    """The history table's rows in a few flat buffers, their display text made when Qt
    asks: the times in an ``array('d')``, the kinds as indexes into their (few, interned)
    names, the details as UTF-8 in one ``bytearray`` with offsets.  1000 rows are a few
    large blocks (no small Python object per row or cell, which would keep Python's
    allocator arenas of the fetch's temporaries from being given back: benchmarks/README.md);
    a QStandardItemModel (an item and its Python wrapper per cell) takes 2 MB."""

    HEADERS = ("Time", "Kind", "Details")

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self._clear()

    def _clear(self) -> None:
        self.times = array("d")
        self.kinds = array("H")  # index into kind_names
        self.kind_names: list[str] = []
        self._kind_index: dict[str, int] = {}
        self.text = bytearray()  # the details, UTF-8, one after the other
        self.ends = array("Q")  # where each row's details end in text, plus `dropped`
        self.dropped = 0  # bytes of details deleted from the front of text

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.times)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else 3

    def cell(self, row: int, column: int) -> str:
        """The text shown in (row, column)."""
        if column == 0:
            t = self.times[row]
            return time.strftime("%H:%M:%S", time.localtime(t)) if t else "?"
        if column == 1:
            return self.kind_names[self.kinds[row]]
        start = (self.ends[row - 1] if row else self.dropped) - self.dropped
        return self.text[start:self.ends[row] - self.dropped].decode()

    def data(self, index: QModelIndex | QPersistentModelIndex,
             role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role != Qt.ItemDataRole.DisplayRole or not index.isValid():
            return None
        return self.cell(index.row(), index.column())

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return self.HEADERS[section]
        return None

    def append(self, when: float, kind: str, details: str) -> None:
        if len(self.times) >= self.limit:  # the oldest go; GetHistory has them all
            drop = len(self.times) - self.limit + 1
            self.beginRemoveRows(QModelIndex(), 0, drop - 1)
            cut = self.ends[drop - 1]
            del self.text[:cut - self.dropped]  # cheap: a bytearray drops its front in place
            self.dropped = cut
            del self.times[:drop], self.kinds[:drop], self.ends[:drop]
            self.endRemoveRows()
        k = self._kind_index.get(kind)
        if k is None:
            k = self._kind_index[kind] = len(self.kind_names)
            self.kind_names.append(sys.intern(kind))
        n = len(self.times)
        self.beginInsertRows(QModelIndex(), n, n)
        self.times.append(when)
        self.kinds.append(k)
        self.text += details.encode()
        self.ends.append(self.dropped + len(self.text))
        self.endInsertRows()

    def clear(self) -> None:
        self.beginResetModel()
        self._clear()
        self.endResetModel()


class HistoryFilter(QSortFilterProxyModel):
    """The history rows of one kind (or all) whose text contains the filter text."""

    def __init__(self) -> None:
        super().__init__()
        self.kind = ""
        self.text = ""

    def set_filter(self, kind: str, text: str) -> None:
        self.kind, self.text = kind, text.lower()
        self.invalidate()

    def filterAcceptsRow(self, row: int,
                         parent: QModelIndex | QPersistentModelIndex) -> bool:
        m = self.sourceModel()
        assert isinstance(m, HistoryModel)
        if self.kind and m.cell(row, 1) != self.kind:
            return False
        if self.text:
            hay = " ".join(m.cell(row, c) for c in range(3)).lower()
            return self.text in hay
        return True


class StatusWindow(QWidget):
    """The status window: the helper's state field by field, the path diagram, and
    three tabs (probe RTTs, history, handovers).  The History and Handovers pages are
    built when their tab is first shown (their data is kept from the start): a window
    opened on the plot does without the two tables and filters (1.5-2 MB, see
    benchmarks/README.md).  Closed, the whole window is deleted."""

    def __init__(self, tray: TrayView) -> None:
        super().__init__()
        self.tray = tray
        self.setWindowTitle("TrustRoam status")
        self.setObjectName("status-window")
        self.resize(760, 560)
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.fields: dict[str, QLabel] = {}
        for key, label in (("state", "State"), ("network", "Network"), ("profile", "Profile"),
                           ("home", "Home address"), ("coa", "Care-of address"),
                           ("tia", "Tunnel inner address"), ("ha", "Home agent"),
                           ("vpn", "VPN gateway"), ("binding", "Binding"),
                           ("handover", "Last handover"), ("policy", "Policy")):
            lbl = Field()
            lbl.setObjectName(key)
            form.addRow(label + ":", lbl)
            self.fields[key] = lbl
        lay.addLayout(form)
        self.diagram = PathDiagram()
        lay.addWidget(self.diagram)

        # The tabs' data, kept whether or not their page has been built.
        self.model = HistoryModel(HISTORY_ROWS)
        self.proxy = HistoryFilter()
        self.proxy.setSourceModel(self.model)
        self.kinds: dict[str, None] = {}  # the kinds seen, in order (the filter's entries)
        self.handovers = QStandardItemModel(0, 3)
        self.handovers.setHorizontalHeaderLabels(["Time", "Mode", "Handover (ms)"])
        self.kind_filter: QComboBox | None = None
        self.text_filter: QLineEdit | None = None

        self.tabs = QTabWidget()
        lay.addWidget(self.tabs, 1)
        self.plot = RttPlot(tray.rtt)
        self.tabs.addTab(self.plot, "Probe RTT")
        self._unbuilt: dict[QWidget, Callable[[QWidget], None]] = {}
        for title, build in (("History", self._build_history),
                             ("Handovers", self._build_handovers)):
            page = QWidget()
            page.setObjectName(f"{title.lower()}-page")
            self._unbuilt[page] = build
            self.tabs.addTab(page, title)
        self.tabs.currentChanged.connect(self._build_page)

        self.reloading: asyncio.Future[None] | None = None
        self.history_from: str | None = None  # the helper (unique name) last asked
        self.countdown = QTimer(self)  # runs only while the window is shown
        self.countdown.setInterval(1000)
        self.countdown.timeout.connect(self._tick)
        self.replot = QTimer(self)  # single shot, started only by new samples
        self.replot.setSingleShot(True)
        self.replot.setInterval(REPLOT_MS)
        self.replot.timeout.connect(self._plot)
        self.update_snapshot(tray.snapshot)

    def _build_page(self, index: int) -> None:
        page = self.tabs.widget(index)
        build = self._unbuilt.pop(page, None) if page is not None else None
        if page is not None and build is not None:
            build(page)

    def _build_history(self, page: QWidget) -> None:
        hl = QVBoxLayout(page)
        bar = QHBoxLayout()
        self.kind_filter = QComboBox()
        self.kind_filter.setObjectName("kind-filter")
        self.kind_filter.addItem("all kinds", "")
        for kind in self.kinds:
            self.kind_filter.addItem(kind, kind)
        self.text_filter = QLineEdit()
        self.text_filter.setObjectName("text-filter")
        self.text_filter.setPlaceholderText("filter…")
        bar.addWidget(self.kind_filter)
        bar.addWidget(self.text_filter, 1)
        hl.addLayout(bar)
        table = QTableView()
        table.setObjectName("history")
        table.setModel(self.proxy)
        table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        table.verticalHeader().hide()
        hl.addWidget(table)
        self.kind_filter.currentIndexChanged.connect(self._filter)
        self.text_filter.textChanged.connect(self._filter)

    def _build_handovers(self, page: QWidget) -> None:
        hl = QVBoxLayout(page)
        ht = QTableView()
        ht.setObjectName("handovers")
        ht.setModel(self.handovers)
        ht.verticalHeader().hide()
        ht.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        hl.addWidget(ht)

    # -- content --------------------------------------------------------------------------

    def present(self) -> None:
        self.show()
        self.raise_()
        self.activateWindow()
        if self.reloading is None or self.reloading.done():
            self.refresh_history()

    def refresh_history(self) -> None:
        """Fetch the helper's history again (the window opened, or the helper appeared:
        a window opened at start, before the helper answered, would stay empty)."""
        if self.reloading is not None:
            self.reloading.cancel()
        self.reloading = asyncio.ensure_future(self.reload_history())

    def helper_appeared(self) -> None:
        """The helper (re)appeared: fetch its history, unless this same helper's is
        loaded or on its way.  At start the window's GetHistory and the GetAll answer
        that announces the helper cross: a second 1000-row reply decoded at the same
        time cost the open window ~2 MB (benchmarks/README.md)."""
        helper = self.tray.helper
        owner = helper.owner if helper is not None else None
        if (owner is not None and owner == self.history_from and self.reloading is not None
                and not self.reloading.cancelled()):
            return
        self.refresh_history()

    async def reload_history(self) -> None:
        """The helper's history, GetHistoryPage's pages of 100 in turn: each page's rows
        kept as one marshalled block, then put in the table oldest first, one at a
        time, each dropped once shown.  The small objects of decoding 1000 rows at
        once stayed in Python's allocator (the open window 0.4 MB larger after a
        list of entries beside the reply, more for the reply itself,
        benchmarks/README.md); a page's are a tenth."""
        helper = self.tray.helper
        pages: list[bytes] = []  # newest page first
        self.history_from = None
        if helper is not None and helper.owner is not None:
            self.history_from = helper.owner
            try:
                async for rows in history_pages(helper.history_page, HISTORY_FETCH):
                    pages.append(marshal.dumps([(e.time, e.kind, e.details)
                                                for e in (entry(*r) for r in rows)]))
                    del rows
            except Exception:  # shown as an empty history; the state says why
                pages = []
                self.history_from = None  # the helper's next appearance asks again
        self.model.clear()
        self.handovers.removeRows(0, self.handovers.rowCount())
        # Events the tray got meanwhile, unless the pages have them too (the Event
        # signal carries the time to the millisecond, GetHistoryPage in full).
        meanwhile = {(round(e.time, 3), e.kind) for e in self.tray.history}
        seen = set()
        oldest: float | None = None
        while pages:
            # (bytes marshalled above from our own entries, never from outside)
            for when, kind, details in marshal.loads(pages.pop()):  # noqa: S302
                e = HistoryEntry(when, kind, details)
                oldest = e.time if oldest is None else oldest
                if (key := (round(e.time, 3), e.kind)) in meanwhile:
                    seen.add(key)
                self.add_event(e)
        # Not the tray's events older than the rows read: those are not "meanwhile",
        # and would come after the newest, out of order.
        for e in list(self.tray.history):
            if (round(e.time, 3), e.kind) not in seen and (oldest is None
                                                          or e.time >= oldest):
                self.add_event(e)

    def add_event(self, e: HistoryEntry) -> None:
        details = ", ".join(f"{k}={v}" for k, v in sorted(e.details.items()) if k != "time")
        self.model.append(e.time, e.kind, details)
        if e.kind not in self.kinds:
            self.kinds[e.kind] = None
            if self.kind_filter is not None:
                self.kind_filter.addItem(e.kind, e.kind)
        if e.kind == "handover":
            when = time.strftime("%H:%M:%S", time.localtime(e.time)) if e.time else "?"
            self.handovers.appendRow([QStandardItem(when),
                                      QStandardItem(e.details.get("mode", "")),
                                      QStandardItem(e.details.get("ms", ""))])
        if e.kind == "probe-answered" and e.time:
            rtt = finite(e.details.get("rtt_ms", ""))
            if rtt is None:
                return
            samples = self.tray.rtt["ha"]
            last = samples.last_time()
            if last is None or last < e.time:
                samples.append(e.time, rtt)
                self._plot_later()

    def _filter(self) -> None:
        assert self.kind_filter is not None and self.text_filter is not None  # built
        self.proxy.set_filter(self.kind_filter.currentData() or "", self.text_filter.text())

    def _plot_later(self) -> None:
        """Redraw once for a burst of answers (a reconnect delivers many at once)."""
        if self.isVisible() and not self.replot.isActive():
            self.replot.start()

    def _plot(self) -> None:
        self.replot.stop()
        if not self.isVisible():
            return
        self.plot.update()

    def update_snapshot(self, snap: Snapshot | None) -> None:
        f = self.fields
        f["state"].setText(presentation.headline(snap))
        f["network"].setText(shown(self.tray.network, 80) or "—")
        if snap is not None:
            f["profile"].setText(shown(snap.profile, 60) or "—")
            f["home"].setText(shown(snap.home_address, 60) or "—")
            f["coa"].setText(shown(snap.care_of_address, 60) or "—")
            f["tia"].setText(shown(snap.tunnel_inner_address, 60) or "—")
            f["ha"].setText(presentation.home_agent_text(snap))
            vpn = presentation.probe_text(snap.vpn_probe)
            f["vpn"].setText(f"{shown(snap.vpn_gateway, 80)}: {vpn}" if snap.vpn_gateway
                             else vpn)
            f["handover"].setText(f"{snap.last_handover_ms:.0f} ms"
                                  if snap.last_handover_ms >= 0 else "—")
            f["policy"].setText(presentation.POLICY_WORDS[snap.policy])
        self.snap = snap
        self._tick()
        self.diagram.set_snapshot(snap)
        self._plot_later()

    def _tick(self) -> None:
        snap = self.snap
        if snap is None or snap.binding_expires <= 0:
            self.fields["binding"].setText("—")
            return
        left = max(0, int(snap.binding_expires - time.time()))
        at = time.strftime("%H:%M:%S", time.localtime(snap.binding_expires))
        self.fields["binding"].setText(f"until {at} ({left // 60}:{left % 60:02d} left)")

    def showEvent(self, ev: Any) -> None:
        self.countdown.start()
        self._plot()
        super().showEvent(ev)

    def hideEvent(self, ev: Any) -> None:
        self.countdown.stop()
        super().hideEvent(ev)

    def closeEvent(self, ev: Any) -> None:
        # Closed, not just hidden: the widgets and the history table go
        # (the next "Status…" builds them again from the tray's samples and GetHistory).
        super().closeEvent(ev)
        self.countdown.stop()
        if self.reloading is not None:
            self.reloading.cancel()  # it would fill a table that is going away
        self.tray.status_window_closed(self)
        self.destroyed.connect(_collect)
        self.deleteLater()


def _collect() -> None:
    gc.collect()  # whatever cycles the window's Python side left, then the freed heap back
    memory.trim()
