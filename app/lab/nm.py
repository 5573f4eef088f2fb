"""The MN's private system bus, and the real NetworkManager on it (``up --nm``).

The bus runs the distribution's system bus policy with TrustRoam's policy file
added, exactly as on an installed desktop (see ``bus_conf``): a test that passes
here does not pass only because the bus lets everything through.

The bus socket and NM's files live under the lab's charon-safe directory:
NetworkManager gets tmpfs over /run and /var/lib/NetworkManager, and a
read-only /sys, without which it waits for udev and manages nothing.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from app.lab import dns as lab_dns

SYSTEM_CONF = Path("/usr/share/dbus-1/system.conf")
OUR_POLICY = (Path(__file__).resolve().parents[2] / "packaging" / "dbus"
              / "org.trustroam.Helper1.conf")
# What a running system bus does but the lab's must not: become another user,
# fork, write /run/dbus/pid, listen on the host's socket, start services.
_NOT_IN_LAB = ("user", "fork", "pidfile", "listen", "servicehelper", "servicedir",
               "standard_system_servicedirs", "syslog")


def bus_conf(socket: Path) -> str:
    """The distribution's system bus configuration, as a desktop runs it, on the lab's
    socket, plus TrustRoam's installed policy file.

    Everything that decides who may own, send and receive is kept: the default
    deny of method calls (root's included), the policy files of
    /usr/share/dbus-1/system.d (NetworkManager's and polkit's among them) and
    /etc/dbus-1/system.d, and ``packaging/dbus/org.trustroam.Helper1.conf`` as if
    installed.  Only the daemon's process settings are replaced.
    """
    root = ET.parse(SYSTEM_CONF).getroot()  # noqa: S314 (the distribution's own file)
    for el in list(root):
        if el.tag in _NOT_IN_LAB:
            root.remove(el)
        elif el.tag in ("include", "includedir") and el.text:
            if el.get("if_selinux_enabled") == "yes":
                root.remove(el)
            elif not el.text.startswith("/"):
                el.text = str(SYSTEM_CONF.parent / el.text)
    listen = ET.Element("listen")
    listen.text = f"unix:path={socket}"
    root.insert(1, listen)
    ours = ET.SubElement(root, "include")
    ours.text = str(OUR_POLICY)
    return ("<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration "
            "1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
            + ET.tostring(root, encoding="unicode") + "\n")


NM_CONF = """[main]
plugins=keyfile
dns={dns}
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
    (d / "bus.conf").write_text(bus_conf(sock))
    nm_conf = d / "nm.conf"
    # Where the MN runs systemd-resolved (app.lab.dns), NetworkManager hands it each
    # link's DHCP resolvers, as on Debian's desktop; it never writes resolv.conf.
    dns = "systemd-resolved" if lab_dns.available() else "none"
    nm_conf.write_text(NM_CONF.format(conns=conns, iface=iface, dns=dns))
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
