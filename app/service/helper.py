"""The helper's state, independent of D-Bus: profiles, the running driver, history.

``app.service.dbus_api`` puts this on the bus; tests can use it directly.  One
profile is connected at a time; connecting another first puts the host back.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from dbus_next.aio.message_bus import MessageBus

from app.api import HistoryEntry, Policy, Snapshot
from app.config import ConfigError
from app.mn import profile as profiles
from app.mn.driver import MobileNodeDriver
from app.mn.profile import Profile
from app.net.gate import GatePolicy, TrafficGate
from app.net.links import LinkSnapshot
from app.net.mn_routes import TUNNEL, Backend, MobileNodeRoutes
from app.net.nm_links import NmLinks, nm_running
from app.net.rtnl_links import RtnlLinks
from app.service.secrets import SecretSource

log = logging.getLogger("trustroam.helper")
HISTORY = 1000


def gate_policy(prof: Profile) -> GatePolicy:
    """What the gate lets through for this profile while undecided."""
    return GatePolicy(prof.home_agent, prof.home_address, TUNNEL)


class HelperError(Exception):
    """A request the helper cannot carry out; the message is for the user."""


class _LinkSource(Protocol):
    async def start(self) -> None: ...
    async def close(self) -> None: ...


class Helper:
    def __init__(self, *, profiles_dir: Path | None, extra_profiles: list[Path],
                 secrets: SecretSource, backend: Backend, links: str = "auto",
                 bus: MessageBus | None = None) -> None:
        self.profiles_dir = profiles_dir
        self.extra_profiles = extra_profiles
        self.secrets = secrets
        self.backend = backend
        self.links = links
        self.bus = bus
        self.snapshot = Snapshot()
        self.history: deque[HistoryEntry] = deque(maxlen=HISTORY)
        self.policy = Policy.AUTO
        self.driver: MobileNodeDriver | None = None
        self._link_source: _LinkSource | None = None
        self.snapshot_listeners: list[Callable[[Snapshot], None]] = []
        self.event_listeners: list[Callable[[HistoryEntry], None]] = []

    # -- profiles ------------------------------------------------------------------

    def load_profiles(self) -> dict[str, Profile]:
        """Every valid profile; invalid ones are logged with their file and key."""
        found: dict[str, Profile] = {}
        paths = sorted(self.profiles_dir.glob("*.toml")) if (
            self.profiles_dir and self.profiles_dir.is_dir()) else []
        for path in [*paths, *self.extra_profiles]:
            try:
                p = profiles.load(path)
            except ConfigError as exc:
                log.error("profile skipped: %s", exc)
                continue
            found[p.name] = p
        return found

    def profile(self, name: str) -> Profile:
        found = self.load_profiles()
        if name not in found:
            known = ", ".join(sorted(found)) or "none"
            raise HelperError(f"no profile {name!r} (known: {known})")
        return found[name]

    def save_profile(self, text: str) -> str:
        if self.profiles_dir is None:
            raise HelperError("this helper has no profiles directory (--profiles-dir)")
        try:
            p = profiles.loads(text, "SaveProfile")
        except ConfigError as exc:
            raise HelperError(str(exc)) from None
        self.profiles_dir.mkdir(parents=True, exist_ok=True)
        target = self.profiles_dir / f"{p.name}.toml"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(profiles.dumps(p))
        os.chmod(tmp, 0o644)
        tmp.replace(target)
        self._event("profile-saved", {"profile": p.name})
        return p.name

    # -- connection ------------------------------------------------------------------

    async def connect(self, name: str) -> None:
        prof = self.profile(name)
        key = await self.secrets.key(prof.name)  # SecretError names the profile, not the key
        await self.disconnect(quiet=True)
        gate = TrafficGate(gate_policy(prof)) if prof.gate else None
        routes = MobileNodeRoutes(prof.home_address, prof.home_network, prof.home_agent,
                                  self.backend)
        self.driver = MobileNodeDriver(prof, key.value, routes, gate,
                                       on_snapshot=self._on_snapshot, on_event=self._event_entry)
        self._event("connect", {"profile": prof.name})
        await self.driver.start()
        self._link_source = await self._start_links(prof, self.driver.link_snapshot)

    async def disconnect(self, *, quiet: bool = False) -> None:
        if self._link_source is not None:
            await self._link_source.close()
            self._link_source = None
        if self.driver is not None:
            driver, self.driver = self.driver, None
            await driver.stop()
            driver.routes.close()
            self._event("disconnect", {"profile": driver.profile.name})
        elif not quiet:
            raise HelperError("not connected")
        self._on_snapshot(Snapshot())  # _on_snapshot adds the policy

    def reprobe(self) -> None:
        if self.driver is None:
            raise HelperError("not connected")
        self.driver.reprobe()

    def set_policy(self, value: str) -> None:
        try:
            policy = Policy(value)
        except ValueError:
            allowed = ", ".join(p.value for p in Policy)
            raise HelperError(f"policy must be one of {allowed}, got {value!r}") from None
        self.policy = policy
        self._event("policy", {"policy": policy.value})
        self._on_snapshot(self.snapshot)

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
