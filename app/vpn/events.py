"""Typed VPN events and the pure translation of charon's VICI events into them.

VICI event messages are dicts whose values are ``bytes`` (lists of bytes, nested
dicts).  Facts observed against charon 5.9.8 in the lab:

* ``ike-updown`` / ``child-updown`` carry ``up = yes`` when up; in down events
  ``up`` is ABSENT (not ``no``).  The other top-level keys are connection names,
  each an IKE SA section.
* ``ike-update`` is MOBIKE: the top-level ``local-host/local-port/remote-host/
  remote-port`` are the NEW endpoints; the IKE SA section still shows the old.
* The tunnel inner address (TIA) is the IKE SA's ``local-vips``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from app.vpn.vici_messages import CHILD, CONNECTION

EVENT_NAMES = ("ike-updown", "child-updown", "ike-update", "ike-rekey", "child-rekey")

Address = IPv4Address | IPv6Address

CHILD_CLOSED = "CHILD SA closed, IKE SA remains"
"""VpnDown's reason when one CHILD SA of ours went while its IKE SA stays."""


@dataclass(frozen=True)
class Endpoint:
    host: Address
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class VpnUp:
    """The CHILD SA to the intranet is installed: traffic can flow through the TIA."""

    tia: IPv4Address | None
    gateway: Endpoint
    local: Endpoint
    nat_detected: bool
    ike_id: int


class DownKind(Enum):
    """What went down, as charon's event says it (not its reason's text)."""

    IKE_GONE = "ike-gone"
    """The IKE SA died on its own: DPD or a request's retransmissions gave up, or the
    gateway deleted it.  The one kind that says the gateway is gone."""
    CHILD = "child"
    """One CHILD SA of ours closed; its IKE SA stays."""
    TERMINATED = "terminated"
    """We tore it down."""
    SERVICE = "service"
    """charon stopped answering (restarted, stopped, a VICI call too slow): nothing
    is known of the gateway."""
    FAILED = "failed"
    """No SA came up (an initiate failed, no inner address)."""


@dataclass(frozen=True)
class VpnDown:
    reason: str
    ike_id: int | None = None
    kind: DownKind = DownKind.FAILED


@dataclass(frozen=True)
class MobikeUpdate:
    """MOBIKE moved the IKE SA (and its CHILD SAs) to new endpoints; the TIA stays."""

    local: Endpoint
    remote: Endpoint
    ike_id: int


@dataclass(frozen=True)
class IkeRekeyed:
    old_ike_id: int
    new_ike_id: int


@dataclass(frozen=True)
class ChildRekeyed:
    ike_id: int
    child: str


@dataclass(frozen=True)
class VpnUnreachable:
    """charon cannot be talked to (absent, restarting, refusing or not answering)."""

    message: str


@dataclass(frozen=True)
class VpnServiceUp:
    """charon answers again after being unreachable; the adapter reloaded the profile."""

    socket: str


VpnEvent = (VpnUp | VpnDown | MobikeUpdate | IkeRekeyed | ChildRekeyed | VpnUnreachable
            | VpnServiceUp)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value) if value is not None else ""


def _int(value: Any) -> int | None:
    try:
        return int(_text(value))
    except ValueError:
        return None


def _address(value: Any) -> Address | None:
    try:
        return ipaddress.ip_address(_text(value))
    except ValueError:
        return None


def _endpoint(section: Mapping[str, Any], side: str) -> Endpoint | None:
    host = _address(section.get(f"{side}-host"))
    port = _int(section.get(f"{side}-port"))
    if host is None or port is None:
        return None
    return Endpoint(host, port)


def tia(ike: Mapping[str, Any]) -> IPv4Address | None:
    """The first IPv4 address in an IKE SA section's ``local-vips``."""
    vips = ike.get("local-vips") or []
    if isinstance(vips, bytes | str):
        vips = [vips]
    for v in vips:
        a = _address(v)
        if isinstance(a, IPv4Address):
            return a
    return None


def _yes(section: Mapping[str, Any], key: str) -> bool:
    return _text(section.get(key)) == "yes"


