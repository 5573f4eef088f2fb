"""A profile as the editor holds it: text fields, checked as the user types.

The rules mirror the helper's (app/mn/profile.py), which stays the judge: this
is a friendly first pass and SaveProfile's answer is shown as it comes.  The
``[vpn]`` table is checked by the helper's own parser (app/vpn/profile.py: pure,
no I/O), so its messages are the helper's, naming the field.  No secret ever enters this model:
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
# In [vpn], key_file is the path of the certificate's private key, not a secret.
VPN_SECRET_KEYS = (*(k for k in SECRET_KEYS if k != "key_file"), "passphrase")
ALGORITHMS = ("hmac-md5", "keyed-md5")
VPN_AUTHS = ("psk", "eap-mschapv2", "pubkey")
# Which secret the VPN's authentication needs (the key passphrase only when the
# key file is encrypted: optional).
VPN_SECRET_FOR_AUTH = {"psk": "vpn_psk", "eap-mschapv2": "vpn_password",
                       "pubkey": "vpn_key_passphrase"}


@dataclass(frozen=True)
class Field:
    key: str  # the TOML key, dotted for sub-tables (probe.retries)
    label: str
    default: str
    kind: str = "text"  # text, int, float, bool, choice, list (comma-separated)
    required: bool = False
    choices: tuple[str, ...] = ()


FIELDS = (
    Field("name", "Name", "", required=True),
    Field("home_address", "Home address", "", required=True),
    Field("home_network", "Home network", "", required=True),
    Field("home_agent", "Home agent", "", required=True),
    Field("spi", "SPI", "256", "int", required=True),
    Field("algorithm", "Algorithm", "hmac-md5", "choice", choices=ALGORITHMS),
    Field("nai", "NAI (optional)", ""),
    Field("lifetime", "Lifetime (s)", "600", "int"),
    Field("renew_fraction", "Renew at fraction", "0.75", "float"),
    Field("interface", "Interface (optional)", ""),
    Field("replay", "Replay protection", "timestamp", "choice", choices=("timestamp", "nonce")),
    Field("udp_tunnelling", "UDP tunnelling (RFC 3519)", "auto", "choice",
          choices=("auto", "force", "off")),
    Field("autoconnect", "Connect when the computer starts", "false", "bool"),
    Field("probe.initial_timeout", "Probe timeout (s)", "1.0", "float"),
    Field("probe.retries", "Probe retries", "2", "int"),
    Field("features.foreign_agents", "Use foreign agents", "true", "bool"),
    Field("features.gate", "Block traffic while undecided", "true", "bool"),
    Field("features.allow_lan", "Allow the local network in clear (modes c, mc)", "false",
          "bool"),
    Field("dns.servers", "Intranet DNS servers (optional, comma-separated)", "", "list"),
    Field("dns.domains", "DNS search domains (optional, comma-separated)", "", "list"),
    # [vpn]: the untrusted side (mode mc); left out of the file while no gateway is given.
    Field("vpn.gateways", "VPN gateways (comma-separated)", "", "list"),
    Field("vpn.identity", "VPN identity", ""),
    Field("vpn.remote_identity", "VPN gateway identity (optional)", ""),
    Field("vpn.auth", "VPN authentication", "psk", "choice", choices=VPN_AUTHS),
    Field("vpn.ca_file", "VPN CA file", ""),
    Field("vpn.cert_file", "VPN certificate file (pubkey)", ""),
    Field("vpn.key_file", "VPN private key file (pubkey)", ""),
    Field("vpn.keep_alive_inside", "Keep-alives inside the VPN", "false", "bool"),
    Field("vpn.dpd_delay", "VPN dead-peer detection (s)", "10", "int"),
    Field("vpn.dead_gateway_after", "VPN gateway dead after (s, then the next)", "10", "int"),
    Field("vpn.intranet", "Intranet networks (optional, comma-separated)", "", "list"),
    Field("vpn.ike_proposals", "IKE proposals (optional, charon's default)", "", "list"),
    Field("vpn.esp_proposals", "ESP proposals (optional, charon's default)", "", "list"),
)
VPN_TEXT_KEYS = tuple(f.key for f in FIELDS
                      if f.key.startswith("vpn.") and f.kind in ("text", "list"))
BY_KEY = {f.key: f for f in FIELDS}


def defaults() -> dict[str, str]:
    return {f.key: f.default for f in FIELDS}


def vpn_active(values: dict[str, str]) -> bool:
    """Whether the profile has a [vpn] table: any of its text fields filled in."""
    return any(values.get(k, "").strip() for k in VPN_TEXT_KEYS)


def vpn_secret(values: dict[str, str]) -> str | None:
    """The secret key name the profile's VPN authentication uses, if it has a VPN."""
    if not vpn_active(values):
        return None
    return VPN_SECRET_FOR_AUTH.get(values.get("vpn.auth", "psk").strip() or "psk")


