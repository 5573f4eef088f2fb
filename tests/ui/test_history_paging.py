"""The status window reads the helper's history a page at a time, newest page first
(GetHistoryPage, resources/dbus/org.trustroam.Helper1.xml): every row once, none
missing, even when events arrive between two pages."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from app.api import HistoryEntry
from app.service.dbus_api import history_page


class Helper:
    """The helper's history and GetHistoryPage (its real rule), events arriving
    between the pages as ``arrive`` says."""

    def __init__(self, count: int, keep: int = 1000) -> None:
        self.history: deque[HistoryEntry] = deque(maxlen=keep)
        self.recorded = 0
        self.asked: list[tuple[int, int]] = []
        self.arrive: list[int] = []  # events arriving before each page is answered
        for _ in range(count):
            self.record()

    def record(self) -> None:
        self.history.append(HistoryEntry(float(self.recorded), "link-up",
                                         {"n": str(self.recorded)}))
        self.recorded += 1

    async def page(self, offset: int, n: int) -> tuple[int, list[Any]]:
        for _ in range(self.arrive.pop(0) if self.arrive else 0):
            self.record()
        self.asked.append((offset, n))
        rows = history_page(list(self.history), offset, n)
        return self.recorded, [[e.time, e.kind, dict(e.details)] for e in rows]


def fetch(helper: Helper, total: int = 1000, page: int = 100) -> list[int]:
    """The rows' numbers as the window puts them in: pages newest first, so the
    pages in reverse order, each page's rows in order."""
    from ui.status_window import history_pages

    async def go() -> list[list[Any]]:
        return [rows async for rows in history_pages(helper.page, total, page)]

    pages = asyncio.run(go())
    return [int(r[2]["n"]) for rows in reversed(pages) for r in rows]


def test_the_newest_1000_rows_in_pages_of_100_newest_first() -> None:
    helper = Helper(1500)
    assert fetch(helper) == list(range(500, 1500))
    assert helper.asked == [(100 * i, 100) for i in range(10)]


def test_a_history_shorter_than_a_page_or_than_asked_ends_at_its_oldest() -> None:
    assert fetch(Helper(0)) == []
    assert fetch(Helper(1)) == [0]
    helper = Helper(250)
    assert fetch(helper) == list(range(250))
    assert helper.asked == [(0, 100), (100, 100), (200, 100)]  # the short page ends it
    helper = Helper(300)
    assert fetch(helper) == list(range(300))
    assert helper.asked[-1] == (300, 100)  # one empty page past the oldest
    assert fetch(Helper(1000), total=950) == list(range(50, 1000))


def test_events_between_pages_give_no_duplicate_and_no_gap() -> None:
    """Offsets count back from the newest: 3 events arriving before the second page
    move 3 rows the first page had into it (duplicates) and would leave 3 unread at
    the far end (a gap); the count recorded tells the window which to drop, and it
    reads on from its oldest row."""
    helper = Helper(1500, keep=2000)
    helper.arrive = [0, 3, 0, 50, 1, 0, 0, 0, 0, 7]
    got = fetch(helper)
    assert len(got) == len(set(got)), "no row twice"
    assert got == list(range(500, 1500)), "every row, none missing"
    # (the 61 rows that arrived meanwhile come to the window as Event signals)


def test_events_filling_the_helpers_history_between_pages_end_the_fetch() -> None:
    """The helper keeps 1000 entries: rows pushed out between pages are gone, the
    fetch ends at the oldest kept, without a duplicate."""
    helper = Helper(1000)
    helper.arrive = [0, 0, 400]
    got = fetch(helper)
    assert got == list(range(400, 1000))