def _nat(ike: Mapping[str, Any]) -> bool:
    """A NAT in front of us (RFC 5266 section 4: between the MN and the gateway).

    Only ``nat-local``: kernel-libipsec makes charon fake NAT detection so that
    ESP is always UDP-encapsulated, which shows as ``nat-remote``/``nat-any`` on
    every SA (observed against lab gateways with no NAT in between)."""
    return _yes(ike, "nat-local")


def _sa_sections(event: Mapping[str, Any], conn: str) -> list[Mapping[str, Any]]:
    value = event.get(conn)
    return [value] if isinstance(value, Mapping) else []


def translate(name: str | bytes, event: Mapping[str, Any], conn: str = CONNECTION
              ) -> list[VpnEvent]:
    """The typed events for one VICI event of our connection ``conn`` (others: none)."""
    kind = _text(name)
    up = _yes(event, "up")
    out: list[VpnEvent] = []
    for ike in _sa_sections(event, conn):
        ike_id = _int(ike.get("uniqueid"))
        if ike_id is None:
            continue
        if kind == "ike-updown" and not up:
            out.append(VpnDown(f"IKE SA closed ({_text(ike.get('state')) or 'gone'})", ike_id,
                               DownKind.IKE_GONE))
        elif kind == "child-updown":
            children = ike.get("child-sas")
            ours = [c for c in (children.values() if isinstance(children, Mapping) else ())
                    if isinstance(c, Mapping) and _text(c.get("name")) == CHILD]
            if not ours:
                continue
            if up:
                gateway, local = _endpoint(ike, "remote"), _endpoint(ike, "local")
                if gateway is None or local is None:
                    continue
                out.append(VpnUp(tia(ike), gateway, local, _nat(ike), ike_id))
            elif _text(ike.get("state")) == "ESTABLISHED":
                # The IKE SA stays: only the tunnel went.  When the IKE SA is going
                # too (terminate, DPD), its own ike-updown reports it once.
                out.append(VpnDown(CHILD_CLOSED, ike_id, DownKind.CHILD))
        elif kind == "ike-update":
            local, remote = _endpoint(event, "local"), _endpoint(event, "remote")
            if local is not None and remote is not None:
                out.append(MobikeUpdate(local, remote, ike_id))
        elif kind == "child-rekey":
            children = ike.get("child-sas")
            for child in (children.values() if isinstance(children, Mapping) else ()):
                if isinstance(child, Mapping):
                    new = child.get("new")
                    child_name = _text(new.get("name")) if isinstance(new, Mapping) else ""
                    out.append(ChildRekeyed(ike_id, child_name or CHILD))
    if kind == "ike-rekey":
        section = event.get(conn)
        if isinstance(section, Mapping):
            old, new = section.get("old"), section.get("new")
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                old_id, new_id = _int(old.get("uniqueid")), _int(new.get("uniqueid"))
                if old_id is not None and new_id is not None:
                    out.append(IkeRekeyed(old_id, new_id))
    return out


@dataclass(frozen=True)
class SaInfo:
    """One IKE SA of our connection as ``list-sas`` shows it."""

    ike_id: int
    state: str
    tia: IPv4Address | None
    local: Endpoint | None
    remote: Endpoint | None
    nat_detected: bool
    child_installed: bool

    @property
    def up(self) -> bool:
        return self.state == "ESTABLISHED" and self.child_installed


def sa_infos(listing: list[Mapping[str, Any]], conn: str = CONNECTION) -> list[SaInfo]:
    """``list-sas`` streams one dict per IKE SA, keyed by connection name."""
    out = []
    for entry in listing:
        ike = entry.get(conn)
        if not isinstance(ike, Mapping):
            continue
        ike_id = _int(ike.get("uniqueid"))
        if ike_id is None:
            continue
        children = ike.get("child-sas")
        installed = any(isinstance(c, Mapping) and _text(c.get("name")) == CHILD
                        and _text(c.get("state")) == "INSTALLED"
                        for c in (children.values() if isinstance(children, Mapping) else ()))
        out.append(SaInfo(ike_id, _text(ike.get("state")), tia(ike), _endpoint(ike, "local"),
                          _endpoint(ike, "remote"),
                          _nat(ike), installed))
    return out