def _split(v: str) -> list[str]:
    return [x.strip() for x in v.split(",") if x.strip()]


def _vpn_table(values: dict[str, str]) -> dict[str, object]:
    table: dict[str, object] = {}
    for f in FIELDS:
        if not f.key.startswith("vpn."):
            continue
        v = values.get(f.key, f.default).strip()
        key = f.key.removeprefix("vpn.")
        if f.kind == "list":
            if v:
                table[key] = _split(v)
        elif f.kind == "bool":
            table[key] = v.lower() == "true"
        elif f.kind == "int":
            try:
                table[key] = int(v)
            except ValueError:
                table[key] = v  # the parser names the field
        elif v:
            table[key] = v
    return table


def _validate_vpn(values: dict[str, str], net: IPv4Network | None) -> tuple[str, str] | None:
    """(field, message) of the first problem the helper's [vpn] parser finds."""
    from app.config import ConfigError
    from app.vpn.profile import parse_table

    try:
        parse_table(_vpn_table(values), "profile", net or IPv4Network("0.0.0.0/32"))
    except ConfigError as exc:
        field = re.sub(r"\[\d+\]$", "", exc.key)  # vpn.gateways[1] -> vpn.gateways
        if field not in BY_KEY:
            field = "vpn.gateways"
        return field, f"{exc.key or 'vpn'}: {exc.message}"
    return None


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
    for f in FIELDS:
        if f.kind == "choice" and values.get(f.key, f.default) not in f.choices:
            err(f.key, f"must be one of {', '.join(f.choices)}")
    nai = values.get("nai", "")
    if len(nai.encode()) > 255:
        err("nai", "must be 1 to 255 bytes")
    iface = values.get("interface", "").strip()
    if iface and len(iface.encode()) >= 16:
        err("interface", f"{iface!r} is not an interface name")
    if vpn_active(values) and (problem := _validate_vpn(values, net)):
        errs.setdefault(*problem)
    return errs


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_toml(values: dict[str, str]) -> str:
    """The profile file (what SaveProfile takes and Export writes); never a secret."""
    top: list[str] = []
    subs: dict[str, list[str]] = {"probe": [], "features": [], "dns": [], "vpn": []}
    has_vpn = vpn_active(values)
    for f in FIELDS:
        v = values.get(f.key, f.default).strip()
        if not v and not f.required:
            continue  # optional and empty: leave it out
        if f.key.startswith("vpn.") and not has_vpn:
            continue  # no gateway, identity...: no [vpn] table at all
        if f.kind == "list":
            text = "[" + ", ".join(_quote(x) for x in _split(v)) + "]"
        else:
            text = {"int": v, "float": v, "bool": v.lower()}.get(f.kind, _quote(v))
        table, _, key = f.key.rpartition(".")
        (subs[table] if table else top).append(f"{key} = {text}")
    out = top
    for table, lines in subs.items():
        if lines:
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
        for k in VPN_SECRET_KEYS if prefix == "vpn." else SECRET_KEYS:
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
                values[full] = _text(sv)
        elif key in BY_KEY:
            values[key] = _text(val)
        else:
            raise ProfileFileError(f"{source}: {key}: is not a known setting")
    return values


def _text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ", ".join(str(x) for x in value)
    return str(value)
