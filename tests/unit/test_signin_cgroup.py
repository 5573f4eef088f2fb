"""The sign-in cgroup takes only the caller's own process (security review of the
portal work, finding 1): fake /proc files and a fake cgroup2 mount."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.net import signin_cgroup
from app.net.signin_cgroup import CgroupError, create, identity


def _proc(root: Path, pid: int, uids: tuple[int, int, int, int], start: int,
          cgroup: str = "/user.slice/user-1000.slice/session-2.scope") -> None:
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "status").write_text("Name:\tsignin\nUid:\t" + "\t".join(map(str, uids)) + "\n")
    # comm with a space and a parenthesis: the fields count from the last ')'.
    rest = ["S"] + ["0"] * 18 + [str(start), "0"]
    (d / "stat").write_text(f"{pid} (a b) c) " + " ".join(rest) + "\n")
    (d / "cgroup").write_text(f"0::{cgroup}\n")


def test_identity_reads_uids_start_time_and_cgroup(tmp_path):
    _proc(tmp_path, 42, (1000, 1000, 1000, 1000), 777)
    who = identity(42, tmp_path)
    assert who is not None and who.uids == (1000,) * 4 and who.start == 777
    assert who.cgroup == "/user.slice/user-1000.slice/session-2.scope"
    assert identity(43, tmp_path) is None


@pytest.mark.parametrize("uids", [(0, 0, 0, 0), (1000, 0, 1000, 1000), (1000, 1000, 0, 1000),
                                  (1000, 1000, 1000, 0), (0, 1000, 1000, 1000)])
def test_a_process_with_any_uid_not_the_callers_is_never_moved(tmp_path, uids):
    proc, mount = tmp_path / "proc", tmp_path / "cg"
    mount.mkdir()
    _proc(proc, 42, uids, 777)
    with pytest.raises(CgroupError, match="not the caller's"):
        create(42, 1000, proc=proc, mount=mount)
    assert list(mount.iterdir()) == []


def test_a_gone_process_is_refused(tmp_path):
    (tmp_path / "cg").mkdir()
    with pytest.raises(CgroupError, match="gone"):
        create(42, 1000, proc=tmp_path / "proc", mount=tmp_path / "cg")


def test_the_callers_own_process_is_moved(tmp_path):
    proc, mount = tmp_path / "proc", tmp_path / "cg"
    mount.mkdir()
    _proc(proc, 42, (1000,) * 4, 777)
    cg = create(42, 1000, proc=proc, mount=mount)
    assert (cg.directory / "cgroup.procs").read_text() == "42\n"


def test_a_pid_that_changed_hands_during_the_move_is_moved_back_and_refused(
        tmp_path, monkeypatch):
    proc, mount = tmp_path / "proc", tmp_path / "cg"
    old = "/user.slice/user-1000.slice/session-2.scope"
    (mount / old.lstrip("/")).mkdir(parents=True)
    _proc(proc, 42, (1000,) * 4, 777, old)
    real = signin_cgroup.identity
    calls = []

    def racing(pid, p=signin_cgroup.PROC):
        calls.append(pid)
        if len(calls) == 2:  # after the write: the pid is now another (root) process
            _proc(proc, 42, (0,) * 4, 900, "/system.slice/sudo.scope")
        return real(pid, p)

    monkeypatch.setattr(signin_cgroup, "identity", racing)
    with pytest.raises(CgroupError, match="changed"):
        create(42, 1000, proc=proc, mount=mount)
    assert (mount / old.lstrip("/") / "cgroup.procs").read_text() == "42\n"
