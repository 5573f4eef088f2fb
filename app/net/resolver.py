"""The intranet's resolvers on the desktop's own resolver, per mode (issue 19).

One job: put the profile's DNS servers and search domains on the link that
carries the home address, as the resolver of every name, through
systemd-resolved's D-Bus API (``org.freedesktop.resolve1.Manager``), and take
them off again on every way out of the mode.  Where resolved neither runs nor
can be activated, NetworkManager's global DNS does it (``app.net.resolver_nm``);
:class:`DesktopResolver` picks one at start.

- c and mc: the tunnel device (``trmn0``).  ``~.`` (the root as routing domain)
  and ``DefaultRoute`` make resolved send every query there and no longer to the
  visited network's resolver, which NetworkManager or DHCP put on the physical
  link; resolved binds each query to the link (``IP_UNICAST_IF``), so it leaves
  through the tunnel from the home address.  Leaving: ``RevertLink``.
- f: the physical link (the home address is on it, the foreign agent routes).
  What was there (the visited network's resolver, set by NetworkManager) is read
  first and put back when the mode ends, unless NetworkManager has set the link
  since (the next network's DHCP, pushed while the machine was still probing:
  the mode is left only when the next one is decided), which then stays.
- h: the home link, only if its own DHCP gave it no resolver.
- None (undecided, stopped): nothing of ours anywhere.

At start, ``RevertLink`` on the tunnel device: a helper that crashed in c or mc
left its servers there.  Failures are logged, never raised: names failing must
not take the data plane down with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Protocol

from app.api import Mode
from app.dbus import BusType, Message, MessageBus, MessageType, PeerError, Variant, call
from app.net.dns_profile import DnsConfig
from app.net.resolver_nm import NM, NmGlobalDns

log = logging.getLogger("trustroam.net.resolver")

RESOLVE1 = "org.freedesktop.resolve1"
RESOLVE1_PATH = "/org/freedesktop/resolve1"
MANAGER = "org.freedesktop.resolve1.Manager"
LINK = "org.freedesktop.resolve1.Link"
NO_SUCH_LINK = "org.freedesktop.resolve1.NoSuchLink"
PROPERTIES = "org.freedesktop.DBus.Properties"
TIMEOUT = 2.0
"""Seconds for one call to resolved (it answers at once unless stuck)."""
LINK_WAIT = 1.0
"""Seconds to wait for resolved to learn a link the kernel just made."""
TUNNEL_MODES = (Mode.COLOCATED, Mode.VPN)
BUS = "org.freedesktop.DBus"
NM_DNS_MANAGER = "/org/freedesktop/NetworkManager/DnsManager"
NM_DNS_RULE = ("type='signal',sender='org.freedesktop.NetworkManager',"
               "interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',"
               f"path='{NM_DNS_MANAGER}'")
"""NetworkManager's DNS manager changed its configuration: it has just pushed the
links' DHCP resolvers and domains to resolved again (resolved itself signals
nothing when a link's settings change)."""
LEFT_FILE = "dns-left.json"
"""In the helper's state directory while our servers may be installed: a helper that
crashed (NetworkManager keeps its global DNS across reboots) is cleaned up after at
the next start from this record, whatever profile connects then, or none."""
RESOLV_CONF = Path("/etc/resolv.conf")
STUB_ADDRESSES = ("127.0.0.53", "127.0.0.54")
"""resolved's stub listeners: a resolv.conf naming one sends every lookup to it."""
MISSING = ("org.freedesktop.DBus.Error.ServiceUnknown",
           "org.freedesktop.DBus.Error.NameHasNoOwner",
           "org.freedesktop.systemd1.NoSuchUnit",
           "org.freedesktop.systemd1.UnitMasked",
           "org.freedesktop.DBus.Error.Spawn.")
"""Errors meaning no resolved answers (not running, disabled, masked, failed to
start): a prefix ends with a dot."""


def _is_missing(name: str | None) -> bool:
    return bool(name) and any(name == m or (m.endswith(".") and name.startswith(m))
                              for m in MISSING if name is not None)


class Resolvers(Protocol):
    """What the data plane asks of a resolver adapter (app.net.mn_routes)."""

    async def start(self) -> None: ...

    async def apply(self, mode: Mode, ifindex: int | None) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class LinkSettings:
    """What resolved holds for one link, as the three calls set it."""

    dns: tuple[tuple[int, bytes], ...]
    domains: tuple[tuple[str, bool], ...]
    default_route: bool


