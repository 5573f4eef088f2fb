"""The traffic gate: an nftables table of the helper's own, keyed to the decision.

The rules are :mod:`app.net.gate_rules`' (pure): while undecided only DHCP, the
direct registration request, agent solicitation and charon's IKE to the gateways
leave, and only their replies come in; a trusted decision opens exactly the
proven path (interface, care-of address, the mode's tunnel), both ways.  The
table is ``inet trustroam_gate``; it is installed before the helper does
anything else, every decision refills its ``proven`` chains in one transaction,
and removing the table is all it takes to put the host back (no other program's
rules are touched).  If the helper dies, the table stays and keeps blocking:
``trustroamctl release-gate`` removes it deliberately.

Changes go through libnftables in-process (ctypes, well under a millisecond:
the gate opens on the handover's critical path); where the library is missing,
through the ``nft`` program (~15 ms per change on a small VM).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import shutil
from collections.abc import Callable
from ipaddress import IPv4Interface, IPv4Network

from app.errors import UserFacingError
from app.net.gate_lan import link_interface
from app.net.gate_rules import (
    LAN_MODES,
    TABLE,
    GatePolicy,
    ProvenPath,
    dns_refusal_rules,
    lan_subnet,
    removal,
    render,
    render_decision,
    render_local,
)

log = logging.getLogger("trustroam.net.gate")
__all__ = ["TABLE", "GateError", "GatePolicy", "ProvenPath", "TrafficGate", "lan_answer",
           "remove_table"]


class GateError(UserFacingError):
    """The gate cannot be installed, changed or removed; one line, for the user."""


class _LibNftables:
    """The few libnftables calls the gate needs."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_error(self.ctx)
        lib.nft_ctx_buffer_output(self.ctx)

    def run(self, script: str) -> str | None:
        """None on success, else nft's error text."""
        if self.lib.nft_run_cmd_from_buffer(self.ctx, script.encode()) == 0:
            return None
        err = self.lib.nft_ctx_get_error_buffer(self.ctx)
        return err.decode(errors="replace").strip() if err else "unknown error"


@functools.cache
def _libnftables() -> _LibNftables | None:
    """One context per process: each holds a netlink socket, and a gate is made per
    Connect (one context per gate left a socket open per connection)."""
    path = ctypes.util.find_library("nftables")
    for candidate in (path, "libnftables.so.1"):
        if candidate:
            try:
                return _LibNftables(candidate)
            except (OSError, AttributeError):
                continue
    return None


class TrafficGate:
    """The decision as nftables rules; every change is one nft transaction."""

    def __init__(self, policy: GatePolicy, nft: str | None = None, *,
                 use_library: bool = True) -> None:
        self.policy = policy
        self.lib = _libnftables() if use_library else None
        found = nft or shutil.which("nft")
        if found is None and self.lib is None:
            raise GateError("nftables is not installed; the traffic gate needs it "
                            "(or set gate = false in the profile's [features])")
        self.nft = found or "nft"
        self.installed = False
        self.path: ProvenPath | None = None
        """The proven path the rules open now; None while undecided."""
        self.managed: frozenset[str] = frozenset()
        """Interfaces the helper has managed: never waved through as local bridges."""
        self.home_probe: str | None = None
        self.lan: IPv4Network | None = None
        """The local network open with the path (``allow_lan``); None: none."""
        self.lan_wanted: Callable[[str, IPv4Interface], bool] | None = None
        """The user's per-network choice (the helper sets it): is the local network of
        this link (interface, address/prefix) wanted without the profile's allow_lan?"""
        self._lan_refused: tuple[str, str] | None = None
        self._mutex = asyncio.Lock()
        """One decision at a time (the nft program's path awaits a subprocess)."""

    async def install(self) -> None:
        """The whole table, undecided: the first thing the helper does."""
        await self._run(render(self.policy, None, managed=self.managed))
        self.installed, self.path = True, None
        log.info("gate installed: only DHCP, registration, solicitation and IKE leave")

    async def decide(self, path: ProvenPath | None, home_probe: str | None = None) -> None:
        """Open exactly ``path`` (None: undecided, nothing normal leaves);
        ``home_probe``: undecided, probing that interface as the home link."""
        async with self._mutex:
            await self._decide(path, home_probe)

    async def _decide(self, path: ProvenPath | None, home_probe: str | None) -> None:
        if not self.installed:
            await self.install()
        lan = self._lan(path)
        try:
            await self._run(render_decision(self.policy, path, home_probe, lan))
        except GateError as exc:
            # Someone removed the tables (an nftables reload, `nft flush ruleset`):
            # install them again, with this decision, in one transaction.
            log.warning("gate tables were gone (%s): installing them again", exc)
            await self._run(render(self.policy, path, home_probe, self.managed, lan))
        self.path, self.home_probe, self.lan = path, home_probe, lan
        if path is None:
            log.info("gate shut: only DHCP, registration, solicitation and IKE leave; "
                     "DNS is refused until the network is decided")
        else:
            log.info("gate open on %s from %s (mode %s)%s", path.iface, path.link_address,
                     path.mode.value, f", and its local network {lan}" if lan else "")

    async def reconsider_lan(self) -> None:
        """The user's choice for this network changed: the same decision again (read
        under the lock: a decision the driver makes meanwhile is never undone)."""
        async with self._mutex:
            if self.installed:
                await self._decide(self.path, self.home_probe)

    def _lan(self, path: ProvenPath | None) -> IPv4Network | None:
        """The local network to open with ``path``: only in c and mc, only where the
        profile or the user asks, only a private on-link subnet (else a log line)."""
        if path is None or path.mode not in LAN_MODES or (
                not self.policy.allow_lan and self.lan_wanted is None):
            return None
        link = link_interface(path.iface, path.link_address)
        if link is None:
            if self.policy.allow_lan:
                log.warning("allow_lan: %s has no address %s any more: its local network "
                            "stays shut", path.iface, path.link_address)
            return None
        if not (self.policy.allow_lan or (
                self.lan_wanted is not None and self.lan_wanted(path.iface, link))):
            return None
        decision = lan_subnet(link, self.policy, path.mode)
        if decision.subnet is None:
            if self._lan_refused != (path.iface, str(link)):  # once per link, not per move
                log.warning("allow_lan: the local network of %s stays shut: %s", path.iface,
                            decision.refusal)
            self._lan_refused = (path.iface, str(link))
        return decision.subnet

    async def manage(self, iface: str) -> None:
        """A link the helper manages: judged by the decision even if its name looks
        like a local bridge's (before the decision about it is made)."""
        if iface in self.managed:
            return
        self.managed |= {iface}
        if self.installed:
            await self._run(render_local(self.managed))

    async def portal(self, script: str) -> None:
        """Refill the captive-portal chains (``app.net.portal_gate.render``)."""
        if not self.installed:
            raise GateError("the gate is not installed")
        await self._run(script)

    async def remove(self) -> None:
        await self._run(removal())
        self.installed, self.path = False, None

    async def _run(self, script: str) -> None:
        await run_nft(script, self.lib, self.nft)


