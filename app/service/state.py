"""What the helper keeps across restarts: the policy and the last connected profile.

A helper that ends unexpectedly (its bus lost, a crash) leaves the gate as it
is and exits non-zero; systemd starts it again, and the new helper must put back
what the administrator and the user chose: the policy (an administrator's
``always-vpn`` must not become ``auto``) and the profile that was connected.

One small JSON file, ``state.json``, in the helper's state directory (the
unit's ``StateDirectory=``, /var/lib/trustroam): written atomically (a fresh
temporary file, fsynced, renamed), mode 0600, root's; read back only as a
regular file of root's that nobody else may write, never through a symlink,
and validated field by field: a bad file is refused with a message naming the
file and the field, never half-believed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets as _random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from app.api import Policy
from app.config import FileMissing, FileRefused, read_regular_file
from app.errors import UserFacingError
from app.mn.profile import NAME_RE

DEFAULT_DIR = Path("/var/lib/trustroam")
FILE = "state.json"
MAX_FILE = 4096
VERSION = 1


class StateError(UserFacingError):
    """The state file cannot be believed; the message names the file and the field."""


@dataclass(frozen=True)
class HelperState:
    policy: Policy = Policy.AUTO
    profile: str | None = None
    """The profile to connect at start (None: the user disconnected)."""


def load(directory: Path) -> HelperState:
    """The state kept in ``directory`` (the defaults if there is none)."""
    path = directory.absolute() / FILE
    try:
        # Root's, nobody else may write it, no symlink anywhere on the way.
        data = read_regular_file(path, MAX_FILE, follow_symlinks=False, root_owned=True)
    except FileMissing:
        return HelperState()
    except FileRefused as exc:
        raise StateError(f"{path}: {exc.reason}") from None
    try:
        doc = json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:  # nested a few thousand deep: no state of ours
        raise StateError(f"{path}: not valid JSON (nested too deep)") from None
    return parse(doc, str(path))


def parse(doc: object, where: str) -> HelperState:
    if not isinstance(doc, dict):
        raise StateError(f"{where}: not a JSON object")
    unknown = sorted(set(doc) - {"version", "policy", "profile"})
    if unknown:
        raise StateError(f"{where}: unknown key {unknown[0]!r}")
    if doc.get("version") != VERSION:
        raise StateError(f"{where}: version: must be {VERSION}, got {doc.get('version')!r}")
    raw_policy = doc.get("policy", Policy.AUTO.value)
    try:
        policy = Policy(raw_policy)
    except ValueError:
        allowed = ", ".join(p.value for p in Policy)
        raise StateError(f"{where}: policy: must be one of {allowed}, "
                         f"got {str(raw_policy)[:64]!r}") from None
    profile = doc.get("profile")
    if profile is not None and not (isinstance(profile, str) and NAME_RE.fullmatch(profile)):
        raise StateError(f"{where}: profile: not a profile name: {str(profile)[:64]!r}")
    return HelperState(policy, profile)


def dumps(state: HelperState) -> bytes:
    return (json.dumps({"version": VERSION, "policy": state.policy.value,
                        "profile": state.profile}, sort_keys=True) + "\n").encode()


def save(directory: Path, state: HelperState) -> None:
    """Atomically replace the state file (root-only), never through a symlink."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(directory, FILE, dumps(state), 0o600)


T = TypeVar("T")
_log = logging.getLogger(__name__)


def read_advisory(directory: Path, name: str, max_size: int, parse: Callable[[object], T],
                  empty: T) -> T:
    """An advisory JSON file of the state directory (a cache, a memory): root's own
    regular file, no symlink, at most ``max_size`` bytes, believed only if ``parse``
    takes it; otherwise ``empty`` with a warning naming the file, never an error."""
    path = directory.absolute() / name
    try:
        data = read_regular_file(path, max_size, follow_symlinks=False, root_owned=True)
    except FileMissing:
        return empty
    except FileRefused as exc:
        _log.warning("%s ignored: %s", path, exc.reason)
        return empty
    try:
        return parse(json.loads(data.decode()))
    except (UnicodeDecodeError, RecursionError, ValueError, OverflowError, TypeError) as exc:
        _log.warning("%s ignored: %s", path, exc)
        return empty


def write_file(directory: Path, name: str, data: bytes, mode: int) -> None:
    """Atomically replace ``directory/name`` without following any symlink."""
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for _ in range(16):
            tmp = f".{name}.{_random.token_hex(8)}.tmp"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             mode, dir_fd=dfd)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError("no free temporary name")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                os.fchmod(fh.fileno(), mode)  # whatever the umask says
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            os.unlink(tmp, dir_fd=dfd)
            raise
        os.fsync(dfd)  # the rename itself survives a power loss
    finally:
        os.close(dfd)
