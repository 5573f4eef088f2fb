"""The helper's state, independent of D-Bus: profiles, the running driver, history.

``app.service.dbus_api`` puts this on the bus; tests can use it directly.  One
profile is connected at a time; connecting another first puts the host back.
Connect, Disconnect and Reprobe run one at a time under one lock: overlapping
requests from several callers must never leave a driver or a link source that
nothing owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Protocol

from app.api import HistoryEntry, Policy, Snapshot
from app.config import ConfigError
from app.errors import UserFacingError
from app.mn.driver import MobileNodeDriver
from app.mn.profile import Profile
from app.net import link_dns, resolver
from app.net.gate import TrafficGate, lan_answer, remove_table
from app.net.gate_lan import link_interface
from app.net.gate_rules import LAN_MODES
from app.net.links import LinkSnapshot
from app.net.mn_routes import TUNNEL, Backend, MobileNodeRoutes
from app.net.nm_links import NmLinks, nm_running
from app.net.portal_probe import DEFAULT_TARGET, ProbeTarget
from app.net.rtnl_links import RtnlLinks
from app.service import state as saved
from app.service.bus import MessageBus
from app.service.gateway_cache import GatewayCache
from app.service.gateway_memory import GatewayMemory
from app.service.known_networks_store import KnownNetworksStore
from app.service.lan import LanChoices
from app.service.portal import DEFAULT_SIGNIN_SECONDS, PortalWatch
from app.service.profiles import ProfileDirectory, ProfileError, gate_policy, vpn_secret_names
from app.service.secrets import Peer, SecretSource
from app.service.state import HelperState
from app.vpn.charon import DEFAULT_SOCKET, Charon
from app.vpn.events import VpnEvent

log = logging.getLogger("trustroam.helper")
HISTORY = 1000


class HelperError(UserFacingError):
    """A request the helper cannot carry out; the message is for the user."""


class HeldGate(Protocol):
    async def remove(self) -> None: ...


class LeftGate:
    """A gate an earlier helper left (shut at start): held like a Disconnect's."""

    async def remove(self) -> None:
        await remove_table()


