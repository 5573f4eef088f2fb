"""The helper's state, independent of D-Bus: profiles, the running driver, history.

``app.service.dbus_api`` puts this on the bus; tests can use it directly.  One
profile is connected at a time; connecting another first puts the host back.
Connect, Disconnect and Reprobe run one at a time under one lock: overlapping
requests from several callers must never leave a driver or a link source that
nothing owns.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Protocol

from app.api import HistoryEntry, Policy, Snapshot
from app.config import ConfigError
from app.mn import profile as profiles
from app.mn.driver import MobileNodeDriver
from app.mn.profile import Profile
from app.net.gate import GatePolicy, TrafficGate, remove_table
from app.net.links import LinkSnapshot
from app.net.mn_routes import TUNNEL, Backend, MobileNodeRoutes
from app.net.nm_links import NmLinks, nm_running
from app.net.rtnl_links import RtnlLinks
from app.service import state as saved
from app.service.bus import MessageBus
from app.service.secrets import Peer, SecretSource
from app.service.state import HelperState, write_file
from app.vpn import credentials
from app.vpn.charon import DEFAULT_SOCKET, Charon, VpnConfigError
from app.vpn.profile import SECRET_KEY_PASSPHRASE, VpnConfig

log = logging.getLogger("trustroam.helper")
HISTORY = 1000
RESOLVE_TIMEOUT = 5.0
"""Seconds to resolve the VPN gateways' names at connect (all of them together)."""

Unresolved = Callable[[str, str], None]
"""(gateway as the profile names it, why) for a gateway the gate cannot pass."""


async def gate_policy(prof: Profile, *, on_unresolved: Unresolved | None = None,
                      timeout: float = RESOLVE_TIMEOUT) -> GatePolicy:
    """What the gate lets through for this profile while undecided: the direct probe
    and, with a ``[vpn]`` table, IKE/NAT-T/ESP to the gateways' IPv4 addresses."""
    gateways = await resolve_gateways(prof.vpn.gateways if prof.vpn else (),
                                      on_unresolved=on_unresolved, timeout=timeout)
    return GatePolicy(prof.home_agent, prof.home_address, TUNNEL, gateways=gateways)


async def resolve_gateways(names: Sequence[str], *, on_unresolved: Unresolved | None = None,
                           timeout: float = RESOLVE_TIMEOUT) -> tuple[IPv4Address, ...]:
    """The gateways' IPv4 addresses, in the profile's order, without duplicates.

    Names are resolved on the loop's resolver (never blocking it), all at once and
    within ``timeout``; one that does not resolve is reported to ``on_unresolved``
    (and the log) and left out: the others still work."""
    loop = asyncio.get_running_loop()

    def report(name: str, why: str) -> None:
        log.warning("VPN gateway %s left out of the gate: %s", name, why)
        if on_unresolved is not None:
            on_unresolved(name, why)

    async def one(name: str) -> list[IPv4Address]:
        try:
            literal = ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            if isinstance(literal, IPv4Address):
                return [literal]
            report(name, "not an IPv4 address (the gate passes IPv4 only)")
            return []
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(name, None, family=socket.AF_INET,
                                               type=socket.SOCK_DGRAM)
        except TimeoutError:
            report(name, f"its name did not resolve within {timeout:g} s")
            return []
        except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
            report(name, f"its name does not resolve ({_reason(exc)})")
            return []
        found = [IPv4Address(info[4][0]) for info in infos]
        if not found:
            report(name, "its name has no IPv4 address")
        return found

    results = await asyncio.gather(*(one(n) for n in names))
    return tuple(dict.fromkeys(a for addrs in results for a in addrs))