def lan_answer(gate: TrafficGate | None) -> tuple[bool, str]:
    """``AllowLan``'s answer: (the local network is open, which one or why not)."""
    path = gate.path if gate is not None else None
    if gate is None or path is None or path.mode not in LAN_MODES:
        return False, "only in modes c and mc"
    if gate.lan is not None:  # the profile's allow_lan wins over the user's "off"
        return True, f"{gate.lan} on {path.iface}" + (
            " (the profile's allow_lan)" if gate.policy.allow_lan else "")
    link = link_interface(path.iface, path.link_address)
    if link is not None and (gate.policy.allow_lan or (
            gate.lan_wanted is not None and gate.lan_wanted(path.iface, link))):
        return False, lan_subnet(link, gate.policy, path.mode).refusal
    return False, "not allowed on this network"


async def run_nft(script: str, lib: _LibNftables | None, nft: str) -> None:
    if lib is not None:
        err = lib.run(script)
        if err is not None:
            raise GateError(f"nftables refused the gate table: {err}")
        return
    proc = await asyncio.create_subprocess_exec(
        nft, "-f", "-", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, stderr = await proc.communicate(script.encode())
    if proc.returncode != 0:
        raise GateError(f"nft refused the gate table: {stderr.decode().strip()}")


async def remove_table() -> None:
    """Remove a gate left by a helper that died (trustroamctl release-gate)."""
    await run_nft(removal(), _libnftables(), shutil.which("nft") or "nft")


async def shut_left_gate() -> bool:
    """A gate a stopped helper left: shut its proven path (True), if there is one.

    Run at every start and after every stop (the unit's ExecStopPost): a helper that
    died leaves its last decision in place, and that decision is only as good as
    the link it was made on.
    """
    try:
        await run_nft(f"flush chain inet {TABLE} proven\n", _libnftables(),
                      shutil.which("nft") or "nft")
    except GateError:
        return False  # no table: nothing was left
    with contextlib.suppress(GateError):  # what comes in by that path too (a table
        # from before the inbound half has no such chains)
        await run_nft(f"flush chain inet {TABLE} proven_in\nflush chain inet {TABLE} "
                      "proven_fwd\n", _libnftables(), shutil.which("nft") or "nft")
    with contextlib.suppress(GateError):  # undecided again: DNS is refused (a table from
        # before the refusal has no such chain)
        await run_nft(f"flush chain inet {TABLE} dns_refuse\n" + "".join(
            f"add rule inet {TABLE} dns_refuse {r}\n" for r in dns_refusal_rules(None)),
            _libnftables(), shutil.which("nft") or "nft")
    with contextlib.suppress(GateError):  # a captive-portal probe or sign-in left open
        # (a table from before them has no such chains)
        await run_nft("".join(f"flush chain inet {TABLE} {c}\n" for c in
                              ("portal", "portal_in", "portal_out")),
                      _libnftables(), shutil.which("nft") or "nft")
    return True
