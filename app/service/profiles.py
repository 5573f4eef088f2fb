"""The helper's profile files and what a profile needs resolved before it connects.

Profiles are read as every root-owned file is (``app.config.read_regular_file``,
through ``app.mn.profile.load``): a FIFO or a device in the profiles directory is
refused at once and never blocks the event loop.  They are written atomically,
never through a symlink (``app.service.state.write_file``).  Before a connect the
VPN gateways' names are resolved for the gate, and the files the ``[vpn]`` table
names are checked, both off the helper's lock.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path

from app.config import ConfigError
from app.errors import UserFacingError, reason
from app.mn import profile as schema
from app.mn.profile import Profile
from app.net.gate import GatePolicy
from app.net.mn_routes import TUNNEL
from app.service.gateway_cache import GatewayCache, unicast
from app.service.state import write_file
from app.vpn import credentials
from app.vpn.charon import VpnConfigError
from app.vpn.profile import SECRET_KEY_PASSPHRASE, VpnConfig

log = logging.getLogger("trustroam.helper")
RESOLVE_TIMEOUT = 5.0
"""Seconds to resolve the VPN gateways' names at connect (all of them together)."""

Unresolved = Callable[[str, str], None]
"""(gateway as the profile names it, why) for a gateway the gate cannot pass."""


class ProfileError(UserFacingError):
    """The profiles directory cannot be read or written; the message is the caller's."""


def load_profile(path: Path) -> Profile:
    """``app.mn.profile.load``: read as every root-owned file is (``app.config``'s
    ``read_regular_file``: a FIFO or device in the profiles directory is refused at
    once, never blocking the event loop)."""
    return schema.load(path)


class ProfileDirectory:
    """The profiles directory and the extra profile files, parsed again only when a
    file changed: ListProfiles is open to every uid, and a flood of it must cost a
    stat per file, not a parse (nor a log line) per file."""

    def __init__(self, directory: Path | None, extra: Sequence[Path] = ()) -> None:
        self.directory = directory
        self.extra = list(extra)
        self._cache: tuple[tuple[object, ...], dict[str, Profile]] | None = None
        self._paths: dict[str, Path] = {}
        """name -> the file it was read from, as of the last load."""

    def load(self) -> dict[str, Profile]:
        """Every valid profile; invalid ones are logged with their file and key."""
        d = self.directory
        try:
            paths = sorted(d.glob("*.toml")) if d is not None and d.is_dir() else []
        except OSError as exc:
            log.error("profiles directory %s unreadable: %s", d, exc)
            raise ProfileError("the profiles directory cannot be read") from None
        paths += self.extra
        key = tuple(_file_key(path) for path in paths)
        if self._cache is not None and self._cache[0] == key:
            return dict(self._cache[1])
        found: dict[str, Profile] = {}
        self._paths = {}
        for path in paths:
            try:
                p = load_profile(path)
            except ConfigError as exc:
                log.error("profile skipped: %s", exc)
                continue
            except (OSError, RecursionError) as exc:  # a symlink loop, a FIFO, EIO...
                log.error("profile skipped: %s: %s", path, reason(exc))
                continue
            found[p.name] = p
            self._paths[p.name] = path
        self._cache = (key, dict(found))
        return found

    def save(self, text: str) -> str:
        """Validate ``text`` and store it as ``<name>.toml``; returns the name.

        Written to a fresh temporary file in the directory (O_EXCL, never through a
        symlink), fsynced, then renamed over the target: a reader sees the old or the
        new profile, and a symlink planted at either name is not followed (a rename
        replaces the link itself).  Raises ``ConfigError`` (the text, naming the key)
        or ``ProfileError``."""
        if self.directory is None:
            raise ProfileError("this helper has no profiles directory (--profiles-dir)")
        p = schema.loads(text, "SaveProfile")
        data = schema.dumps(p).encode()
        if schema.loads(data.decode(), "SaveProfile") != p:  # what reloads is what was sent
            raise ProfileError("SaveProfile: the profile does not survive a round trip")
        try:
            write_file(self.directory, f"{p.name}.toml", data, 0o644)
        except OSError as exc:
            log.error("cannot store profile %s in %s: %s", p.name, self.directory, exc)
            raise ProfileError(f"cannot store profile {p.name}: "
                               f"{exc.strerror or type(exc).__name__}") from None
        return p.name


    def text(self, name: str) -> str:
        """The stored profile ``name`` as TOML (the form SaveProfile stores: no
        secret is ever in a profile).  Raises ``ProfileError`` naming it."""
        found = self.load()
        if name not in found:
            raise ProfileError(f"no profile {_quoted(name)} (known: "
                               f"{', '.join(sorted(found)) or 'none'})")
        return schema.dumps(found[name])

    def delete(self, name: str) -> None:
        """Remove the file profile ``name`` was read from.  Only a file in the profiles
        directory: a profile given on the helper's command line stays.  The link
        itself is removed, never what a symlink points at."""
        found = self.load()
        path = self._paths.get(name) if name in found else None
        if path is None:
            raise ProfileError(f"no profile {_quoted(name)} (known: "
                               f"{', '.join(sorted(found)) or 'none'})")
        if self.directory is None or path.parent != self.directory:
            raise ProfileError(f"profile {name} is given on trustroamd's command line, "
                               "not stored in its profiles directory: it cannot be deleted")
        try:
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                os.unlink(path.name, dir_fd=dfd)
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except FileNotFoundError:
            pass  # gone already: what was asked for
        except OSError as exc:
            log.error("cannot delete profile %s from %s: %s", name, self.directory, exc)
            raise ProfileError(f"cannot delete profile {name}: "
                               f"{exc.strerror or type(exc).__name__}") from None
        self._cache = None