async def vpn_secret_names(vpn: VpnConfig | None) -> tuple[str, ...]:
    """The secrets a VPN profile's auth method needs; with a private key file that
    is encrypted, its passphrase too.  Every file the profile names is checked here,
    off the loop and before the helper's lock: a refused one (a FIFO, /dev/zero,
    /etc/shadow, a symlink...) is the caller's answer at once (``VpnConfigError``)."""
    if vpn is None:
        return ()
    names = vpn.secrets_needed
    try:
        encrypted = await asyncio.to_thread(credentials.check, vpn)
    except credentials.CredentialError as exc:
        raise VpnConfigError(exc.key, exc.message) from None
    if encrypted:
        names = (*names, SECRET_KEY_PASSPHRASE)
    return names


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class HelperError(Exception):
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
                 initial: HelperState | None = None) -> None:
        self.profiles_dir = profiles_dir
        self.extra_profiles = extra_profiles
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
        self._profiles_cache: tuple[tuple[object, ...], dict[str, Profile]] | None = None
        self.held_gate: HeldGate | None = None
        """The shut gate a user's Disconnect left (always-vpn or lockdown): lifted only
        by a SetPolicy (org.trustroam.configure) to auto or never-vpn, or by root."""
        self.driver: MobileNodeDriver | None = None
        self._charon: Charon | None = None
        """The running driver's VPN adapter: closed when the driver is."""
        self._link_source: _LinkSource | None = None
        self.snapshot_listeners: list[Callable[[Snapshot], None]] = []
        self.event_listeners: list[Callable[[HistoryEntry], None]] = []
        self._lock = asyncio.Lock()
        """Held by connect, disconnect and reprobe while they change the driver."""

    # -- profiles ------------------------------------------------------------------

    def load_profiles(self) -> dict[str, Profile]:
        """Every valid profile; invalid ones are logged with their file and key."""
        found: dict[str, Profile] = {}
        try:
            paths = sorted(self.profiles_dir.glob("*.toml")) if (
                self.profiles_dir and self.profiles_dir.is_dir()) else []
        except OSError as exc:
            log.error("profiles directory %s unreadable: %s", self.profiles_dir, exc)
            raise HelperError("the profiles directory cannot be read") from None
        # Parsed again only when a file changed: ListProfiles is open to every uid, and
        # a flood of it must cost a stat per file, not a parse (nor a log line) per file.
        key = tuple(_file_key(path) for path in [*paths, *self.extra_profiles])
        if self._profiles_cache is not None and self._profiles_cache[0] == key:
            return dict(self._profiles_cache[1])
        for path in [*paths, *self.extra_profiles]:
            try:
                p = load_profile(path)
            except ConfigError as exc:
                log.error("profile skipped: %s", exc)
                continue
            except (OSError, RecursionError) as exc:  # a symlink loop, a FIFO, EIO...
                log.error("profile skipped: %s: %s", path, getattr(exc, "strerror", exc))
                continue
            found[p.name] = p
        self._profiles_cache = (key, dict(found))
        return found

    def profile(self, name: str) -> Profile:
        found = self.load_profiles()
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            raise HelperError(f"no profile {_short(name)} (known: {known})")
        return found[name]

    def save_profile(self, text: str) -> str:
        """Validate ``text`` and store it as ``<name>.toml`` in the profiles directory.

        Written to a fresh temporary file in that directory (O_EXCL, never through a
        symlink), fsynced, then renamed over the target: a reader sees the old or
        the new profile, and a symlink planted at either name is not followed (a
        rename replaces the link itself).
        """
        if self.profiles_dir is None:
            raise HelperError("this helper has no profiles directory (--profiles-dir)")
        try:
            p = profiles.loads(text, "SaveProfile")
        except ConfigError as exc:
            raise HelperError(str(exc)) from None
        data = profiles.dumps(p).encode()
        if profiles.loads(data.decode(), "SaveProfile") != p:  # what reloads is what was sent
            raise HelperError("SaveProfile: the profile does not survive a round trip")
        try:
            write_file(self.profiles_dir, f"{p.name}.toml", data, 0o644)
        except OSError as exc:
            log.error("cannot store profile %s in %s: %s", p.name, self.profiles_dir, exc)
            raise HelperError(f"cannot store profile {p.name}: "
                              f"{exc.strerror or type(exc).__name__}") from None
        self._event("profile-saved", {"profile": p.name})
        return p.name

    # -- connection ------------------------------------------------------------------

    def locked_down(self) -> bool:
        """An administrator's block is in force: always-vpn, lockdown, or a gate a
        Disconnect held.  A gateless profile would lift it (see :meth:`connect`)."""
        return (self.policy is Policy.ALWAYS_VPN or self.lockdown
                or self.held_gate is not None)

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
        administrator's block needs ``administrator`` (org.trustroam.configure)."""
        prof = self.profile(name)
        if not prof.gate_enabled and self.locked_down() and not administrator:
            raise HelperError(f"profile {_short(prof.name)} has no gate: under always-vpn "
                              "or lockdown only an administrator may connect it")
        # Errors name the profile and the missing key, never a value.
        got = await self.secrets.fetch(prof.name, requester, await vpn_secret_names(prof.vpn))
        policy = await gate_policy(
            prof, on_unresolved=lambda gw, why: self._event(
                "vpn-gateway-unresolved", {"profile": prof.name, "gateway": gw, "reason": why}))
        async with self._lock:
            gate = TrafficGate(policy) if prof.gate_enabled else None
            if gate is not None:
                # The new profile's gate, shut, replaces the old one in one transaction:
                # no moment between the two drivers without a gate.
                await gate.install()
            elif self.held_gate is not None:
                await self.held_gate.remove()  # an administrator's gateless profile
            await self._disconnect(quiet=True, keep_gate=gate is not None)
            routes = MobileNodeRoutes(prof.home_address, prof.home_network, prof.home_agent,
                                      self.backend)
            # The driver starts it (and hands it its events); the helper closes it.
            self._charon = Charon(self.vici_socket) if prof.vpn is not None else None
            self.driver = MobileNodeDriver(prof, got.key.value, routes, gate,
                                           on_snapshot=self._on_snapshot,
                                           on_event=self._event_entry,
                                           charon=self._charon, vpn_secrets=got.extra,
                                           policy=self.policy)
            self._event("connect", {"profile": prof.name})
            self.held_gate = None  # replaced by this profile's gate (or lifted)
            self.last_profile = prof.name
            self._persist()
            await self.driver.start()
            self._link_source = await self._start_links(prof, self.driver.link_snapshot)

    async def disconnect(self, *, quiet: bool = False) -> None:
        """A user's Disconnect.  Under always-vpn or lockdown the gate stays
        installed and shut (its proven path flushed, as ``--shut-gate`` does): an
        ordinary user may not lift what an administrator set."""
        async with self._lock:
            hold = self.policy is Policy.ALWAYS_VPN or self.lockdown
            gate = self.driver.gate if self.driver is not None else None
            if hold and gate is not None:
                await gate.decide(None)  # shut before the routes go, and after
            await self._disconnect(quiet=quiet, keep_gate=hold and gate is not None)
            if hold and gate is not None:
                await gate.decide(None)
                self.held_gate = gate
                self._event("gate-held", {"reason": "lockdown" if self.lockdown
                                          else "always-vpn"})
            self.last_profile = None
            self._persist()

    async def stop(self) -> None:
        """The helper's clean stop (SIGTERM): the host goes back, except under
        lockdown, where the gate stays installed and shut."""
        async with self._lock:
            gate = self.driver.gate if self.driver is not None else None
            if self.lockdown and gate is not None:
                await gate.decide(None)  # shut before the routes go, and after
            await self._disconnect(quiet=True, keep_gate=self.lockdown)
            if self.lockdown and gate is not None:
                await gate.decide(None)

    async def _disconnect(self, *, quiet: bool, keep_gate: bool = False) -> None:
        if self._link_source is not None:
            source, self._link_source = self._link_source, None
            await source.close()
        if self.driver is not None:
            driver, self.driver = self.driver, None
            await driver.stop(keep_gate=keep_gate)
            driver.routes.close()
            self._event("disconnect", {"profile": driver.profile.name})
        elif not quiet:
            raise HelperError("not connected")
        if self._charon is not None:
            # After the driver's stop, which terminates the tunnel through it; also one
            # whose driver never came to be.
            charon, self._charon = self._charon, None
            await charon.close()
        self._on_snapshot(Snapshot())  # _on_snapshot adds the policy

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
        """After a SetPolicy (configure) to auto or never-vpn: lift the shut gate a
        user's Disconnect left."""
        async with self._lock:
            if (self.held_gate is None or self.driver is not None
                    or self.policy is Policy.ALWAYS_VPN):
                return
            gate, self.held_gate = self.held_gate, None
            await gate.remove()
            self._event("gate-released", {"policy": self.policy.value})

    def _persist(self) -> None:
        if self.state_dir is None:
            return
        try:
            saved.save(self.state_dir, HelperState(self.policy, self.last_profile))
        except OSError as exc:
            log.error("cannot keep the helper's state in %s: %s", self.state_dir,
                      exc.strerror or exc)

    async def _start_links(self, prof: Profile, sink: Callable[[LinkSnapshot], None]
                           ) -> _LinkSource:
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
        await source.start()
        return source

    # -- publishing ------------------------------------------------------------------

    def _on_snapshot(self, snap: Snapshot) -> None:
        self.snapshot = replace(snap, policy=self.policy)
        for f in self.snapshot_listeners:
            f(self.snapshot)

    def _event(self, kind: str, details: dict[str, str]) -> None:
        self._event_entry(HistoryEntry(time.time(), kind, details))

    def _event_entry(self, entry: HistoryEntry) -> None:
        self.history.append(entry)
        log.info("%s %s", entry.kind, " ".join(f"{k}={v}" for k, v in entry.details.items()))
        for f in self.event_listeners:
            f(entry)


def _short(text: str, limit: int = 64) -> str:
    """``repr`` of a caller's string, cut short: messages stay one short line."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _file_key(path: Path) -> object:
    """What changes when a profile file does (its stat, or the error reading it)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return (str(path), exc.errno)
    return (str(path), st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)


def load_profile(path: Path) -> Profile:
    """``profiles.load``: read as every root-owned file is (``app.config``'s
    ``read_regular_file``: a FIFO or device in the profiles directory is refused at
    once, never blocking the event loop)."""
    return profiles.load(path)

