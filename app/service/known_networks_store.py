"""The verdicts of RFC 5266 5's known networks, kept across restarts and boots.

``known-networks.json`` in the helper's state directory (root-only, written
atomically): network identity (a digest, ``app.net.network_identity``) -> the
wall-clock time it was last judged untrusted.  Advisory, like the gateways'
cache: a file that cannot be believed is ignored with a warning naming it, and
the networks are probed again.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

from app.mn.known_networks import MAX_REMEMBERED
from app.mn.mode_events import RememberNetwork
from app.service.state import read_advisory, write_file

log = logging.getLogger(__name__)

FILE = "known-networks.json"
MAX_FILE = 65536
VERSION = 1
IDENTITY = re.compile(r"[0-9a-f]{32}")


class KnownNetworksStore:
    def __init__(self, directory: Path | None) -> None:
        """``directory``: the helper's state directory (None: nothing is kept)."""
        self.directory = directory
        self._entries: dict[str, float] | None = None

    def load(self) -> dict[str, float]:
        if self._entries is None:
            self._entries = self._read() if self.directory is not None else {}
        return dict(self._entries)

    def remember(self, a: RememberNetwork) -> None:
        entries = self.load()
        entries.pop(a.network, None)
        if a.untrusted:
            entries[a.network] = a.at
        while len(entries) > MAX_REMEMBERED:
            del entries[next(iter(entries))]
        self._entries = entries
        if self.directory is None:
            return
        doc = {"version": VERSION, "untrusted": entries}
        try:
            write_file(self.directory, FILE, (json.dumps(doc) + "\n").encode(), 0o600)
        except OSError as exc:
            log.warning("cannot keep the known networks in %s: %s", self.directory / FILE,
                        exc.strerror or exc)

    def _read(self) -> dict[str, float]:
        assert self.directory is not None
        return read_advisory(self.directory, FILE, MAX_FILE, parse, {})


def parse(doc: object) -> dict[str, float]:
    """The file's contents; ValueError naming the field if it cannot be believed."""
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"version: must be {VERSION}")
    untrusted = doc.get("untrusted")
    if not isinstance(untrusted, dict) or len(untrusted) > MAX_REMEMBERED:
        raise ValueError(f"untrusted: must be an object of at most {MAX_REMEMBERED} networks")
    out: dict[str, float] = {}
    for key, at in untrusted.items():
        if not IDENTITY.fullmatch(key):
            raise ValueError(f"untrusted.{key[:40]!r}: not a network identity")
        try:
            when = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else -1
        except OverflowError:  # an int of 400 digits is no time either
            when = -1
        if not math.isfinite(when) or when < 0:
            raise ValueError(f"untrusted.{key}: not a time")
        out[key] = when
    return out
