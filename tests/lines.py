"""Read a child's output line by line without select-on-a-buffered-file races."""

from __future__ import annotations

import queue
import threading
import time
from typing import IO


class Lines:
    """Collects the lines of ``stream`` on a thread; ``wait`` takes them in order."""

    def __init__(self, stream: IO[str]) -> None:
        self._q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        """The lines ``wait``/``rest`` have taken so far (not those still queued)."""
        self.printed: list[str] = []
        """Every line the process printed so far, taken or not (failure dumps)."""
        self.closed = False
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.printed.append(line)
            self._q.put(line)
        self._q.put(None)

    def _next(self, deadline: float) -> str | None:
        """The next line, recorded in ``seen``; None once closed or at the deadline."""
        left = deadline - time.monotonic()
        if self.closed or left <= 0:
            return None
        try:
            line = self._q.get(timeout=left)
        except queue.Empty:
            return None
        if line is None:
            self.closed = True
            return None
        self.seen.append(line)
        return line

    def wait(self, needle: str, timeout: float = 15.0) -> list[str]:
        """Lines up to and including the first containing ``needle``."""
        deadline = time.monotonic() + timeout
        taken: list[str] = []
        while (line := self._next(deadline)) is not None:
            taken.append(line)
            if needle in line:
                return taken
        raise TimeoutError(f"no line with {needle!r} (closed={self.closed}):\n"
                           + "".join(self.seen[-40:]))

    def rest(self, timeout: float = 5.0) -> list[str]:
        """Every line until the stream closes (the writer exited); all lines seen."""
        deadline = time.monotonic() + timeout
        while self._next(deadline) is not None:
            pass
        return self.seen
