"""The gate's captive-portal chains as nftables text: pure, no I/O (issue 19).

Three chains of the gate's table, empty unless the helper fills them, refilled
together in one transaction by :func:`render`:

- ``portal`` (jumped to from the gate's postrouting chain, before its drop): the
  helper's portal probe (sockets marked :data:`PORTAL_MARK`) out of the physical
  link, HTTP and DNS only, while a probe runs; and, while a sign-in hole is open,
  what the sign-in process sends: HTTP, HTTPS, and DNS to the link's resolvers
  only, out of that link only, never from the home address.
- ``portal_out`` (an output hook): marks :data:`SIGNIN_MARK` on what the
  sign-in process's sockets send, keyed to its cgroup v2 (nftables' ``socket
  cgroupv2``, which the kernel supports in output and input, not postrouting).
- ``portal_in`` (jumped to from the input chain, before its drop): the replies to
  those sockets only (the probe's mark, the sign-in cgroup), on that link.

Keyed to the helper's own marked socket and to the one sign-in process's cgroup:
never to a port or an address alone, so every other program stays blocked.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from app.net import gate_rules
from app.net.gate_rules import TABLE, _q
from app.net.portal_probe import PORTAL_MARK

SIGNIN_MARK = gate_rules.SIGNIN_MARK
"""Set in ``portal_out`` on the sign-in process's packets; only those pass ``portal``
(defined with the gate: its DNS refusal lets it by)."""

CHAINS = ("portal", "portal_in", "portal_out")


@dataclass(frozen=True, slots=True)
class SignInHole:
    """An open sign-in: the link, the process's cgroup (path under the cgroup2 mount
    as nft names it, and its level), the link's resolvers."""

    iface: str
    cgroup: str
    level: int
    resolvers: tuple[IPv4Address, ...] = ()

    def __post_init__(self) -> None:
        if not self.cgroup or '"' in self.cgroup or "\\" in self.cgroup \
                or self.cgroup.startswith("/"):
            raise ValueError(f"cgroup path {self.cgroup!r} cannot be put in a rule")
        if self.level < 1:
            raise ValueError("the sign-in cgroup must be below the root (level >= 1)")


def probe_rules(iface: str, home_address: IPv4Address, port: int) -> list[str]:
    m = f"oifname {_q(iface)} meta mark {PORTAL_MARK:#x} ip saddr != {home_address}"
    return [f"{m} tcp dport {port} accept", f"{m} udp dport 53 accept"]


def probe_in_rules(iface: str) -> list[str]:
    return [f"iifname {_q(iface)} ct state established socket mark {PORTAL_MARK:#x} accept"]


def _cg(hole: SignInHole) -> str:
    return f'socket cgroupv2 level {hole.level} "{hole.cgroup}"'


def hole_rules(hole: SignInHole, home_address: IPv4Address) -> list[str]:
    m = (f"oifname {_q(hole.iface)} meta mark {SIGNIN_MARK:#x} "
         f"ip saddr != {home_address}")
    rules = [f"{m} tcp dport {{ 80, 443 }} accept"]
    if hole.resolvers:
        dns = ", ".join(str(r) for r in hole.resolvers)
        rules.append(f"{m} ip daddr {{ {dns} }} meta l4proto {{ tcp, udp }} th dport 53 "
                     "accept")
    return rules


def hole_out_rules(hole: SignInHole) -> list[str]:
    return [f"{_cg(hole)} meta mark set {SIGNIN_MARK:#x}"]


def hole_in_rules(hole: SignInHole) -> list[str]:
    return [f"iifname {_q(hole.iface)} ct state established,related {_cg(hole)} accept"]


def render(home_address: IPv4Address, probe: tuple[str, int] | None,
           hole: SignInHole | None) -> str:
    """The three chains refilled in one transaction: ``probe`` (link, HTTP port) while
    a probe runs, ``hole`` while a sign-in is open; both None empties them."""
    out: list[str] = []
    inn: list[str] = []
    mark: list[str] = []
    if probe is not None:
        out += probe_rules(probe[0], home_address, probe[1])
        inn += probe_in_rules(probe[0])
    if hole is not None:
        out += hole_rules(hole, home_address)
        inn += hole_in_rules(hole)
        mark += hole_out_rules(hole)
    script = [f"flush chain inet {TABLE} {c}" for c in CHAINS]
    script += [f"add rule inet {TABLE} portal {r}" for r in out]
    script += [f"add rule inet {TABLE} portal_in {r}" for r in inn]
    script += [f"add rule inet {TABLE} portal_out {r}" for r in mark]
    return "\n".join(script) + "\n"

