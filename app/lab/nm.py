"""The real NetworkManager in the MN namespace, on a private system bus (``up --nm``).

The bus socket and NM's files live under the lab's charon-safe directory:
NetworkManager gets tmpfs over /run and /var/lib/NetworkManager, and a
read-only /sys, without which it waits for udev and manages nothing.
"""

from __future__ import annotations

from pathlib import Path

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""

NM_CONF = """[main]
plugins=keyfile
dns=none
rc-manager=unmanaged
no-auto-default=*
auth-polkit=false

[keyfile]
path={conns}

[connectivity]
enabled=false

[device-lab]
match-device=interface-name:{iface}
managed=1

[logging]
level=INFO
"""

CONNECTION = """[connection]
id=lab-{iface}
type=ethernet
interface-name={iface}
autoconnect=true

[ipv4]
method=auto

[ipv6]
method=ignore
"""


def prepare(base: Path, iface: str) -> tuple[Path, Path, Path]:
    """Write the bus and NM configuration; returns (directory, bus socket, nm.conf)."""
    d = base / "nm"
    conns = d / "connections"
    conns.mkdir(parents=True, exist_ok=True)
    sock = d / "system_bus_socket"
    (d / "bus.conf").write_text(BUS_CONF.format(socket=sock))
    nm_conf = d / "nm.conf"
    nm_conf.write_text(NM_CONF.format(conns=conns, iface=iface))
    profile = conns / f"lab-{iface}.nmconnection"
    profile.write_text(CONNECTION.format(iface=iface))
    profile.chmod(0o600)  # NetworkManager ignores keyfiles others can read
    return d, sock, nm_conf


def bus_address(sock: Path) -> str:
    return f"unix:path={sock}"


def nm_command(nm_conf: Path) -> list[str]:
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib/NetworkManager && "
            "mount -o remount,bind,ro /sys && "
            f"exec NetworkManager --no-daemon --config={nm_conf}"]
