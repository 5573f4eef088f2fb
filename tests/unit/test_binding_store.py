from __future__ import annotations

import os
import stat
from ipaddress import IPv4Address

import pytest

from app.agents.binding_store import BindingStore, StoreError
from app.agents.bindings import Binding, BindingChange, ChangeKind, HaReplayState
from app.mip.messages import RegFlags

A = IPv4Address


def binding(hoa: str, coa: str = "10.30.0.5", exp: float = 2e9) -> Binding:
    return Binding(A(hoa), A(coa), 600, exp - 600, exp, RegFlags.D | RegFlags.T,
                   A("198.51.100.1"), 40000, True, 110, True, "a@b")


def test_round_trip_and_permissions(tmp_path):
    store = BindingStore(tmp_path / "st")
    b = binding("10.20.1.10")
    big = (1 << 64) - 1  # identification uses all 64 bits; SQLite integers are signed
    store.apply([BindingChange(ChangeKind.ADDED, b)], [(b.home_address, HaReplayState(big))])
    store.close()
    assert stat.S_IMODE(os.stat(tmp_path / "st").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "st" / "bindings.sqlite3").st_mode) == 0o600
    state = BindingStore(tmp_path / "st", read_only=True).load()
    assert state.bindings == [b]
    assert state.replay == {b.home_address: HaReplayState(big, None)}


def test_last_change_of_a_batch_wins(tmp_path):
    store = BindingStore(tmp_path)
    b = binding("10.20.1.10")
    store.apply([BindingChange(ChangeKind.ADDED, b), BindingChange(ChangeKind.REMOVED, b)])
    assert store.load().bindings == []
    b2 = binding("10.20.1.10", "10.40.0.1")
    store.apply([BindingChange(ChangeKind.REMOVED, b), BindingChange(ChangeKind.ADDED, b2)])
    assert store.load().bindings == [b2]
    store.apply([BindingChange(ChangeKind.EXPIRED, b2)])
    assert store.load().bindings == []


def test_unwritable_state_dir_names_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match=r"cannot open binding cache .*file/bindings\.sqlite3"):
        BindingStore(blocker)


def test_read_only_without_database(tmp_path):
    with pytest.raises(StoreError, match="no binding cache"):
        BindingStore(tmp_path, read_only=True)


def test_replay_survives_deregistration_and_expiry(tmp_path):
    store = BindingStore(tmp_path)
    b = binding("10.20.1.10")
    store.apply([BindingChange(ChangeKind.ADDED, b)], [(b.home_address, HaReplayState(5))])
    store.apply([BindingChange(ChangeKind.REMOVED, b)], [(b.home_address, HaReplayState(6))])
    store.apply([], [(A("10.20.1.11"), HaReplayState(None, 77))])
    state = store.load()
    assert state.bindings == []
    assert state.replay == {b.home_address: HaReplayState(6),
                            A("10.20.1.11"): HaReplayState(None, 77)}
    store.apply([BindingChange(ChangeKind.ADDED, b)])  # binding only: replay kept
    assert store.load().replay[b.home_address] == HaReplayState(6)
    assert store.load().bindings == [b]
