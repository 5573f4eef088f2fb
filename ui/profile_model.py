"""A profile as the editor holds it: text fields, checked as the user types.

The rules mirror the helper's (app/mn/profile.py), which stays the judge: the
tray knows only app/api and D-Bus, so this is a friendly first pass and
SaveProfile's answer is shown as it comes.  No secret ever enters this model:
``to_toml`` has no secret fields to write, ``from_toml`` refuses to read them.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SECRET_KEYS = ("key", "key_file", "mn_ha_key", "secret", "password", "psk", "vpn_psk",
               "vpn_password", "vpn_key_passphrase")
ALGORITHMS = ("hmac-md5", "keyed-md5")


@dataclass(frozen=True)
class Field:
    key: str  # the TOML key, dotted for sub-tables (probe.retries)
    label: str
    default: str
    kind: str = "text"  # text, int, float, bool, choice
    required: bool = False


FIELDS = (
    Field("name", "Name", "", required=True),
    Field("home_address", "Home address", "", required=True),
    Field("home_network", "Home network", "", required=True),
    Field("home_agent", "Home agent", "", required=True),
    Field("spi", "SPI", "256", "int", required=True),
    Field("algorithm", "Algorithm", "hmac-md5", "choice"),
    Field("nai", "NAI (optional)", ""),
    Field("lifetime", "Lifetime (s)", "600", "int"),
    Field("renew_fraction", "Renew at fraction", "0.75", "float"),
    Field("interface", "Interface (optional)", ""),
    Field("probe.initial_timeout", "Probe timeout (s)", "1.0", "float"),
    Field("probe.retries", "Probe retries", "2", "int"),
    Field("features.foreign_agents", "Use foreign agents", "true", "bool"),
    Field("features.gate", "Block traffic while undecided", "true", "bool"),
)
BY_KEY = {f.key: f for f in FIELDS}


def defaults() -> dict[str, str]:
    return {f.key: f.default for f in FIELDS}


def _ipv4(v: str) -> IPv4Address | None:
    try:
        return IPv4Address(v)
    except AddressValueError:
        return None


def validate(values: dict[str, str]) -> dict[str, str]:
    """field key -> message naming the field; empty when the profile is valid."""
    errs: dict[str, str] = {}

    def err(key: str, msg: str) -> None:
        errs.setdefault(key, f"{key}: {msg}")

    for f in FIELDS:
        v = values.get(f.key, "").strip()
        if f.required and not v:
            err(f.key, "is required")
    name = values.get("name", "").strip()
    if name and not NAME_RE.match(name):
        err("name", f"{name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    net = None
    if v := values.get("home_network", "").strip():
        try:
            net = IPv4Network(v, strict=True)
        except (AddressValueError, NetmaskValueError):
            err("home_network", f"{v!r} is not an IPv4 network like 10.20.1.0/24")
        except ValueError:
            err("home_network", f"{v!r} has host bits set; write the network address")
    home = ha = None
    if v := values.get("home_address", "").strip():
        home = _ipv4(v)
        if home is None:
            err("home_address", f"{v!r} is not an IPv4 address")
        elif net is not None and (home not in net or home in (net.network_address,
                                                               net.broadcast_address)):
            err("home_address", f"{home} is not a host address of home_network {net}")
    if v := values.get("home_agent", "").strip():
        ha = _ipv4(v)
        if ha is None:
            err("home_agent", f"{v!r} is not an IPv4 address")
        elif net is not None and ha not in net:
            err("home_agent", f"{ha} is not inside home_network {net}")
        elif ha == home:
            err("home_agent", "is the same as home_address")
    for key, lo, hi in (("spi", 256, 0xFFFF_FFFF), ("lifetime", 1, 65534),
                        ("probe.retries", 0, 20)):
        v = values.get(key, "").strip()
        if not v:
            continue
        try:
            n = int(v)
        except ValueError:
            err(key, f"{v!r} is not a whole number")
            continue
        if not lo <= n <= hi:
            err(key, f"must be between {lo} and {hi}, got {n}"
                if key != "spi" or n > hi else f"{n} is reserved (0-255); use 256 or above")
    for key, flo, fhi in (("renew_fraction", 0.1, 0.95), ("probe.initial_timeout", 1.0, 30.0)):
        v = values.get(key, "").strip()
        if not v:
            continue
        try:
            x = float(v)
        except ValueError:
            err(key, f"{v!r} is not a number")
            continue
        if not flo <= x <= fhi:
            err(key, f"must be between {flo} and {fhi}, got {x}")
    if values.get("algorithm", "hmac-md5") not in ALGORITHMS:
        err("algorithm", f"must be one of {', '.join(ALGORITHMS)}")
    nai = values.get("nai", "")
    if len(nai.encode()) > 255:
        err("nai", "must be 1 to 255 bytes")
    iface = values.get("interface", "").strip()
    if iface and len(iface.encode()) >= 16:
        err("interface", f"{iface!r} is not an interface name")
    return errs


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(values: dict[str, str]) -> str:
    """The profile file (what SaveProfile takes and Export writes); never a secret."""
    top: list[str] = []
    subs: dict[str, list[str]] = {"probe": [], "features": []}
    for f in FIELDS:
        v = values.get(f.key, f.default).strip()
        if not v and not f.required:
            continue  # optional and empty: leave it out
        text = {"int": v, "float": v, "bool": v.lower()}.get(f.kind, _quote(v))
        table, _, key = f.key.rpartition(".")
        (subs[table] if table else top).append(f"{key} = {text}")
    out = top
    for table, lines in subs.items():
        out += ["", f"[{table}]", *lines]
    return "\n".join(out) + "\n"


class ProfileFileError(Exception):
    """An import refused; the message names the file and the key."""


def from_toml(text: str, source: str) -> dict[str, str]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileFileError(f"{source}: not valid TOML: {exc}") from None
    tables = [("", doc)] + [(f"{k}.", v) for k, v in doc.items() if isinstance(v, dict)]
    for prefix, table in tables:
        for k in SECRET_KEYS:
            if k in table:
                raise ProfileFileError(f"{source}: {prefix}{k}: secrets do not belong in a "
                                       "profile file; enter the key in the editor (it goes "
                                       "to the keyring)")
    values = defaults()
    for key, val in doc.items():
        if isinstance(val, dict):
            for sk, sv in val.items():
                full = f"{key}.{sk}"
                if full not in BY_KEY:
                    raise ProfileFileError(f"{source}: {full}: is not a known setting")
                values[full] = str(sv).lower() if isinstance(sv, bool) else str(sv)
        elif key in BY_KEY:
            values[key] = str(val).lower() if isinstance(val, bool) else str(val)
        else:
            raise ProfileFileError(f"{source}: {key}: is not a known setting")
    return values
