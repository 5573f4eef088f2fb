"""The kernel-ESP layout on the lab's mobile node, emulated around kernel-libipsec.

On a desktop with kernel ESP (README, "The untrusted side"), charon's
kernel-netlink plugin puts the virtual IP (the TIA) on the physical interface,
its XFRM policies encrypt whatever leaves from the TIA to the intranet whatever
route it takes, and the kernel hands what it decrypted back in on the physical
interface.  This kernel has no ESP: the lab's charon runs kernel-libipsec
(userspace ESP on its TUN ``ipsec0``, which also holds the TIA).  What is
emulated, and how:

- the address layout: the TIA also on ``eth0`` (/32, no lifetime, as charon adds
  it), under the label ``eth0:vip`` so that the lab's DHCP client, like
  NetworkManager, keeps it through a move (its own addresses carry the label
  ``eth0``; ``app/lab/world.py``);
- the output policy: a packet from the TIA to the intranet leaving ``eth0`` is
  redirected into ``ipsec0`` (tc, egress), where charon encrypts it;
- the input side: a Mobile IP reply to the TIA that charon decrypted
  (``ipsec0``) enters on ``eth0`` instead (tc, ingress), as kernel ESP re-injects
  it.  Only UDP from port 434: the mc data plane keeps ``ipsec0``.

Not emulated: the secpath a real decryption leaves on the packet (the direct
socket's inbound bypass policy would refuse it, ``app/net/ipsec_bypass.py``); so
here only the choice of the link address keeps the decision right.

A counter (nft, postrouting) says how many Mobile IP requests left ``eth0`` from
the TIA: RFC 5266 3.4's direct request must never be one.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from app.lab.charon import INTRANET_TS
from app.lab.topology import MN, MN_IFACE

VPN_DEVICE = "ipsec0"
LABEL = f"{MN_IFACE}:vip"
TABLE = "trustroam_kesp"


def _mn(*cmd: str, stdin: str | None = None) -> str:
    out = subprocess.run(["ip", "netns", "exec", MN, *cmd], input=stdin, capture_output=True,
                         text=True, check=False, timeout=20)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")
    return out.stdout


@contextmanager
def kernel_esp_layout(tia: str) -> Iterator[None]:
    _mn("ip", "addr", "add", f"{tia}/32", "dev", MN_IFACE, "label", LABEL)
    try:
        _mn("tc", "qdisc", "add", "dev", MN_IFACE, "clsact")
        _mn("tc", "filter", "add", "dev", MN_IFACE, "egress", "protocol", "ip", "prio", "1",
            "u32", "match", "ip", "src", f"{tia}/32", "match", "ip", "dst", INTRANET_TS,
            "action", "mirred", "egress", "redirect", "dev", VPN_DEVICE)
        _mn("tc", "qdisc", "add", "dev", VPN_DEVICE, "clsact")
        _mn("tc", "filter", "add", "dev", VPN_DEVICE, "ingress", "protocol", "ip", "prio", "1",
            "u32", "match", "ip", "dst", f"{tia}/32", "match", "ip", "protocol", "17", "0xff",
            "match", "ip", "sport", "434", "0xffff",
            "action", "mirred", "ingress", "redirect", "dev", MN_IFACE)
        _mn("nft", "-f", "-", stdin=(
            f"table ip {TABLE} {{\n"
            "  chain post {\n"
            "    type filter hook postrouting priority 300; policy accept;\n"
            f'    oifname "{MN_IFACE}" ip saddr {tia} udp dport 434 counter\n'
            "  }\n}\n"))
        yield
    finally:
        for cmd in (("nft", "delete", "table", "ip", TABLE),
                    ("tc", "qdisc", "del", "dev", VPN_DEVICE, "clsact"),
                    ("tc", "qdisc", "del", "dev", MN_IFACE, "clsact"),
                    ("ip", "addr", "del", f"{tia}/32", "dev", MN_IFACE)):
            subprocess.run(["ip", "netns", "exec", MN, *cmd], capture_output=True,
                           check=False, timeout=20)


def requests_from_tia() -> int:
    """Mobile IP requests that left the link from the TIA so far."""
    out = _mn("nft", "list", "table", "ip", TABLE)
    for line in out.splitlines():
        if "counter packets" in line:
            return int(line.split("counter packets")[1].split()[0])
    raise AssertionError(f"no counter in {out}")


def link_addresses() -> list[str]:
    """``eth0``'s IPv4 addresses (address/length), in the kernel's order."""
    data = json.loads(_mn("ip", "-j", "-4", "addr", "show", "dev", MN_IFACE))
    return [f"{a['local']}/{a['prefixlen']}" for link in data for a in link["addr_info"]]
