"""The foreign agent's userspace data plane.

Tunnelled packets from a visitor's home agent are decapsulated and handed to
the kernel, which delivers them on the visitor link through a /32 route.
Packets from a visitor that asked for reverse tunnelling (RFC 3024) are
steered by a source rule into the TUN device and tunnelled to its home agent.
A visitor that registered with the G bit is tunnelled in GRE both ways.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from app.agents.fa_core import Visitor
from app.net.ipip import GRE_MTU, MTU, Endpoint, Key, UserspaceTunnel

log = logging.getLogger("trustroam.fa.dataplane")
TUN_NAME = "trfa0"
TABLE = "434"
RULE_PRIORITY = "434"


class UserspaceForeignAgentPlane:
    def __init__(self, link: str, care_of_address: str, tun_name: str = TUN_NAME, *,
                 gre: bool = False) -> None:
        self.link = link
        self.visitors: dict[bytes, Visitor] = {}
        # Reverse tunnelling by the visitor's home address (source); in only to a
        # visitor (destination), from its own home agent.
        self.tunnel = UserspaceTunnel(tun_name, Key.SOURCE, Key.DESTINATION,
                                      local_address=care_of_address, gre=gre)
        # One reverse route for every visitor: with GRE offered, its 4 more bytes
        # must fit whichever encapsulation a visitor uses.
        _ip("link", "set", tun_name, "up", "mtu", str(GRE_MTU if gre else MTU))
        _ip("route", "replace", "default", "dev", tun_name, "table", TABLE)
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")

    def start(self) -> None:
        self.tunnel.start()

    def visitor_up(self, v: Visitor) -> None:
        key = v.home_address.packed
        self.visitors[key] = v
        self.tunnel.set_accept(key, v.home_agent.packed, v.gre)
        if v.reverse_tunnel:
            self.tunnel.set_route(key, Endpoint(str(v.home_agent), gre=v.gre))
        else:
            self.tunnel.remove_route(key)
        hoa = str(v.home_address)
        _ip("route", "replace", f"{hoa}/32", "dev", self.link)
        _ip_quiet("rule", "del", "from", hoa, "iif", self.link, "lookup", TABLE)
        if v.reverse_tunnel:
            _ip("rule", "add", "from", hoa, "iif", self.link, "lookup", TABLE, "priority",
                RULE_PRIORITY)

    def visitor_down(self, v: Visitor) -> None:
        key = v.home_address.packed
        self.visitors.pop(key, None)
        self.tunnel.remove_route(key)
        self.tunnel.remove_accept(key)
        hoa = str(v.home_address)
        _ip_quiet("route", "del", f"{hoa}/32", "dev", self.link)
        _ip_quiet("rule", "del", "from", hoa, "iif", self.link, "lookup", TABLE)

    def close(self) -> None:
        for v in list(self.visitors.values()):
            self.visitor_down(v)
        _ip_quiet("route", "del", "default", "table", TABLE)
        self.tunnel.close()


def _ip(*args: str) -> None:
    out = subprocess.run(["ip", *args], capture_output=True, text=True,  # noqa: S603, S607
                         check=False)
    if out.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {out.stderr.strip()}")


def _ip_quiet(*args: str) -> None:
    try:
        _ip(*args)
    except OSError as exc:
        log.debug("%s", exc)


def interface_address(ifname: str) -> str | None:
    """The first IPv4 address of ``ifname`` (to check the config against the host)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", ifname],  # noqa: S603, S607
                         capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1].split("/")[0]
    return None


