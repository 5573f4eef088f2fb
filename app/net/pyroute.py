"""pyroute2's AsyncIPRoute without the rest of pyroute2.

``import pyroute2`` runs a package ``__init__`` that imports every module it has
(NDB with sqlite3, IPDB, conntrack, wireguard, nl80211...): about 6 MB of RSS
and 150 ms of start-up that the helper never uses, against its 40 MB budget.
When pyroute2 is not imported yet, a bare package module stands in for
``pyroute2`` so that only the submodules the helper needs are loaded.  Where
the full package is already imported (the home agent, tests), it is used as is.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
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
AsyncIPRoute: Any = importlib.import_module("pyroute2.iproute.linux").AsyncIPRoute
_rtnl = importlib.import_module("pyroute2.netlink.rtnl")
RTMGRP_LINK: int = _rtnl.RTMGRP_LINK
RTMGRP_IPV4_IFADDR: int = _rtnl.RTMGRP_IPV4_IFADDR
RTMGRP_IPV4_ROUTE: int = _rtnl.RTMGRP_IPV4_ROUTE
