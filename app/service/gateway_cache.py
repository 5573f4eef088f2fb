"""The VPN gateways' last addresses, kept for when their names cannot resolve.

A gateway given by name is resolved when its profile connects, before the
profile's gate is installed.  That can fail where it matters most: at boot with
no network yet, or behind a shut gate that lockdown or always-vpn left (it lets
no DNS out).  The addresses each name last resolved to are kept in the helper's
state directory (``gateways.json``, root-only, written atomically) and used then.
The cache is advisory: a file that cannot be believed is ignored with a warning
naming it, never an error that stops a connect.
"""

from __future__ import annotations

import json
import logging
from ipaddress import IPv4Address
from pathlib import Path

from app.service.state import read_advisory, write_file

log = logging.getLogger(__name__)

FILE = "gateways.json"
MAX_FILE = 16384
MAX_NAMES = 64
MAX_ADDRESSES = 8
VERSION = 1


def unicast(address: IPv4Address) -> bool:
    """An address a VPN gateway can have: not loopback, multicast, unspecified,
    broadcast or reserved (a resolver's answer otherwise opens the gate to it)."""
    return not (address.is_loopback or address.is_multicast or address.is_unspecified
                or address.is_reserved)


class GatewayCache:
    def __init__(self, directory: Path | None) -> None:
        """``directory``: the helper's state directory (None: nothing is kept)."""
        self.directory = directory
        self._names: dict[str, tuple[IPv4Address, ...]] | None = None

    def get(self, name: str) -> tuple[IPv4Address, ...]:
        """The addresses ``name`` last resolved to (none if never, or not kept)."""
        return self._load().get(name, ())

    def put(self, name: str, addresses: tuple[IPv4Address, ...]) -> None:
        """``name`` resolved to ``addresses`` just now: added in front of what it
        resolved to before (at most MAX_ADDRESSES, newest first), written if changed.
        A union, not a replacement: the intranet's split-horizon answer or a hostile
        visited resolver's must not make the name's public addresses forgotten."""
        names = self._load()
        fresh = tuple(a for a in addresses if unicast(a))
        if not fresh:
            return
        addresses = tuple(dict.fromkeys((*fresh, *names.get(name, ()))))[:MAX_ADDRESSES]
        if names.get(name) == addresses:
            return
        names.pop(name, None)
        names[name] = addresses
        while len(names) > MAX_NAMES:  # the oldest name goes
            del names[next(iter(names))]
        if self.directory is None:
            return
        doc = {"version": VERSION,
               "gateways": {n: [str(a) for a in addrs] for n, addrs in names.items()}}
        try:
            write_file(self.directory, FILE, (json.dumps(doc, sort_keys=True) + "\n").encode(),
                       0o600)
        except OSError as exc:
            log.warning("cannot keep the VPN gateways' addresses in %s: %s",
                        self.directory / FILE, exc.strerror or exc)

    def _load(self) -> dict[str, tuple[IPv4Address, ...]]:
        if self._names is None:
            self._names = self._read() if self.directory is not None else {}
        return self._names

    def _read(self) -> dict[str, tuple[IPv4Address, ...]]:
        assert self.directory is not None
        return read_advisory(self.directory, FILE, MAX_FILE, parse, {})


def parse(doc: object) -> dict[str, tuple[IPv4Address, ...]]:
    """The file's contents; ValueError naming the field if it cannot be believed."""
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"version: must be {VERSION}")
    gateways = doc.get("gateways")
    if not isinstance(gateways, dict) or len(gateways) > MAX_NAMES:
        raise ValueError(f"gateways: must be an object of at most {MAX_NAMES} names")
    out: dict[str, tuple[IPv4Address, ...]] = {}
    for name, addrs in gateways.items():
        if (not isinstance(addrs, list) or not 0 < len(addrs) <= MAX_ADDRESSES
                or len(name) > 253):
            raise ValueError(f"gateways.{name[:64]}: must be a list of 1 to "
                             f"{MAX_ADDRESSES} IPv4 addresses")
        try:
            out[name] = tuple(IPv4Address(a) for a in addrs)
        except ValueError:
            raise ValueError(f"gateways.{name[:64]}: not an IPv4 address") from None
        if not all(map(unicast, out[name])):
            raise ValueError(f"gateways.{name[:64]}: not a unicast address")
    return out
