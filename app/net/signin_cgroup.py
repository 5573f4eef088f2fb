"""The sign-in window's own cgroup (v2): what the gate's sign-in hole is keyed to.

nftables' ``socket cgroupv2 level N "path"`` names a cgroup by its path under
``/sys/fs/cgroup`` (nft looks the path up when the rule is loaded), so the
cgroup v2 hierarchy must be mounted there (a unified system) or below it
(``/sys/fs/cgroup/unified`` on a hybrid one).  Each sign-in gets a fresh cgroup
at the top of the hierarchy (level 1); the helper moves the process that asked
for the sign-in (its pid as the bus daemon knows it) into it, so the process
and every child it starts afterwards (QtWebEngine's renderers and network
service) are in it, and nothing else is.
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


def create(pid: int, mountinfo: str | None = None) -> SignInCgroup:
    """A fresh cgroup with ``pid`` (and its threads) moved into it."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    mount = cgroup2_mount(mountinfo)
    if mount is None:
        raise CgroupError("the sign-in window needs cgroup v2 mounted under "
                          f"{CGROUP_ROOT} (nftables keys its hole to the window's cgroup)")
    for old in mount.glob(f"{NAME}-*"):  # earlier sign-ins' whose windows have gone
        with contextlib.suppress(OSError):
            old.rmdir()
    name = f"{NAME}-{os.getpid()}-{next(_serial)}"
    directory = mount / name
    try:
        directory.mkdir(mode=0o755)
        (directory / "cgroup.procs").write_text(f"{pid}\n")
    except OSError as exc:
        with contextlib.suppress(OSError):
            directory.rmdir()
        raise CgroupError(f"cannot put the sign-in window in a cgroup of its own: "
                          f"{exc.strerror or exc}") from None
    return SignInCgroup(directory, str(directory.relative_to(CGROUP_ROOT)))


def remove(cg: SignInCgroup) -> None:
    """Remove the cgroup once its processes are gone (best effort: a window still
    running keeps it, and with the rules gone it is only a name)."""
    with contextlib.suppress(OSError):
        cg.directory.rmdir()
