"""The sign-in window's own cgroup (v2): what the gate's sign-in hole is keyed to.

nftables' ``socket cgroupv2 level N "path"`` names a cgroup by its path under
``/sys/fs/cgroup`` (nft looks the path up when the rule is loaded), so the
cgroup v2 hierarchy must be mounted there (a unified system) or below it
(``/sys/fs/cgroup/unified`` on a hybrid one).  Each sign-in gets a fresh cgroup
at the top of the hierarchy (level 1); the helper moves the process that asked
for the sign-in (its pid as the bus daemon knows it) into it, so the process
and every child it starts afterwards (QtWebEngine's renderers and network
service) are in it, and nothing else is.

That pid was recorded when the caller connected to the bus: the process may have
gone and its pid been reused by another user's process (a root one started by
sudo from the same session passes polkit's check).  So the process is moved only
if every uid it has (real, effective, saved, filesystem) is the caller's, and its
start time is the same before and after the move; otherwise it is moved back
and the sign-in refused.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from app.errors import UserFacingError

CGROUP_ROOT = Path("/sys/fs/cgroup")
NAME = "trustroam-signin"
_serial = itertools.count(1)


class CgroupError(UserFacingError):
    """No cgroup v2 for the sign-in window; one line, for the user."""


@dataclass(frozen=True, slots=True)
class SignInCgroup:
    directory: Path
    nft_path: str
    """The path as nft's ``socket cgroupv2`` takes it (relative to /sys/fs/cgroup)."""
    level: int = 1


def cgroup2_mount(mountinfo: str) -> Path | None:
    """The cgroup2 mount at or below /sys/fs/cgroup (from /proc/self/mountinfo)."""
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        fields = pre.split()
        if sep and post.split()[:1] == ["cgroup2"] and len(fields) > 4:
            point = Path(fields[4])
            if point == CGROUP_ROOT or CGROUP_ROOT in point.parents:
                return point
    return None


PROC = Path("/proc")


@dataclass(frozen=True, slots=True)
class ProcIdentity:
    """Who a pid is now: its uids, its start time (clock ticks since boot), its cgroup
    v2 path (the ``0::`` line of /proc/<pid>/cgroup)."""

    uids: tuple[int, ...]
    start: int
    cgroup: str


def identity(pid: int, proc: Path = PROC) -> ProcIdentity | None:
    """``pid``'s identity from ``proc``; None if there is no such process (or its
    files cannot be read or make no sense)."""
    try:
        status = (proc / str(pid) / "status").read_text()
        stat = (proc / str(pid) / "stat").read_text()
        groups = (proc / str(pid) / "cgroup").read_text()
        uids = next(tuple(int(u) for u in line.split()[1:])
                    for line in status.splitlines() if line.startswith("Uid:"))
        # After the last ')': the command name may hold spaces and parentheses.
        start = int(stat.rpartition(")")[2].split()[19])
        cgroup = next((line[3:] for line in groups.splitlines() if line.startswith("0::")),
                      "")
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    if not uids:
        return None
    return ProcIdentity(uids, start, cgroup)


def owned_by(pid: int, uid: int, proc: Path = PROC) -> ProcIdentity:
    """``pid``'s identity if it is a process all of whose uids are ``uid``."""
    who = identity(pid, proc)
    if who is None:
        raise CgroupError(f"the calling process {pid} is gone")
    if any(u != uid for u in who.uids):
        raise CgroupError(f"process {pid} is not the caller's (uid {uid}): refused")
    return who


def create(pid: int, uid: int, mountinfo: str | None = None, proc: Path = PROC,
           mount: Path | None = None) -> SignInCgroup:
    """A fresh cgroup with ``pid`` (and its threads) moved into it, if it is a process
    of ``uid`` (the caller's, as the bus daemon knows it) before and after the move."""
    if mount is None:
        if mountinfo is None:
            mountinfo = (proc / "self" / "mountinfo").read_text()
        mount = cgroup2_mount(mountinfo)
    if mount is None:
        raise CgroupError("the sign-in window needs cgroup v2 mounted under "
                          f"{CGROUP_ROOT} (nftables keys its hole to the window's cgroup)")
    for old in mount.glob(f"{NAME}-*"):  # earlier sign-ins' whose windows have gone
        with contextlib.suppress(OSError):
            old.rmdir()
    name = f"{NAME}-{os.getpid()}-{next(_serial)}"
    directory = mount / name
    before = owned_by(pid, uid, proc)
    try:
        directory.mkdir(mode=0o755)
        (directory / "cgroup.procs").write_text(f"{pid}\n")
    except OSError as exc:
        with contextlib.suppress(OSError):
            directory.rmdir()
        raise CgroupError(f"cannot put the sign-in window in a cgroup of its own: "
                          f"{exc.strerror or exc}") from None
    after = identity(pid, proc)
    if after is None or after.start != before.start or any(u != uid for u in after.uids):
        # The pid changed hands between the check and the move: whatever holds it
        # now goes back where the checked process was, and nothing is opened.
        with contextlib.suppress(OSError):
            (mount / before.cgroup.lstrip("/") / "cgroup.procs").write_text(f"{pid}\n")
        with contextlib.suppress(OSError):
            directory.rmdir()
        raise CgroupError(f"the calling process {pid} changed while it was moved: refused")
    try:
        nft_path = str(directory.relative_to(CGROUP_ROOT))
    except ValueError:
        nft_path = name  # a mount given outside /sys/fs/cgroup (tests)
    return SignInCgroup(directory, nft_path)


def remove(cg: SignInCgroup) -> None:
    """Remove the cgroup once its processes are gone (best effort: a window still
    running keeps it, and with the rules gone it is only a name)."""
    with contextlib.suppress(OSError):
        cg.directory.rmdir()
