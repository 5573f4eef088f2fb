"""TOML configuration loading and validation shared by every TrustRoam program.

Errors name the file and the key (``ha.toml: mobile_nodes[1].key: ...``) and
never echo a secret value.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from enum import Enum
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from pathlib import Path
from typing import Any, TypeVar

from app.errors import UserFacingError
from app.mip.auth import Algorithm

E = TypeVar("E", bound=Enum)


class ConfigError(UserFacingError):
    """A configuration problem, phrased for the person who wrote the file."""

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file = file
        self.key = key
        self.message = message


MAX_CONFIG_FILE = 1 << 20
"""Bytes: no configuration, profile, certificate or key of ours comes near it."""


class FileRefused(Exception):
    """A file that is not read: ``reason`` is a predicate (``is not a regular file``),
    the message ``<path> <reason>``; neither ever holds the file's content."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} {reason}")
        self.path = path
        self.reason = reason


class FileMissing(FileRefused):
    """The file does not exist (for callers to whom that is not an error)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "does not exist")


def read_regular_file(path: Path, limit: int = MAX_CONFIG_FILE, *,
                      follow_symlinks: bool = True, root_owned: bool = False,
                      private: bool = False, public: bool = False) -> bytes:
    """The one way a file is read for the helper and the agents (often as root).

    The file is first opened with ``O_PATH``: a FIFO, a device or a directory is
    refused on its ``fstat`` without ever being opened for reading (so nothing
    blocks, and no driver's open has a side effect), then re-opened through its
    descriptor, read-only, non-blocking, and read up to ``limit`` bytes.

    ``follow_symlinks=False``: no component of the (absolute) path may be a
    symbolic link.  ``root_owned``: the file belongs to root (or to this process's
    user) and neither group nor others may write it.  ``private``: nor read it.
    ``public``: everyone may read it (reading it as root then tells nobody anything).
    Raises ``FileRefused``, whose message names the path and never the content.
    """
    path = Path(path)
    try:
        pfd = _open_path(path, follow_symlinks)
    except FileNotFoundError:
        raise FileMissing(path) from None
    except OSError as exc:
        raise FileRefused(path, f"cannot be opened: {exc.strerror or exc}") from None
    try:
        st = os.fstat(pfd)
        _check(path, st, limit, root_owned=root_owned, private=private, public=public)
        try:
            fd = os.open(f"/proc/self/fd/{pfd}",
                         os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            raise FileRefused(path, f"cannot be read: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb") as fh:
            again = os.fstat(fd)
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                raise FileRefused(path, "changed while it was being opened")
            try:
                data = fh.read(limit + 1)
            except OSError as exc:
                raise FileRefused(path, f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(pfd)
    if len(data) > limit:
        raise FileRefused(path, f"is larger than {limit} bytes")
    return data


def _open_path(path: Path, follow_symlinks: bool) -> int:
    """An ``O_PATH`` descriptor of ``path`` (which nothing can block on)."""
    flags = os.O_PATH | os.O_CLOEXEC
    if follow_symlinks:
        return os.open(path, flags)
    if not path.is_absolute():
        raise FileRefused(path, "is not an absolute path")
    # Walk from / one component at a time, none of them followed if it is a link
    # (O_NOFOLLOW alone checks the last one only).
    dfd = os.open("/", flags | os.O_DIRECTORY)
    try:
        parts = path.parts[1:]
        if not parts:
            raise FileRefused(path, "is a directory")
        for i, name in enumerate(parts):
            last = i == len(parts) - 1
            try:
                nfd = os.open(name, flags | os.O_NOFOLLOW | (0 if last else os.O_DIRECTORY),
                              dir_fd=dfd)
            except NotADirectoryError:
                raise FileRefused(path, _not_a_directory(path, parts[:i + 1])) from None
            os.close(dfd)
            dfd = nfd
            if last and stat.S_ISLNK(os.fstat(dfd).st_mode):
                raise FileRefused(path, "is a symbolic link")
        fd, dfd = dfd, -1
        return fd
    finally:
        if dfd >= 0:
            os.close(dfd)


def _not_a_directory(path: Path, parts: tuple[str, ...]) -> str:
    where = Path("/", *parts)
    try:
        link = stat.S_ISLNK(os.lstat(where).st_mode)
    except OSError:
        link = False
    return (f"is reached through a symbolic link ({where})" if link
            else f"is not reachable: {where} is not a directory")


def _check(path: Path, st: os.stat_result, limit: int, *, root_owned: bool,
           private: bool, public: bool) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        raise FileRefused(path, "is a directory")
    if stat.S_ISLNK(st.st_mode):
        raise FileRefused(path, "is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(path, "is not a regular file")
    if st.st_size > limit:
        raise FileRefused(path, f"is larger than {limit} bytes")
    if root_owned or private:
        if st.st_uid not in (0, os.geteuid()):
            raise FileRefused(path, "is not owned by root")
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise FileRefused(path, f"is writable by group or others (mode {mode:04o})")
    if private and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FileRefused(path, f"is readable by group or others (mode {mode:04o}); "
                                "chmod 600 it")
    if public and not mode & stat.S_IROTH:
        raise FileRefused(path, f"is not readable by everyone (mode {mode:04o})")


def load_toml(path: Path) -> dict[str, Any]:
    """A TOML file, read as every configuration file is (``read_regular_file``)."""
    try:
        data = read_regular_file(path)
    except FileRefused as exc:
        raise ConfigError(str(path), "", exc.reason) from None
    return parse_toml(data, str(path))


def parse_toml(data: bytes, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(data.decode())
    except UnicodeDecodeError:
        raise ConfigError(source, "", "not valid UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message quotes no values, only positions.
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None


class Section:
    """Typed, checked access to one table of a TOML document.

    Every getter names the full key on error; ``done()`` rejects keys nobody
    asked for, so a typo (``max_liftime``) is an error rather than a silent
    default.
    """

    def __init__(self, file: str, prefix: str, table: Mapping[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.table = table
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), message)

    def _get(self, name: str, default: Any, required: bool) -> Any:
        self._seen.add(name)
        if name not in self.table:
            if required:
                raise self.error(name, "is required")
            return default
        return self.table[name]

    def has(self, name: str) -> bool:
        return name in self.table

    def str_(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(name, default, required)
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, got {_kind(value)}")
        return value

    def optional_str(self, name: str) -> str | None:
        if name not in self.table:
            self._seen.add(name)
            return None
        return self.str_(name)

    def int_(self, name: str, default: int | None = None, *, lo: int, hi: int,
             required: bool = False) -> int:
        value = self._get(name, default, required)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {_kind(value)}")
        if not lo <= value <= hi:
            raise self.error(name, f"must be between {lo} and {hi}, got {value}")
        return value

    def float_(self, name: str, default: float, *, lo: float, hi: float) -> float:
        value = self._get(name, default, False)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(name, f"must be a number, got {_kind(value)}")
        if not lo <= value <= hi:
            raise self.error(name, f"must be between {lo} and {hi}, got {value}")
        return float(value)

    def bool_(self, name: str, default: bool) -> bool:
        value = self._get(name, default, False)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {_kind(value)}")
        return value

    def ipv4(self, name: str, default: str | None = None, *, required: bool = False
             ) -> IPv4Address:
        value = self.str_(name, default, required=required)
        try:
            return IPv4Address(value)
        except AddressValueError:
            raise self.error(name, f"{value!r} is not an IPv4 address") from None

    def network(self, name: str, *, required: bool = False) -> IPv4Network:
        value = self.str_(name, None, required=required)
        try:
            return IPv4Network(value, strict=True)
        except (AddressValueError, NetmaskValueError):
            raise self.error(name, f"{value!r} is not an IPv4 network like 10.20.1.0/24"
                             ) from None
        except ValueError:
            raise self.error(name, f"{value!r} has host bits set; write the network address"
                             ) from None

    def enum(self, name: str, kind: type[E], default: E) -> E:
        value = self.str_(name, default.value)
        for member in kind:
            if member.value == value:
                return member
        allowed = ", ".join(repr(m.value) for m in kind)
        raise self.error(name, f"must be one of {allowed}, got {value!r}")

    def path(self, name: str, default: str) -> Path:
        return Path(self.str_(name, default))

    def str_list(self, name: str, *, required: bool = False) -> list[str]:
        value = self._get(name, [], required)
        if isinstance(value, str):
            raise self.error(name, f'must be an array of strings (["{value}"]), got a string')
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(name, "must be an array of strings")
        return list(value)

    def table_list(self, name: str) -> list[Section]:
        value = self._get(name, [], False)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(name, "must be an array of tables ([[" + name + "]])")
        return [Section(self.file, f"{self.key(name)}[{i}]", v) for i, v in enumerate(value)]

    def sub(self, name: str, *, required: bool = False) -> Section:
        value = self._get(name, {}, required)
        if not isinstance(value, dict):
            raise self.error(name, f"must be a table ([{name}]), got {_kind(value)}")
        return Section(self.file, self.key(name), value)

    def done(self) -> None:
        unknown = sorted(set(self.table) - self._seen)
        if unknown:
            raise self.error(unknown[0], "is not a known setting (typo?)")


def toml_string(s: str) -> str:
    """A TOML basic string: quote, backslash and every control character escaped
    (what a writer needs so that any value reads back exactly)."""
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _kind(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def parse_key(section: Section, name: str, file_name: str, *, min_len: int, max_len: int,
              base: Path) -> bytes:
    """A secret key given as ``key = "hex:..."`` or ``key_file = PATH``.

    The file holds the same ``hex:...`` notation.  Messages never include the key.
    """
    has_inline, has_file = section.has(name), section.has(file_name)
    if has_inline and has_file:
        raise section.error(name, f"give either {name} or {file_name}, not both")
    if not (has_inline or has_file):
        raise section.error(name, f"is required (or {file_name})")
    if has_inline:
        text, where = section.str_(name), name
    else:
        path = section.path(file_name, "")
        if not path.is_absolute():
            path = base / path
        try:
            text = read_regular_file(path, 4096).decode().strip()
        except FileRefused as exc:
            raise section.error(file_name, f"cannot read {exc}") from None
        except UnicodeDecodeError:
            raise section.error(file_name, f"{path} is not text (write hex:...)") from None
        where = file_name
    if not text.startswith("hex:"):
        raise section.error(where, "must start with 'hex:' followed by hex digits")
    try:
        key = bytes.fromhex(text[4:])
    except ValueError:
        raise section.error(where, "has characters that are not hex digits") from None
    if not min_len <= len(key) <= max_len:
        raise section.error(where, f"is {len(key)} bytes; it must be {min_len} to {max_len} "
                                   f"bytes ({min_len * 8} bits at least)")
    return key


def parse_security_association(section: Section, base: Path) -> tuple[int, Algorithm, bytes]:
    """``spi``, ``algorithm`` and ``key``/``key_file`` of one security association."""
    spi = section.int_("spi", required=True, lo=0, hi=0xFFFF_FFFF)
    if spi < 256:
        # RFC 5944 section 3.5.1: SPIs 0-255 are reserved.
        raise section.error("spi", f"{spi} is reserved (0-255); use 256 or above")
    algorithm = section.enum("algorithm", Algorithm, Algorithm.HMAC_MD5)
    key = parse_key(section, "key", "key_file", min_len=16, max_len=64, base=base)
    return spi, algorithm, key
