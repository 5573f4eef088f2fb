"""Captive portals in the helper: when to probe, what is reported, the sign-in hole.

The helper calls :meth:`PortalWatch.seen` with every status it publishes.  When
the VPN cannot come up on an untrusted network (the state is untrusted, no mode,
with an error: ``the VPN did not come up``, ``the VPN went down``...), one probe
runs per link and address (:mod:`app.net.portal_probe`), through the gate's
``portal`` chain opened for the probe alone; a portal found is reported as the
``CaptivePortal`` property (its sign-in address) until the link, its address or
the decision changes.

:meth:`PortalWatch.open_signin` opens the sign-in hole for one process (its own
cgroup, :mod:`app.net.signin_cgroup`): HTTP, HTTPS and DNS to the link's
resolvers, out of the link only, for at most ``signin_seconds`` in all per link
and address (sign-ins opened again on the same network share that budget: else
any process of the user could keep a way out in clear open forever); it closes when
asked, when the time is up, when the VPN comes up (mode mc) or the state leaves
untrusted, and when the helper disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from app.api import Mode, Snapshot, State
from app.errors import UserFacingError
from app.net import portal_gate, signin_cgroup
from app.net.portal_probe import (
    PORTAL,
    UNKNOWN,
    ProbeTarget,
    Verdict,
    link_resolvers,
    probe,
)

log = logging.getLogger("trustroam.portal")
DEFAULT_SIGNIN_SECONDS = 300.0
"""Issue 19: at most 5 minutes by default."""
MAX_SIGNIN_SECONDS = 3600.0
MAX_BUDGETS = 64
"""Networks whose used sign-in time is remembered (the oldest forgotten first)."""


class SignInError(UserFacingError):
    """A sign-in cannot be opened; the message is for the user."""


class PortalGate(Protocol):
    """What the watch needs of the gate (``app.net.gate.TrafficGate.portal``)."""

    async def portal(self, script: str) -> None: ...


def probe_key(snap: Snapshot) -> tuple[str, str] | None:
    """The link and address to probe on, if this status is a VPN that could not come
    up on an untrusted network; None otherwise."""
    if (snap.state is State.UNTRUSTED and snap.mode is Mode.NONE and snap.error
            and snap.interface and snap.care_of_address):
        return (snap.interface, snap.care_of_address)
    return None


def keeps_portal(snap: Snapshot, key: tuple[str, str]) -> bool:
    """A reported portal (or an open hole) stays while the link, its address and the
    untrusted, VPN-less state do."""
    return (snap.state is State.UNTRUSTED and snap.mode is not Mode.VPN
            and (snap.interface, snap.care_of_address) == key)


@dataclass
class _Hole:
    key: tuple[str, str]
    cgroup: signin_cgroup.SignInCgroup
    timer: asyncio.TimerHandle
    opened: float
    """When it opened (the watch's clock): its time is charged to ``key`` on close."""
    pidfd: int | None
    """The sign-in process's pidfd: readable when it exits (the hole closes then)."""
    gate: PortalGate
    """The gate it was opened in: closed there, even once the helper let go of it
    (a Disconnect under always-vpn keeps that gate, shut)."""


class PortalWatch:
    def __init__(self, target: ProbeTarget | None, *,
                 signin_seconds: float = DEFAULT_SIGNIN_SECONDS,
                 changed: Callable[[], None] = lambda: None,
                 event: Callable[[str, dict[str, str]], None] = lambda k, d: None,
                 run_probe: Callable[[ProbeTarget, str], Awaitable[Verdict]] | None = None,
                 clock: Callable[[], float] | None = None,
                 link_dns: Callable[[str], Awaitable[list[IPv4Address] | None]] | None = None
                 ) -> None:
        self.target = target
        """The probe URL; None: never probe (``--portal-probe-url ""``)."""
        self.signin_seconds = signin_seconds
        self.changed = changed
        """Called when :attr:`address` changes (the helper publishes again)."""
        self.event = event
        self.run_probe = run_probe or self._probe_link
        self.link_dns = link_dns
        """A link's own resolvers (systemd-resolved's, app.net.link_dns); None, or an
        answer of None: the resolv.conf files."""
        self.resolvers: dict[str, tuple[IPv4Address, ...]] = {}
        """The resolvers last found per link: the probe asks them, the hole opens them."""
        self.clock = clock
        """Seconds, monotonic (default: the event loop's clock)."""
        self.used: dict[tuple[str, str], float] = {}
        """Sign-in seconds already spent per link and address."""
        self.address = ""
        """The portal's sign-in address on the current link; "" for none."""
        self.probed: tuple[str, str] | None = None
        """The link and address probed last (one probe each)."""
        self.at: tuple[str, str] | None = None
        """The link and address :attr:`address` was found on."""
        self.gate: PortalGate | None = None
        self.home_address: IPv4Address | None = None
        self.hole: _Hole | None = None
        self._probing: tuple[str, int, PortalGate] | None = None
        """A probe running: its link, port and the gate its rules are in."""
        self._writing = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        """Running probes and closes (the loop keeps only weak references)."""

    def seen(self, snap: Snapshot, gate: PortalGate | None) -> None:
        """Every published status (synchronous: the work runs in a task)."""
        self.gate = gate
        with contextlib.suppress(ValueError):
            self.home_address = IPv4Address(snap.home_address)
        if self.at is not None and not keeps_portal(snap, self.at):
            self.at = None
            if self.address:
                self.address = ""
                self.changed()
        if self.probed is not None and not keeps_portal(snap, self.probed):
            self.probed = None
        if self.hole is not None and not keeps_portal(snap, self.hole.key):
            self._spawn(self.close_signin("the VPN came up" if snap.mode is Mode.VPN
                                          else "the network changed"))
        want = probe_key(snap)
        if want is not None and self.probed != want and gate is not None \
                and self.target is not None:
            self.probed = want
            self._spawn(self._probe(want, self.target))

    def _spawn(self, coro: Awaitable[object]) -> None:
        async def run() -> None:
            try:
                await coro
            except (UserFacingError, OSError) as exc:
                log.warning("captive portal: %s", exc)
        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self, key: tuple[str, str], target: ProbeTarget) -> None:
        iface, gate = key[0], self.gate
        if gate is None:
            return
        self.event("portal-probe", {"interface": iface, "url": target.url})
        await self._find_resolvers(iface)
        self._probing = (iface, target.port, gate)
        try:
            await self._write(gate)
            try:
                verdict = await self.run_probe(target, iface)
            except Exception as exc:  # never lost in a task: reported, and probed again
                log.warning("captive portal probe on %s failed: %s", iface, exc)
                verdict = Verdict(UNKNOWN, "", f"probe failed: {exc}")
                self.probed = None
        finally:
            self._probing = None
            await self._write(gate)
        self.event("portal-" + verdict.kind, {"interface": iface, "portal": verdict.portal_url,
                                              "detail": verdict.detail})
        if self.probed != key:
            return  # the link changed while probing
        new = verdict.portal_url if verdict.kind == PORTAL else ""
        self.at = key if new else None
        if new != self.address:
            self.address = new
            self.changed()

    async def _find_resolvers(self, iface: str) -> tuple[IPv4Address, ...]:
        got = None
        if self.link_dns is not None:
            try:
                got = await self.link_dns(iface)
            except Exception as exc:  # the files then: never a lost probe or sign-in
                log.warning("captive portal: the resolvers of %s: %s", iface, exc)
        found = tuple(got) if got else tuple(link_resolvers())
        self.resolvers = {iface: found}  # one link at a time: no table to grow
        return found

    async def _probe_link(self, target: ProbeTarget, iface: str) -> Verdict:
        return await probe(target, iface, resolvers=list(self.resolvers.get(iface, ())))

    async def _write(self, gate: PortalGate) -> None:
        """``gate``'s portal chains: what is open in it now (a running probe, a hole).
        One write at a time, rendered once the last is done: two nft runs could
        commit in either order and leave a stale hole in the table."""
        async with self._writing:
            await self._write_now(gate)

    async def _write_now(self, gate: PortalGate) -> None:
        if self.home_address is None:
            return
        probe = hole = None
        if self._probing is not None and self._probing[2] is gate:
            probe = self._probing[:2]
        if self.hole is not None and self.hole.gate is gate:
            hole = portal_gate.SignInHole(self.hole.key[0], self.hole.cgroup.nft_path,
                                          self.hole.cgroup.level,
                                          self.resolvers.get(self.hole.key[0], ()))
        await gate.portal(portal_gate.render(self.home_address, probe, hole))

    async def open_signin(self, pid: int, uid: int) -> tuple[str, float]:
        """Open the hole for process ``pid`` of the caller's ``uid``: (the portal's
        address, seconds open)."""
        at = self.at
        if not self.address or at is None:
            raise SignInError("no captive portal was found on this network")
        gate = self.gate
        if gate is None:
            raise SignInError("the gate is not installed: nothing to open")
        if self.hole is not None:
            await self.close_signin("another sign-in replaced it")
        left = self.signin_seconds - self.used.get(at, 0.0)
        if left <= 0:
            raise SignInError(f"the {self.signin_seconds:g} s of sign-in on this network "
                              "are used up (a new address or network gets its own)")
        await self._find_resolvers(at[0])
        cg = signin_cgroup.create(pid, uid)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(left, lambda: self._spawn(self.close_signin("the time is up")))
        self.hole = _Hole(at, cg, timer, self._now(), self._watch_exit(pid), gate)
        try:
            await self._write(gate)
        except BaseException:
            timer.cancel()
            self._unwatch(self.hole)
            self.hole = None
            signin_cgroup.remove(cg)
            raise
        self.event("signin-open", {"interface": at[0], "pid": str(pid),
                                   "seconds": f"{left:g}"})
        return self.address, left

    def _watch_exit(self, pid: int) -> int | None:
        """A pidfd for ``pid`` whose readability closes the hole: a crashed window
        does not keep it open until the time is up."""
        try:
            fd = os.pidfd_open(pid)
        except OSError as exc:  # gone already, or a kernel without pidfds: the timer
            log.info("cannot watch the sign-in process %d: %s", pid, exc.strerror or exc)
            return None

        def exited() -> None:
            asyncio.get_running_loop().remove_reader(fd)
            self._spawn(self.close_signin("the sign-in window exited"))
        asyncio.get_running_loop().add_reader(fd, exited)
        return fd

    @staticmethod
    def _unwatch(hole: _Hole | None) -> None:
        if hole is not None and hole.pidfd is not None:
            asyncio.get_running_loop().remove_reader(hole.pidfd)
            os.close(hole.pidfd)

    def _now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    def _charge(self, hole: _Hole) -> None:
        spent = self.used.pop(hole.key, 0.0) + max(0.0, self._now() - hole.opened)
        self.used[hole.key] = spent  # (re)inserted last: the newest is kept longest
        while len(self.used) > MAX_BUDGETS:
            del self.used[next(iter(self.used))]

    async def close_signin(self, why: str) -> bool:
        """Close the hole (True if one was open)."""
        hole, self.hole = self.hole, None
        if hole is None:
            return False
        hole.timer.cancel()
        self._unwatch(hole)
        self._charge(hole)
        try:
            await self._write(hole.gate)
        finally:
            signin_cgroup.remove(hole.cgroup)
            # A new VPN failure on this link probes again (the portal may be gone).
            self.probed = None
            self.event("signin-closed", {"reason": why})
        return True