class _LinkSource(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class Helper:
    def __init__(self, *, profiles_dir: Path | None, extra_profiles: list[Path],
                 secrets: SecretSource, backend: Backend, links: str = "auto",
                 bus: MessageBus | None = None,
                 vici_socket: str | os.PathLike[str] = DEFAULT_SOCKET,
                 state_dir: Path | None = None, lockdown: bool = False,
                 initial: HelperState | None = None,
                 portal_probe: ProbeTarget | None = DEFAULT_TARGET,
                 signin_seconds: float = DEFAULT_SIGNIN_SECONDS) -> None:
        self.profiles = ProfileDirectory(profiles_dir, extra_profiles)
        self.secrets = secrets
        self.backend = backend
        self.links = links
        self.bus = bus
        self.vici_socket = vici_socket
        """charon's VICI socket, for profiles with a ``[vpn]`` table."""
        self.snapshot = Snapshot()
        self.history: deque[HistoryEntry] = deque(maxlen=HISTORY)
        self.state_dir = state_dir
        """Where the policy and the last profile are kept (None: nowhere)."""
        self.lockdown = lockdown
        """An administrator's kill switch: a user's Disconnect leaves the gate shut."""
        self.policy = initial.policy if initial is not None else Policy.AUTO
        self.last_profile = initial.profile if initial is not None else None
        self.pending_start: str | None = None
        """The profile the start could not connect for want of a secret (the secrets
        file has none): connected with the first user agent that registers."""
        self.held_gate: HeldGate | None = None
        """The shut gate a user's Disconnect left (always-vpn or lockdown): lifted only
        by ReleaseGate (org.trustroam.configure), by a user's SetPolicy to auto or
        never-vpn unless under lockdown, or by root with the helper stopped."""
        self.gate: TrafficGate | None = None
        """The connected profile's gate: installed first, removed last (unless kept)."""
        self.lan = LanChoices(state_dir)
        """The user's per-network "Allow local network" choices (app.service.lan)."""
        self.gateway_cache = GatewayCache(state_dir)
        """The VPN gateways' last addresses, for when their names do not resolve."""
        self.gateway_memory = GatewayMemory(state_dir)
        """The gateway that worked last, per profile and network (app.service.gateway_memory)."""
        self.known_networks = KnownNetworksStore(state_dir)
        """Networks judged untrusted (RFC 5266 5: app.mn.known_networks)."""
        self.driver: MobileNodeDriver | None = None
        self._connection: contextlib.AsyncExitStack | None = None
        """What a connect started after the gate (routes, charon, the driver, the link
        source): closed by :meth:`_disconnect`, once, in reverse order."""
        self.snapshot_listeners: list[Callable[[Snapshot], None]] = []
        self.event_listeners: list[Callable[[HistoryEntry], None]] = []
        self._lock = asyncio.Lock()
        """Held by connect, disconnect and reprobe while they change the driver."""
        self._published = Snapshot()
        """The driver's last status, before the helper's own fields are added."""
        self.portal = PortalWatch(portal_probe,
                                  signin_seconds=signin_seconds,
                                  changed=lambda: self._on_snapshot(self._published),
                                  event=self._event,
                                  link_dns=self._link_dns if bus is not None else None)
        """Captive portals: probed when the VPN cannot come up (app.service.portal)."""

    async def _link_dns(self, iface: str) -> list[IPv4Address] | None:
        return await link_dns.link_dns(self.bus, iface) if self.bus is not None else None

    # -- profiles ------------------------------------------------------------------

    @property
    def profiles_dir(self) -> Path | None:
        return self.profiles.directory

    @profiles_dir.setter
    def profiles_dir(self, directory: Path | None) -> None:
        self.profiles.directory = directory

    def load_profiles(self) -> dict[str, Profile]:
        """Every valid profile; invalid ones are logged with their file and key."""
        try:
            return self.profiles.load()
        except ProfileError as exc:
            raise HelperError(str(exc)) from None

    def profile(self, name: str) -> Profile:
        found = self.load_profiles()
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            raise HelperError(f"no profile {_short(name)} (known: {known})")
        return found[name]

    def save_profile(self, text: str) -> str:
        """Validate ``text`` and store it as ``<name>.toml`` in the profiles directory
        (atomically, never through a symlink: ``ProfileDirectory.save``)."""
        try:
            name = self.profiles.save(text)
        except (ConfigError, ProfileError) as exc:
            raise HelperError(str(exc)) from None
        self._event("profile-saved", {"profile": name})
        return name

    def profile_text(self, name: str) -> str:
        """The stored profile as TOML (trustroamctl edits it and saves it again)."""
        try:
            return self.profiles.text(name)
        except ProfileError as exc:
            raise HelperError(str(exc)) from None

    def delete_profile(self, name: str) -> None:
        """Remove a stored profile; not the one in use (disconnect it first)."""
        if name and name == self.snapshot.profile:
            raise HelperError(f"profile {_short(name)} is connected: disconnect it first")
        try:
            self.profiles.delete(name)
        except ProfileError as exc:
            raise HelperError(str(exc)) from None
        self._event("profile-deleted", {"profile": name})

    # -- connection ------------------------------------------------------------------

    def locked_down(self) -> bool:
        """An administrator's block is in force: lockdown.  Always-vpn is the user's
        choice (SetPolicy is org.trustroam.connect; SetPolicy auto lifts its held
        gate), so a user may replace its held gate with any profile's, a gateless
        one too; under lockdown a gateless profile needs configure (:meth:`connect`)."""
        return self.lockdown

    def lifts_block(self, name: str) -> bool:
        """Connecting ``name`` would lift an administrator's block: a profile without
        a gate (``[features] gate = false``) while :meth:`locked_down`."""
        return self.locked_down() and not self.profile(name).gate_enabled

    async def connect(self, name: str, requester: Peer | None = None, *,
                      administrator: bool = False) -> None:
        """Connect profile ``name`` with the secrets of ``requester``'s secret agent (or
        the secrets file): the MN-HA key and, with a ``[vpn]`` table, what its auth
        method needs, in one request.  Secrets and gateway names are fetched before
        the lock: a slow agent or resolver holds only its own user's request, bounded
        by the agent and resolver timeouts.  A gateless profile under an
        administrator's block needs ``administrator`` (org.trustroam.configure).

        The helper owns what it creates: the gate (installed first), the routes,
        charon, the driver and the link source, each started here and handed to the
        driver started; :meth:`_disconnect` closes them once, in reverse order."""
        prof = self.profile(name)
        if not prof.gate_enabled and self.locked_down() and not administrator:
            raise HelperError(f"profile {_short(prof.name)} has no gate: under lockdown "
                              "only an administrator may connect it")
        # Errors name the profile and the missing key, never a value.
        got = await self.secrets.fetch(prof.name, requester, await vpn_secret_names(prof.vpn))
        policy = await gate_policy(
            prof, cache=self.gateway_cache, on_unresolved=lambda gw, why: self._event(
                "vpn-gateway-unresolved", {"profile": prof.name, "gateway": gw, "reason": why}))
        async with self._lock:
            gate = TrafficGate(policy) if prof.gate_enabled else None
            if gate is not None:
                gate.lan_wanted = self.lan.wanted
                # The new profile's gate, shut, replaces the old one in one transaction:
                # no moment between the two drivers without a gate.
                await gate.install()
            elif self.held_gate is not None:
                await self.held_gate.remove()  # an administrator's gateless profile
            handed_over = self.driver is not None
            await self._disconnect(quiet=True, keep_gate=gate is not None)
            self.gate = gate
            if gate is not None and handed_over:
                # Once more, whole: the old driver's deregistration may have opened its
                # home probe in the table it no longer owns.
                await gate.install()
            self._event("connect", {"profile": prof.name})
            self.held_gate = None  # replaced by this profile's gate (or lifted)
            self.pending_start = None  # a user's choice wins over the start's
            self.last_profile = prof.name
            self._persist()
            # Each is owned from its creation: one whose start fails half-way (or never
            # comes) is still closed by the next Disconnect or connect.
            self._connection = stack = contextlib.AsyncExitStack()
            routes = MobileNodeRoutes(prof.home_address, prof.home_network, prof.home_agent,
                                      self.backend,
                                      dns=resolver.for_profile(prof.dns, TUNNEL, self.bus,
                                                                record=self.state_dir))
            stack.push_async_callback(_close_routes, routes)
            charon = None
            if prof.vpn is not None:
                charon = Charon(self.vici_socket, self._vpn_event)
                stack.push_async_callback(charon.close)
            self.driver = MobileNodeDriver(prof, got.key.value, routes, gate,
                                           on_snapshot=self._on_snapshot,
                                           on_event=self._event_entry,
                                           charon=charon, vpn_secrets=got.extra,
                                           policy=self.policy,
                                           known_networks=self.known_networks.load(),
                                           remember_network=self.known_networks.remember,
                                           gateways_remembered=self.gateway_memory.get(
                                               prof.name),
                                           remember_gateway=functools.partial(
                                               self.gateway_memory.put, prof.name),
                                           gateway_addresses=self.gateway_cache.get)
            stack.push_async_callback(self.driver.stop)
            await routes.start()
            if charon is not None and gate is not None:
                for gw in policy.gateways:  # IKE to the gateways by the link, not a tunnel
                    await routes.vpn_gateway(gw)
            if charon is not None:
                await charon.start()  # its events reach the driver's queue from here on
            await self.driver.start()
            await self._start_links(prof, self.driver.link_snapshot, stack)

    async def disconnect(self, *, quiet: bool = False) -> None:
        """A user's Disconnect.  Under always-vpn or lockdown the gate stays
        installed and shut (its proven path flushed, as ``--shut-gate`` does): an
        ordinary user may not lift what an administrator set."""
        async with self._lock:
            hold = self.policy is Policy.ALWAYS_VPN or self.lockdown
            gate = self.gate
            if not hold and self.driver is None and self.held_gate is not None:
                # A start whose connect failed left its gate shut: the user's
                # Disconnect puts the host back (nothing else is connected).
                held, self.held_gate = self.held_gate, None
                await held.remove()
                self._event("gate-released", {"by": "disconnect"})
                self.last_profile = self.pending_start = None
                self._persist()
                return
            if hold and gate is not None:
                await gate.decide(None)  # shut before the routes go, and after
            await self._disconnect(quiet=quiet, keep_gate=hold and gate is not None)
            if hold and gate is not None:
                await gate.decide(None)
                self.held_gate = gate
                self._event("gate-held", {"reason": "lockdown" if self.lockdown
                                          else "always-vpn"})
            self.last_profile = None
            self.pending_start = None
            self._persist()

    async def stop(self) -> None:
        """The helper's clean stop (SIGTERM): the host goes back, except under
        lockdown, where the gate stays installed and shut."""
        async with self._lock:
            gate = self.gate
            if self.lockdown and gate is not None:
                await gate.decide(None)  # shut before the routes go, and after
            await self._disconnect(quiet=True, keep_gate=self.lockdown)
            if self.lockdown and gate is not None:
                await gate.decide(None)

    async def _disconnect(self, *, quiet: bool, keep_gate: bool = False) -> None:
        """Close what the last connect started, in reverse order (the link source,
        the driver, which deregisters, charon, the routes), then the gate, unless
        ``keep_gate``: held shut, or already replaced by the next profile's."""
        connection, self._connection = self._connection, None
        driver, self.driver = self.driver, None
        gate, self.gate = self.gate, None
        try:
            if connection is not None:
                await connection.aclose()
        finally:
            if gate is not None and not keep_gate:
                await gate.remove()
        if driver is not None:
            self._event("disconnect", {"profile": driver.profile.name})
        elif not quiet:
            raise HelperError("not connected")
        self._on_snapshot(Snapshot())  # _on_snapshot adds the policy

    def _vpn_event(self, event: VpnEvent) -> None:
        """charon's events (on the loop's thread), to the driver it was started for."""
        if self.driver is not None:
            self.driver.vpn_event(event)

    async def reprobe(self, *, quiet: bool = False) -> None:
        async with self._lock:
            if self.driver is None:
                if quiet:
                    return
                raise HelperError("not connected")
            self.driver.reprobe()

    def set_policy(self, value: str) -> None:
        try:
            policy = Policy(value)
        except ValueError:
            allowed = ", ".join(p.value for p in Policy)
            raise HelperError(f"policy must be one of {allowed}, got {_short(value)}"
                              ) from None
        self.policy = policy
        if self.driver is not None:
            self.driver.set_policy(policy)  # at once, not at the next link change
        self._event("policy", {"policy": policy.value})
        self._persist()
        self._on_snapshot(self.snapshot)

    async def release_held_gate(self) -> None:
        """After a SetPolicy (a user's) to auto or never-vpn: lift the shut gate a
        user's Disconnect under always-vpn left.  Never lockdown's: that is the
        administrator's (:meth:`release_gate`)."""
        async with self._lock:
            if (self.held_gate is None or self.driver is not None or self.lockdown
                    or self.policy is Policy.ALWAYS_VPN):
                return
            gate, self.held_gate = self.held_gate, None
            await gate.remove()
            self._event("gate-released", {"policy": self.policy.value})

    async def release_gate(self) -> None:
        """ReleaseGate (org.trustroam.configure): the administrator lifts the shut
        gate that lockdown, or a Disconnect under always-vpn, holds."""
        async with self._lock:
            if self.driver is not None:
                raise HelperError("a profile is connected: its gate is its own "
                                  "(Disconnect first)")
            if self.held_gate is None:
                raise HelperError("no gate is held")
            gate, self.held_gate = self.held_gate, None
            await gate.remove()
            self._event("gate-released", {"by": "administrator"})

    async def connect_pending(self, requester: Peer) -> None:
        """The start's connect that lacked a secret, with the first registered
        agent's secrets (its user is allowed org.trustroam.connect): see
        ``pending_start``.  Once: a later failure waits for a user's Connect."""
        name, self.pending_start = self.pending_start, None
        if name is None or self.driver is not None:
            return
        self._event("autoconnect", {"profile": name, "secrets": "agent"})
        await self.connect(name, requester)

    def allow_lan(self) -> tuple[bool, str]:
        """Is the local network open now, and why (or why not)."""
        return lan_answer(self.gate)

    async def set_allow_lan(self, allow: bool) -> tuple[bool, str]:
        """The user's choice for the current network (kept across restarts)."""
        gate = self.gate
        path = gate.path if gate is not None else None
        if gate is None or path is None or path.mode not in LAN_MODES:
            raise HelperError("the local network is a choice in modes c and mc only")
        link = link_interface(path.iface, path.link_address)
        if link is None:
            raise HelperError(f"{path.iface} no longer has {path.link_address}")
        try:
            ident = self.lan.choose(path.iface, link, allow)
        except ValueError as exc:
            raise HelperError(str(exc)) from None
        await gate.reconsider_lan()
        self._event("allow-lan", {"network": ident, "allow": str(allow).lower()})
        return lan_answer(gate)

    def _persist(self) -> None:
        if self.state_dir is None:
            return
        try:
            saved.save(self.state_dir, HelperState(self.policy, self.last_profile))
        except OSError as exc:
            log.error("cannot keep the helper's state in %s: %s", self.state_dir,
                      exc.strerror or exc)

    async def _start_links(self, prof: Profile, sink: Callable[[LinkSnapshot], None],
                           stack: contextlib.AsyncExitStack) -> None:
        use_nm = self.links == "nm"
        if self.links == "auto" and self.bus is not None:
            use_nm = await nm_running(self.bus)
        source: _LinkSource
        if use_nm:
            if self.bus is None:
                raise HelperError("NetworkManager link events need the system bus")
            source = NmLinks(self.bus, prof.interface, sink)
            self._event("links", {"source": "NetworkManager"})
        else:
            source = RtnlLinks(prof.interface, sink, ignore_address=str(prof.home_address))
            self._event("links", {"source": "rtnetlink"})
        stack.push_async_callback(source.close)
        await source.start()

    # -- publishing ------------------------------------------------------------------

    def _on_snapshot(self, snap: Snapshot) -> None:
        self._published = snap
        self.portal.seen(snap, self.gate)
        self.snapshot = replace(snap, policy=self.policy, captive_portal=self.portal.address)
        for f in self.snapshot_listeners:
            f(self.snapshot)

    def _event(self, kind: str, details: dict[str, str]) -> None:
        self._event_entry(HistoryEntry(time.time(), kind, details))

    def _event_entry(self, entry: HistoryEntry) -> None:
        self.history.append(entry)
        log.info("%s %s", entry.kind, " ".join(f"{k}={v}" for k, v in entry.details.items()))
        for f in self.event_listeners:
            f(entry)


async def _close_routes(routes: MobileNodeRoutes) -> None:
    """Everything the routes put in the kernel, then their sockets."""
    try:
        await routes.clear()
    finally:
        routes.close()


def _short(text: str, limit: int = 64) -> str:
    """``repr`` of a caller's string, cut short: messages stay one short line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")
