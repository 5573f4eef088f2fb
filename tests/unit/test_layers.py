"""The layers of docs/ARCHITECTURE.md section 2, held by reading every module's imports.

Imports point down only; the sans-I/O cores import no I/O; the tray knows the helper only
through app/api (and the pure profile parsers it validates with); nothing in the product
imports the lab.  Imports inside functions count as much as those at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Which first-party packages each layer may import (its own included).
ALLOWED: dict[str, set[str]] = {
    "app.errors": set(),
    "app.mip": {"app.mip"},
    "app.api": set(),
    "app.config": {"app.mip"},
    "app.dbus": set(),
    "app.client_bus": {"app.dbus"},
    "app.net": {"app.net", "app.api", "app.mip", "app.config", "app.dbus"},
    "app.vpn": {"app.vpn", "app.api", "app.config", "app.mip", "app.net.gate_rules"},
    "app.agents": {"app.agents", "app.mip", "app.net", "app.config", "app.api"},
    "app.mn": {"app.mn", "app.mip", "app.net", "app.vpn", "app.api", "app.config"},
    "app.service": {"app.service", "app.mn", "app.net", "app.vpn", "app.mip", "app.api",
                    "app.config", "app.dbus"},
    "app.profile_edit": {"app.config"},
    "app.secret_values": {"app.api"},
    "app.ctl_ask": {"app.api", "app.client_bus", "app.secret_values"},
    "app.ctl_polkit": set(),
    "app.ctl": {"app.api", "app.client_bus", "app.config", "app.mn", "app.vpn",
                "app.net",  # app.net: release-gate
                "app.profile_edit", "app.ctl_ask", "app.ctl_polkit"},
    "ui": {"ui", "app.api", "app.client_bus", "app.config", "app.mn.profile",
           "app.vpn.profile", "app.secret_values"},
}
BOTTOM = {"app.errors"}
"""Below every layer (the one base of user-facing errors): any module may import it."""
# The sans-I/O cores: no sockets, clocks, event loops or OS adapters.
SANS_IO = ["app/mn/access_mode.py", "app/mn/mode_events.py", "app/mn/registration.py",
           "app/mn/registration_types.py", "app/mn/registration_request.py",
           "app/mn/replay_protection.py",
           "app/mn/mode_state.py", "app/mn/mode_direct.py", "app/mn/mode_vpn.py",
           "app/mn/link_tracker.py",
           "app/mn/nat_keepalive.py", "app/mn/reply_path.py", "app/agents/ha_core.py",
           "app/agents/fa_core.py", "app/net/gate_rules.py", "app/vpn/events.py",
           "app/vpn/profile.py", "app/vpn/vici_messages.py", "app/net/dns_profile.py",
           "app/mn/gateway_order.py", "app/vpn/liveness.py", "app/vpn/peers.py"]
IO_MODULES = {"asyncio", "socket", "subprocess", "time", "select", "selectors", "threading",
              "pyroute2", "dbus_next", "dbus_fast", "vici"}
PURE_NET = {"app.net.gate_rules", "app.net.links"}


def _layer(module: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


def _sources() -> list[Path]:
    tops = {ROOT / "app" / "__init__.py", ROOT / "ui" / "__init__.py"}
    return sorted(p for d in ("app", "ui") for p in (ROOT / d).rglob("*.py")
                  if "lab" not in p.relative_to(ROOT).parts and p not in tops)


def _first_party(name: str) -> bool:
    return name.split(".")[0] in ("app", "ui")


def _allowed(target: str, allowed: set[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_only(path: Path) -> None:
    me = _module_name(path)
    layer = _layer(me)
    assert layer is not None, f"{me} is in no layer of docs/ARCHITECTURE.md"
    allowed = ALLOWED[layer] | {layer} | BOTTOM
    wrong = []
    for target in _imports(path):
        if not _first_party(target) or target in ("app", "ui"):
            continue
        # `from app.mn import profile` names app.mn and app.mn.profile: judge the longest.
        if _layer(target) is None and not target.startswith("app.lab"):
            continue  # a name imported from a module, e.g. app.api.Mode
        crosses = not _allowed(target, allowed) and not any(
            _allowed(t, allowed) for t in _imports(path) if t.startswith(target + "."))
        if target.startswith("app.lab") or crosses:
            wrong.append(target)
    assert not wrong, f"{me} imports across its layer: {sorted(set(wrong))}"


@pytest.mark.parametrize("rel", SANS_IO)
def test_sans_io_cores_import_no_io(rel: str) -> None:
    names = _imports(ROOT / rel)
    io = sorted({n for n in names if n.split(".")[0] in IO_MODULES})
    assert not io, f"{rel} imports I/O: {io}"
    net = sorted({n for n in names if n.startswith("app.net")
                  and not any(n == p or n.startswith(p + ".") for p in PURE_NET)})
    assert not net, f"{rel} imports an OS adapter: {net}"
    assert not any(n.startswith(("app.service", "app.vpn.charon", "app.mn.driver"))
                   for n in names), f"{rel} imports a driver or the service"
