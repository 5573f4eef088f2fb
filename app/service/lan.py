"""The user's per-network "Allow local network" choices (issue 19), kept across restarts.

A profile's ``allow_lan`` opens the local network on every network; without it,
a user may open it for one network from the tray (``SetAllowLan``, the
``org.trustroam.connect`` action: the active local user, like Connect).  A network
is recognised by :func:`app.net.gate_lan.network_identity` (its on-link subnet and
its router's link-layer address); the gate asks :meth:`LanChoices.wanted` at
every decision in modes c and mc.

``allow-lan.json`` in the helper's state directory, next to ``state.json`` and
written the same way (atomically, root's, 0600; read back only as a regular file of
root's, validated): ``{"version": 1, "networks": ["192.168.1.0/24 router aa:..", ...]}``.
"""

from __future__ import annotations

import json
import logging
import re
from ipaddress import IPv4Interface
from pathlib import Path

from app.config import FileMissing, FileRefused, read_regular_file
from app.net.gate_lan import network_identity
from app.service.state import StateError, write_file

log = logging.getLogger("trustroam.service.lan")
FILE = "allow-lan.json"
MAX_FILE = 64 * 1024
MAX_NETWORKS = 256
"""The oldest choices go first beyond this many."""
VERSION = 1
IDENTITY_RE = re.compile(r"\d{1,3}(\.\d{1,3}){3}/\d{1,2} router ([0-9a-f]{2}:){5}[0-9a-f]{2}")


def parse(doc: object, where: str) -> list[str]:
    if not isinstance(doc, dict) or set(doc) != {"version", "networks"}:
        raise StateError(f"{where}: must be an object with version and networks")
    if doc["version"] != VERSION:
        raise StateError(f"{where}: version: must be {VERSION}, got {doc['version']!r}")
    nets = doc["networks"]
    if not isinstance(nets, list) or len(nets) > MAX_NETWORKS:
        raise StateError(f"{where}: networks: must be a list of at most {MAX_NETWORKS}")
    for n in nets:
        if not (isinstance(n, str) and IDENTITY_RE.fullmatch(n)):
            raise StateError(f"{where}: networks: not a network: {str(n)[:64]!r}")
    return list(nets)


class LanChoices:
    """The networks whose local network the user opened; ``directory`` None: kept in
    memory only."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.networks: list[str] = []
        if directory is not None:
            try:
                self.networks = self._load(directory.absolute() / FILE)
            except StateError as exc:  # a bad file opens nothing
                log.error("%s: the local network stays shut everywhere", exc)

    @staticmethod
    def _load(path: Path) -> list[str]:
        try:
            data = read_regular_file(path, MAX_FILE, follow_symlinks=False, root_owned=True)
        except FileMissing:
            return []
        except FileRefused as exc:
            raise StateError(f"{path}: {exc.reason}") from None
        try:
            doc = json.loads(data.decode())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise StateError(f"{path}: not valid JSON") from None
        return parse(doc, str(path))

    def wanted(self, iface: str, link: IPv4Interface) -> bool:
        """The gate's question: did the user open this network's local network?"""
        ident = network_identity(iface, link)
        return ident is not None and ident in self.networks

    def choose(self, iface: str, link: IPv4Interface, allow: bool) -> str:
        """Record the choice for the network on ``iface``; returns its identity.
        Raises ValueError when the network cannot be told apart (no router seen)."""
        ident = network_identity(iface, link)
        if ident is None:
            raise ValueError(f"cannot tell the network on {iface} apart (no router seen)")
        nets = [n for n in self.networks if n != ident]
        if allow:
            nets = [*nets, ident][-MAX_NETWORKS:]
        self.networks = nets
        if self.directory is not None:
            try:
                write_file(self.directory, FILE, (json.dumps(
                    {"version": VERSION, "networks": nets}) + "\n").encode(), 0o600)
            except OSError as exc:
                log.error("cannot keep the local network choices in %s: %s",
                          self.directory, exc.strerror or exc)
        return ident
