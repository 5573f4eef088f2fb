"""The helper double speaks the contract: its introspection matches
resources/dbus/org.trustroam.Helper1.xml (names, signatures, directions, access),
so the tray's tests cannot pass against an interface the real helper lacks."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from app.api import INTERFACE
from tests.ui.conftest import run

XML = Path(__file__).resolve().parents[2] / "resources" / "dbus" / "org.trustroam.Helper1.xml"


def members(xml: str) -> set[tuple[str, ...]]:
    root = ET.fromstring(xml)
    out: set[tuple[str, ...]] = set()
    for iface in root.iter("interface"):
        if iface.get("name") != INTERFACE:
            continue
        for m in iface:
            if m.tag == "property":
                out.add(("property", m.get("name", ""), m.get("type", ""),
                         m.get("access", "")))
            elif m.tag in ("method", "signal"):
                args = tuple(f"{a.get('direction', 'out' if m.tag == 'signal' else 'in')}:"
                             f"{a.get('type')}" for a in m.iter("arg"))
                out.add((m.tag, m.get("name", ""), *args))
    return out


def test_double_matches_the_contract(double: Any, qloop: Any) -> None:
    async def introspect() -> str:
        from dbus_fast.message import Message

        bus = await double._bus()
        reply = await bus.call(Message(destination="org.trustroam.Helper1",
                                       path="/org/trustroam/Helper1",
                                       interface="org.freedesktop.DBus.Introspectable",
                                       member="Introspect"))
        return str(reply.body[0])

    live = members(run(qloop, introspect()))
    contract = members(XML.read_text())
    assert contract, "the contract file has the interface"
    assert live == contract, (sorted(live - contract), sorted(contract - live))