class LinkDns:
    """The profile's resolvers on the home address's link (see the module's text)."""

    def __init__(self, servers: Sequence[IPv4Address], domains: Sequence[str], *,
                 tunnel: str, bus: MessageBus | None = None,
                 interfaces: Callable[[], list[tuple[int, str]]] = socket.if_nameindex
                 ) -> None:
        self.servers = tuple(servers)
        self.domains = tuple(domains)
        self.tunnel = tunnel
        self._bus = bus
        self._interfaces = interfaces
        self._own_bus = bus is None
        self._at: int | None = None
        """The ifindex our settings are on, or None."""
        self._saved: LinkSettings | None = None
        """What was on ``_at`` before (a physical link's), put back on leaving."""
        self._ours = LinkSettings(tuple((socket.AF_INET, s.packed) for s in self.servers),
                                  (*((d, False) for d in self.domains), (".", True)), True)
        self._muted: dict[int, tuple[LinkSettings, LinkSettings]] = {}
        """In c and mc, the other links whose domains and default route were taken:
        ifindex -> (what they had, what we left there)."""
        self._missing = False
        self._mode = Mode.NONE
        self._lock = asyncio.Lock()
        """One change of resolved's settings at a time (apply, a re-check)."""
        self._watching = False
        self._recheck: asyncio.Task[None] | None = None
        self._again = False

    async def start(self) -> None:
        """Clean what a crashed helper left: the tunnel device's settings, and a
        physical link that still holds exactly ours (mode f; NetworkManager's were
        overwritten then, and it sets them again at its next change of that link)."""
        await self._try("clean the resolvers a previous helper left", self._clean())

    async def _clean(self) -> None:
        for index, name in self._interfaces():
            if name == "lo":
                continue
            if name != self.tunnel:
                try:
                    if not self._left_by_us(await self._read(index, wait=False)):
                        continue
                except PeerError as exc:
                    if exc.error_name == NO_SUCH_LINK:
                        continue
                    raise
            await self._call("RevertLink", "i", [index], missing_ok=True)

    def _left_by_us(self, s: LinkSettings) -> bool:
        """Our servers and ``~.`` (the profile's domains may have been edited since)."""
        return s.dns == self._ours.dns and (".", True) in s.domains

    async def apply(self, mode: Mode, ifindex: int | None) -> None:
        """The servers on ``ifindex`` (the home address's link in ``mode``), or
        nowhere (``ifindex`` None or mode NONE)."""
        if not self.servers:
            return
        async with self._lock:
            await self._apply(mode, ifindex)

    async def _apply(self, mode: Mode, ifindex: int | None) -> None:
        want = ifindex if mode is not Mode.NONE else None
        if self._missing and want is not None:
            return  # nothing to install; a removal is still tried (resolved may be back)
        if want is not None:
            await self._try("watch NetworkManager's DNS", self._watch())
        if want == self._at:
            self._mode = mode
            await self._check()
            return
        await self._try("remove the intranet's resolvers", self._leave())
        self._mode = mode
        if want is not None:
            await self._try("install the intranet's resolvers", self._enter(mode, want))

    async def _check(self) -> None:
        """What NetworkManager may have pushed since over ours: taken again."""
        if self._at is None:
            return
        if self._mode in TUNNEL_MODES:
            # A link that came up since (a roam within c or mc) has its DHCP's domains.
            await self._try("take the visited network's search domains", self._mute())
        else:
            await self._try("put the intranet's resolvers back", self._reassert(self._at))

    async def settled(self) -> None:
        """Until the re-check a signal started is done (tests, close)."""
        while self._recheck is not None and not self._recheck.done():
            await asyncio.shield(self._recheck)

    async def _watch(self) -> None:
        add = getattr(self._bus, "add_message_handler", None)
        if self._watching or self._bus is None:
            return
        self._watching = True
        await call(self._bus, Message(destination=BUS, path="/org/freedesktop/DBus",
                                      interface=BUS, member="AddMatch", signature="s",
                                      body=[NM_DNS_RULE]), TIMEOUT, "the bus daemon")
        if add is not None:
            add(self._on_signal)

    def _on_signal(self, msg: Message) -> bool:
        if (msg.message_type is MessageType.SIGNAL and msg.path == NM_DNS_MANAGER
                and msg.member == "PropertiesChanged" and self._at is not None):
            if self._recheck is not None and not self._recheck.done():
                self._again = True  # once more after the running one: its reads may be old
            else:
                self._recheck = asyncio.get_running_loop().create_task(self._rechecks())
        return False  # others may want it too

    async def _rechecks(self) -> None:
        again = True
        while again:
            self._again = False
            async with self._lock:
                await self._check()
            again = self._again

    async def close(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
        async with self._lock:
            await self._try("remove the intranet's resolvers", self._leave())
        if self._own_bus and self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    # -- pieces ------------------------------------------------------------------

    async def _enter(self, mode: Mode, ifindex: int) -> None:
        saved: LinkSettings | None = None
        if mode not in TUNNEL_MODES:
            saved = await self._read(ifindex)
            if mode is Mode.HOME and saved.dns:
                log.info("the home link's DHCP gave resolvers: the profile's are not added")
                return
        # Ours from the first call: a failure half-way is still taken off on leaving.
        self._at, self._saved = ifindex, saved
        await self._set(ifindex, self._ours)
        log.info("resolvers %s on link %d for every name (mode %s)",
                 ", ".join(map(str, self.servers)), ifindex, mode.value)
        if mode in TUNNEL_MODES:
            await self._mute()

    async def _reassert(self, ifindex: int) -> None:
        """f (or h): NetworkManager may have pushed the link's DHCP resolvers over ours
        since (a renewal, resolved restarted); the gate lets the home address's
        lookups out there, so they would go to the visited resolver in clear.  Ours
        again, and NetworkManager's latest is what leaving puts back."""
        try:
            now = await self._read(ifindex, wait=False)
        except PeerError as exc:
            if exc.error_name == NO_SUCH_LINK:
                return
            raise
        if now != self._ours:
            self._saved = now
            await self._set(ifindex, self._ours)
            log.info("link %d: the intranet's resolvers set again over what "
                     "NetworkManager pushed", ifindex)

    async def _mute(self) -> None:
        """Every other link's search domains and default route off (servers kept).
        resolved treats a link's search domains as routing domains: a name under one
        (or an intranet name under a longer announced suffix, ``com``) goes to that
        link's resolver only; ``~.`` loses to any longer match."""
        for index, name in self._interfaces():
            if name in ("lo", self.tunnel):
                continue
            try:
                now = await self._read(index, wait=False)
            except PeerError as exc:
                if exc.error_name == NO_SUCH_LINK:
                    continue
                raise
            if not now.domains and not now.default_route:
                continue
            muted = LinkSettings(now.dns, (), False)
            self._muted[index] = (now, muted)
            await self._call("SetLinkDomains", "ia(sb)", [index, []])
            await self._call("SetLinkDefaultRoute", "ib", [index, False])
            log.info("link %d: its search domains %s and default route taken while the "
                     "tunnel carries every name", index,
                     ", ".join(d for d, _ in now.domains) or "(none)")

    async def _unmute(self) -> None:
        """Put back what :meth:`_mute` took, where nothing has set the link since."""
        muted, self._muted = self._muted, {}
        for index, (before, ours) in muted.items():
            try:
                now = await self._read(index, wait=False)
            except PeerError as exc:
                if exc.error_name == NO_SUCH_LINK:
                    continue  # gone, and our settings with it
                raise
            if now == ours:
                await self._call("SetLinkDomains", "ia(sb)",
                                 [index, [list(d) for d in before.domains]], missing_ok=True)
                await self._call("SetLinkDefaultRoute", "ib", [index, before.default_route],
                                 missing_ok=True)

    async def _leave(self) -> None:
        at, saved = self._at, self._saved
        self._at = self._saved = None
        if self._muted:
            await self._unmute()
        if at is None:
            return
        if saved is None:
            await self._call("RevertLink", "i", [at], missing_ok=True)
        else:  # a physical link: what NetworkManager had put there, if it has not since
            try:
                now = await self._read(at, wait=False)
            except PeerError as exc:
                if exc.error_name == NO_SUCH_LINK:
                    return  # the link is gone, and our settings with it
                raise
            if now == self._ours:
                await self._set(at, saved, missing_ok=True)

    async def _set(self, ifindex: int, s: LinkSettings, *, missing_ok: bool = False) -> None:
        await self._call("SetLinkDNS", "ia(iay)", [ifindex, [list(d) for d in s.dns]],
                         missing_ok=missing_ok)
        await self._call("SetLinkDomains", "ia(sb)", [ifindex, [list(d) for d in s.domains]],
                         missing_ok=missing_ok)
        await self._call("SetLinkDefaultRoute", "ib", [ifindex, s.default_route],
                         missing_ok=missing_ok)

    async def _read(self, ifindex: int, *, wait: bool = True) -> LinkSettings:
        """``wait``: a link resolved does not know yet is asked again (one the kernel
        just made); else NoSuchLink is raised at once (one that is gone)."""
        reply = await self._call("GetLink", "i", [ifindex], wait=wait)
        path = str(reply.body[0])
        values: dict[str, Any] = {}
        for name in ("DNS", "Domains", "DefaultRoute"):
            got = await self._request(Message(destination=RESOLVE1, path=path,
                                              interface=PROPERTIES, member="Get",
                                              signature="ss", body=[LINK, name]))
            value = got.body[0]
            values[name] = value.value if isinstance(value, Variant) else value
        return LinkSettings(tuple((int(f), bytes(a)) for f, a in values["DNS"]),
                            tuple((str(d), bool(r)) for d, r in values["Domains"]),
                            bool(values["DefaultRoute"]))

    async def _call(self, member: str, signature: str, body: list[Any], *,
                    missing_ok: bool = False, wait: bool = True) -> Message:
        msg = Message(destination=RESOLVE1, path=RESOLVE1_PATH, interface=MANAGER,
                      member=member, signature=signature, body=body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINK_WAIT
        while True:
            try:
                return await self._request(msg)
            except PeerError as exc:
                if exc.error_name != NO_SUCH_LINK:
                    raise
                if missing_ok:  # the link is gone, and our settings with it
                    return msg
                if not wait or loop.time() > deadline:
                    raise
            # resolved learns a new link from rtnetlink a moment after the kernel
            # made it, and signals nothing when it has: asked again shortly.
            await asyncio.sleep(0.01)
            msg = Message(destination=RESOLVE1, path=RESOLVE1_PATH, interface=MANAGER,
                          member=member, signature=signature, body=body)

    async def _request(self, msg: Message) -> Message:
        if self._bus is None:
            self._bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        return await call(self._bus, msg, TIMEOUT, "systemd-resolved")

    async def _try(self, what: str, step: Any) -> None:
        try:
            await step
        except PeerError as exc:
            if _is_missing(exc.error_name):
                # No resolved on this system: nothing to configure, said once.
                if self._missing:
                    return
                self._missing = True
                log.warning("systemd-resolved does not run: the profile's [dns] servers "
                            "are not installed (names use the system's resolver)")
                return
            log.warning("cannot %s: %s", what, exc)
        except OSError as exc:
            log.warning("cannot %s: no system bus (%s)", what, exc.strerror or exc)


class DesktopResolver:
    """systemd-resolved where it runs and the system's resolv.conf asks its stub
    (or, without NetworkManager, where the bus can start it and the stub is asked),
    else NetworkManager, else nothing (said once).  A resolved nobody asks (resolv.conf
    written by NetworkManager itself) or one installed but disabled is not used."""

    def __init__(self, servers: Sequence[IPv4Address], domains: Sequence[str], *,
                 tunnel: str, bus: MessageBus | None = None,
                 resolv_conf: Path = RESOLV_CONF, record: Path | None = None) -> None:
        self.servers = tuple(servers)
        self.domains = tuple(domains)
        self.tunnel = tunnel
        self._bus = bus
        self._own_bus = bus is None
        self._resolv_conf = resolv_conf
        self._record = record
        """The state directory for LEFT_FILE (None: nothing recorded)."""
        self.backend: LinkDns | NmGlobalDns | None = None
        self._target: tuple[Mode, int | None] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            if self._bus is None:
                self._bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            bus = self._bus
            stub = _asks_stub(self._resolv_conf)
            if stub and await _has_owner(bus, RESOLVE1):
                self.backend = LinkDns(self.servers, self.domains, tunnel=self.tunnel,
                                       bus=bus)
            elif await _available(bus, NM):
                self.backend = NmGlobalDns(self.servers, self.domains, bus=bus)
            elif stub and await _available(bus, RESOLVE1):
                self.backend = LinkDns(self.servers, self.domains, tunnel=self.tunnel,
                                       bus=bus)
            else:
                log.warning("neither systemd-resolved (asked by %s) nor NetworkManager "
                            "runs: the profile's [dns] servers are not installed",
                            self._resolv_conf)
                return
        except (OSError, PeerError) as exc:
            log.warning("cannot reach the system bus for the profile's [dns] servers: %s",
                        exc)
            return
        await self._guard("start", self.backend.start())

    async def apply(self, mode: Mode, ifindex: int | None) -> None:
        """Returns at once: the data plane's step must not wait on resolved or
        NetworkManager (seconds when stuck).  One change runs at a time, in the
        background; targets given meanwhile collapse to the latest."""
        if self.backend is None:
            return
        if mode is not Mode.NONE and ifindex is not None:
            self._write_record()  # before anything is set: a crash then is cleaned up
        self._target = (mode, ifindex)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def _work(self) -> None:
        while self._target is not None and self.backend is not None:
            (mode, ifindex), self._target = self._target, None
            await self._guard("install or remove", self.backend.apply(mode, ifindex))

    async def settled(self) -> None:
        """Until the changes given so far are made (close, tests)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    async def close(self) -> None:
        self._target = None  # what is running finishes; close then removes it all
        await self.settled()
        if self.backend is not None:
            await self._guard("remove", self.backend.close())
        if self._record is not None:
            with contextlib.suppress(OSError):
                (self._record / LEFT_FILE).unlink()

    def _write_record(self) -> None:
        if self._record is None:
            return
        doc = {"servers": [str(a) for a in self.servers], "tunnel": self.tunnel}
        tmp = self._record / (LEFT_FILE + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, self._record / LEFT_FILE)
        except OSError as exc:
            log.warning("cannot record the installed resolvers in %s: %s", self._record,
                        exc.strerror or exc)
        if self._own_bus and self._bus is not None:
            self._bus.disconnect()
            self._bus = None

    @staticmethod
    async def _guard(what: str, step: Any) -> None:
        """Names failing must not take the data plane with them: logged, not raised."""
        try:
            await step
        except (OSError, PeerError) as exc:
            log.warning("the profile's [dns] servers: cannot %s them: %s", what, exc)


def _asks_stub(path: Path) -> bool:
    """``path`` (resolv.conf) sends lookups to resolved's stub listener."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and words[1] in STUB_ADDRESSES:
            return True
    return False


async def _has_owner(bus: MessageBus, name: str) -> bool:
    reply = await call(bus, Message(destination=BUS, path="/org/freedesktop/DBus",
                                    interface=BUS, member="NameHasOwner", signature="s",
                                    body=[name]), TIMEOUT, "the bus daemon")
    return bool(reply.body[0])


async def _available(bus: MessageBus, name: str) -> bool:
    """``name`` has an owner, or the bus can start one (D-Bus activation)."""
    if await _has_owner(bus, name):
        return True
    reply = await call(bus, Message(destination=BUS, path="/org/freedesktop/DBus",
                                    interface=BUS, member="ListActivatableNames"),
                       TIMEOUT, "the bus daemon")
    return name in reply.body[0]


def for_profile(cfg: DnsConfig | None, tunnel: str, bus: MessageBus | None = None,
                record: Path | None = None) -> DesktopResolver | None:
    """The adapter for a profile's ``[dns]`` table; None without servers."""
    if cfg is None or not cfg.servers:
        return None
    return DesktopResolver(cfg.servers, cfg.domains, tunnel=tunnel, bus=bus, record=record)


async def clean_left(directory: Path | None, bus: MessageBus | None = None, *,
                     resolv_conf: Path = RESOLV_CONF) -> None:
    """At the helper's start: what the record in ``directory`` says a previous helper
    set (and did not take off: a crash, a power loss) is cleared, on whichever
    backend holds it; then the record goes.  Logged, never raised."""
    if directory is None:
        return
    path = directory / LEFT_FILE
    try:
        doc = json.loads(path.read_text())
        servers = [IPv4Address(a) for a in doc["servers"]][:16]
        tunnel = str(doc.get("tunnel", ""))[:15]
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s ignored: %s", path, exc)
        with contextlib.suppress(OSError):
            path.unlink()
        return
    if servers and tunnel:
        left = DesktopResolver(servers, (), tunnel=tunnel, bus=bus, resolv_conf=resolv_conf)
        await left.start()  # each backend's start clears what has these servers
        if left._own_bus and left._bus is not None:
            left._bus.disconnect()
    with contextlib.suppress(OSError):
        path.unlink()
    log.info("resolvers a previous helper left (%s): cleared",
             ", ".join(map(str, servers)))
