"""TOML configuration loading and validation shared by every TrustRoam program.

Errors name the file and the key (``ha.toml: mobile_nodes[1].key: ...``) and
never echo a secret value.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from enum import Enum
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from pathlib import Path
from typing import Any, TypeVar

from app.mip.auth import Algorithm

E = TypeVar("E", bound=Enum)


class ConfigError(Exception):
    """A configuration problem, phrased for the person who wrote the file."""

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}" if key else f"{file}: {message}")
        self.file = file
        self.key = key
        self.message = message


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "", "no such file") from None
    except PermissionError:
        raise ConfigError(str(path), "", "permission denied") from None
    except IsADirectoryError:
        raise ConfigError(str(path), "", "is a directory, not a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", "not valid UTF-8 text") from None


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
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise section.error(file_name, f"cannot read {path}: {exc.strerror}") from None
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