def _quoted(name: str) -> str:
    """A name a caller sent, short and quoted (it may be anything)."""
    return repr(name if len(name) <= 64 else name[:61] + "...")


def _file_key(path: Path) -> object:
    """What changes when a profile file does (its stat, or the error reading it)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return (str(path), exc.errno)
    return (str(path), st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode)


async def gate_policy(prof: Profile, *, on_unresolved: Unresolved | None = None,
                      timeout: float = RESOLVE_TIMEOUT,
                      cache: GatewayCache | None = None) -> GatePolicy:
    """What the gate lets through for this profile while undecided: the direct probe
    and, with a ``[vpn]`` table, IKE/NAT-T/ESP to the gateways' IPv4 addresses."""
    gateways = await resolve_gateways(prof.vpn.gateways if prof.vpn else (),
                                      on_unresolved=on_unresolved, timeout=timeout,
                                      cache=cache)
    return GatePolicy(prof.home_agent, prof.home_address, TUNNEL, gateways=gateways,
                      allow_lan=prof.allow_lan, home_network=prof.home_network,
                      intranet=prof.vpn.intranet if prof.vpn else (),
                      dns_servers=prof.dns.servers if prof.dns else ())


async def resolve_gateways(names: Sequence[str], *, on_unresolved: Unresolved | None = None,
                           timeout: float = RESOLVE_TIMEOUT,
                           cache: GatewayCache | None = None) -> tuple[IPv4Address, ...]:
    """The gateways' IPv4 addresses, in the profile's order, without duplicates.

    Names are resolved on the loop's resolver (never blocking it), all at once and
    within ``timeout``; one that does not resolve takes the addresses it last
    resolved to from ``cache`` (reported, with them), or is reported to
    ``on_unresolved`` (and the log) and left out: the others still work."""
    loop = asyncio.get_running_loop()

    def report(name: str, why: str) -> list[IPv4Address]:
        last = cache.get(name) if cache is not None else ()
        if last:
            why += "; its last addresses used: " + ", ".join(map(str, last))
            log.warning("VPN gateway %s: %s", name, why)
        else:
            log.warning("VPN gateway %s left out of the gate: %s", name, why)
        if on_unresolved is not None:
            on_unresolved(name, why)
        return list(last)

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
            return report(name, f"its name did not resolve within {timeout:g} s")
        except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
            return report(name, f"its name does not resolve ({reason(exc)})")
        found = [a for a in dict.fromkeys(IPv4Address(info[4][0]) for info in infos)
                 if unicast(a)]  # never loopback, multicast, broadcast... into the gate
        if not found:
            return report(name, "its name has no unicast IPv4 address")
        if cache is not None:
            cache.put(name, tuple(found))
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
