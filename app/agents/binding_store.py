"""The home agent's durable binding cache: SQLite in WAL mode.

The server writes every change here, in one transaction per batch of
requests, before any reply of that batch leaves.  A restarted home agent
loads what is here and serves the bindings with the lifetime they have left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from app.agents.bindings import Binding, BindingChange, ChangeKind, HaReplayState
from app.errors import UserFacingError
from app.mip.messages import RegFlags

DB_NAME = "bindings.sqlite3"
CHECKPOINT_INTERVAL = 1.0  # seconds
SCHEMA_VERSION = 1
_BINDING_COLUMNS = ("care_of_address", "lifetime", "registered_at", "expires_at", "flags",
                    "source_address", "source_port", "udp_tunnel", "keepalive_interval",
                    "nat_detected", "nai")
# One row per mobile node: replay state and binding together, so the common
# case (an accepted request) is one row written.  No binding: its columns are NULL.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mobile_nodes (
    home_address INTEGER PRIMARY KEY,
    last_identification TEXT,
    ha_nonce INTEGER,
    care_of_address INTEGER, lifetime INTEGER, registered_at REAL, expires_at REAL,
    flags INTEGER, source_address INTEGER, source_port INTEGER, udp_tunnel INTEGER,
    keepalive_interval INTEGER, nat_detected INTEGER, nai TEXT
);
"""
log = logging.getLogger("trustroam.ha.store")
_FULL = "INSERT OR REPLACE INTO mobile_nodes VALUES (" + ",".join("?" * 14) + ")"
_BINDING_ONLY = (
    "INSERT INTO mobile_nodes (home_address, " + ", ".join(_BINDING_COLUMNS) + ") VALUES ("
    + ",".join("?" * 12) + ") ON CONFLICT(home_address) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _BINDING_COLUMNS))
_REPLAY_ONLY = (
    "INSERT INTO mobile_nodes (home_address, last_identification, ha_nonce) VALUES (?,?,?) "
    "ON CONFLICT(home_address) DO UPDATE SET last_identification = "
    "excluded.last_identification, ha_nonce = excluded.ha_nonce")
_NO_BINDING: tuple[object, ...] = (None,) * len(_BINDING_COLUMNS)


class StoreError(UserFacingError):
    """The binding cache cannot be opened or written; the message names the file."""


@dataclass(frozen=True)
class StoredState:
    bindings: list[Binding]
    replay: dict[IPv4Address, HaReplayState]


def _row(b: Binding) -> tuple[object, ...]:
    """The binding columns, without the home address."""
    return (int(b.care_of_address), b.lifetime, b.registered_at,
            b.expires_at, int(b.flags), int(b.source_address), b.source_port,
            int(b.udp_tunnel), b.keepalive_interval, int(b.nat_detected), b.nai)


def _replay_row(st: HaReplayState) -> tuple[object, object]:
    # Identification uses all 64 bits; SQLite integers are signed: store text.
    last = None if st.last_identification is None else str(st.last_identification)
    return (last, st.ha_nonce)


def _binding(row: tuple[object, ...]) -> Binding:
    (hoa, coa, life, reg, exp, flags, saddr, sport, udp, ka, nat, nai) = row
    assert isinstance(hoa, int) and isinstance(coa, int) and isinstance(saddr, int)
    assert isinstance(life, int) and isinstance(flags, int) and isinstance(sport, int)
    assert isinstance(reg, float) and isinstance(exp, float) and isinstance(ka, int)
    assert nai is None or isinstance(nai, str)
    return Binding(IPv4Address(hoa), IPv4Address(coa), life, reg, exp, RegFlags(flags),
                   IPv4Address(saddr), sport, bool(udp), ka, bool(nat), nai)


class BindingStore:
    def __init__(self, state_dir: Path, *, fsync_each_commit: bool = True,
                 read_only: bool = False) -> None:
        self.path = state_dir / DB_NAME
        try:
            if read_only:
                if not self.path.exists():
                    raise StoreError(f"no binding cache at {self.path} (has the home agent "
                                     "run with this state_dir?)")
                self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            else:
                state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
                os.close(fd)
                # Written from the server's single writer thread, opened and closed
                # on the loop thread: never two threads at once.
                self._db = sqlite3.connect(self.path, isolation_level=None,
                                           check_same_thread=False)
                # Small pages: a commit writes each touched page whole into the
                # WAL, and one binding row is ~100 bytes.
                self._db.execute("PRAGMA page_size=1024")
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={'FULL' if fsync_each_commit else 'NORMAL'}")
                # Checkpoints copy the WAL back into the database; done inside a
                # commit they stall that batch's replies, so a thread does them.
                self._db.execute("PRAGMA wal_autocheckpoint=0")
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)",
                                 (str(SCHEMA_VERSION),))
                self._stop = threading.Event()
                self._checkpointer = threading.Thread(target=self._checkpoint_loop,
                                                      name="ha-checkpoint", daemon=True)
                self._checkpointer.start()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open binding cache {self.path}: {exc}") from None

    def load(self) -> StoredState:
        try:
            rows = self._db.execute("SELECT * FROM mobile_nodes").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read binding cache {self.path}: {exc}") from None
        bindings: list[Binding] = []
        replay: dict[IPv4Address, HaReplayState] = {}
        for hoa, last, nonce, *cols in rows:
            if last is not None or nonce is not None:
                replay[IPv4Address(hoa)] = HaReplayState(None if last is None else int(last),
                                                       nonce)
            if cols[0] is not None:
                bindings.append(_binding((hoa, *cols)))
        return StoredState(bindings, replay)

    def apply(self, changes: Iterable[BindingChange],
              replay: Iterable[tuple[IPv4Address, HaReplayState]] = ()) -> None:
        """Write a batch of changes in one transaction (one fsync for the batch)."""
        # Only the last change of each home address counts: a batch may hold a
        # registration and the deregistration that followed it.
        last = {int(ch.binding.home_address): ch for ch in changes}
        states = {int(hoa): st for hoa, st in replay}
        full: list[tuple[object, ...]] = []
        binding_only: list[tuple[object, ...]] = []
        for hoa, ch in last.items():
            cols = _NO_BINDING if ch.kind in (ChangeKind.REMOVED, ChangeKind.EXPIRED) else (
                _row(ch.binding))
            st = states.pop(hoa, None)
            if st is None:
                binding_only.append((hoa, *cols))
            else:
                full.append((hoa, *_replay_row(st), *cols))
        replay_only = [(hoa, *_replay_row(st)) for hoa, st in states.items()]
        try:
            self._db.execute("BEGIN")
            if full:
                self._db.executemany(_FULL, full)
            if binding_only:
                self._db.executemany(_BINDING_ONLY, binding_only)
            if replay_only:
                self._db.executemany(_REPLAY_ONLY, replay_only)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise StoreError(f"cannot write binding cache {self.path}: {exc}") from None

    def _checkpoint_loop(self) -> None:
        # Lowest CPU priority for this thread only: a checkpoint may wait,
        # replies should not wait for it.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            while not self._stop.wait(CHECKPOINT_INTERVAL):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:  # busy: the next round catches up
                    log.debug("checkpoint of %s deferred: %s", self.path, exc)
        finally:
            db.close()

    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._checkpointer.join()
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
