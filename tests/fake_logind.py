# No `from __future__ import annotations`: dbus-fast reads D-Bus signatures from
# the string annotations below.
"""A stand-in for systemd-logind on the lab's private bus: the parts the helper
asks (GetSessionByPID, Session.Active), for one user whose session is active
while a flag file exists.  The lab has no logind (no systemd in it)."""

from pathlib import Path

from app.service.bus import DBusError, PropertyAccess, ServiceInterface, dbus_property, method

NAME = "org.freedesktop.login1"
SESSION_PATH = "/org/freedesktop/login1/session/lab1"


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise ValueError(pid)


class Manager(ServiceInterface):
    def __init__(self, uid: int) -> None:
        super().__init__("org.freedesktop.login1.Manager")
        self.uid = uid
        self.asked: list[int] = []

    @method()
    def GetSessionByPID(self, pid: "u") -> "o":  # noqa: F821
        self.asked.append(pid)
        if uid_of(pid) != self.uid:
            raise DBusError("org.freedesktop.login1.NoSessionForPID",
                            f"PID {pid} does not belong to any known session")
        return SESSION_PATH


class Session(ServiceInterface):
    def __init__(self, active_flag: Path, uid: int) -> None:
        super().__init__("org.freedesktop.login1.Session")
        self.active_flag = active_flag
        self.uid = uid

    @dbus_property(access=PropertyAccess.READ)
    def User(self) -> "(uo)":  # noqa: F821
        return [self.uid, f"/org/freedesktop/login1/user/_{self.uid}"]

    @dbus_property(access=PropertyAccess.READ)
    def Active(self) -> "b":  # noqa: F821
        return self.active_flag.exists()
