"""pyroute2 on a thread of its own.

pyroute2's synchronous ``IPRoute`` runs its own event loop and cannot be
created inside a running asyncio loop; the agents are asyncio programs.  One
worker thread owns the ``IPRoute`` and runs every request in submission order.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pyroute2 import IPRoute


class Netlink:
    def __init__(self, factory: Callable[[], Any] | None = None) -> None:
        self._ex = ThreadPoolExecutor(1, thread_name_prefix="netlink")
        self._ipr = self._ex.submit(factory or IPRoute).result()

    def submit(self, method: str, *args: Any, **kwargs: Any) -> Future[Any]:
        """Queue ``IPRoute.<method>(*args, **kwargs)``; requests run in order."""
        return self._ex.submit(getattr(self._ipr, method), *args, **kwargs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run one request and wait for it (start-up and tests only: it blocks)."""
        return self.submit(method, *args, **kwargs).result()

    def close(self) -> None:
        self._ex.submit(self._ipr.close).result()
        self._ex.shutdown()
