"""pyroute2, the one way ``app`` talks rtnetlink.

Two ways to call it, one per kind of program:

* ``AsyncIPRoute`` on the caller's event loop (the helper: links, carrier, routes);
* ``Netlink``: pyroute2's synchronous ``IPRoute`` on a worker thread of its own (the
  agents).  ``IPRoute`` runs its own event loop and cannot be created inside a
  running asyncio loop; the one thread owns it and runs every request in
  submission order.

A request the kernel refuses raises ``NetlinkError``; its ``code`` is an errno
(compare with ``errno.EEXIST``, ``errno.ENOENT``...).

``import pyroute2`` runs a package ``__init__`` that imports every module it has
(NDB with sqlite3, IPDB, conntrack, wireguard, nl80211...): about 6 MB of RSS
and 150 ms of start-up that no TrustRoam process uses (the helper's budget is
40 MB).  When pyroute2 is not imported yet, a bare package module stands in for
``pyroute2`` so that only the submodules named here are loaded.  Where the full
package is already imported (tests), it is used as is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


def _bare_package() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("pyroute2 is not installed (pip install pyroute2)")
    stub = types.ModuleType("pyroute2")
    stub.__path__ = list(spec.submodule_search_locations)
    stub.__spec__ = spec
    sys.modules["pyroute2"] = stub


_bare_package()
_linux = importlib.import_module("pyroute2.iproute.linux")
AsyncIPRoute: Any = _linux.AsyncIPRoute
IPRoute: Any = _linux.IPRoute
NetlinkError: Any = importlib.import_module("pyroute2.netlink.exceptions").NetlinkError
"""What pyroute2 raises when the kernel answers a request with an error (``.code``)."""
_rtnl = importlib.import_module("pyroute2.netlink.rtnl")
RTMGRP_LINK: int = _rtnl.RTMGRP_LINK
RTMGRP_IPV4_IFADDR: int = _rtnl.RTMGRP_IPV4_IFADDR
RTMGRP_IPV4_ROUTE: int = _rtnl.RTMGRP_IPV4_ROUTE


class Netlink:
    """``IPRoute`` on a thread of its own (``factory`` makes it; tests pass a fake)."""

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
