"""The profile's ``[vpn]`` table: its schema, parser and writer, pure.

No file, socket or clock.  Errors name the file and the key
(``corp.toml: vpn.gateways[1]: ...``) and never echo a secret.  The VICI
messages that load a profile into charon are ``app.vpn.vici_messages``; the
files it names are read by ``app.vpn.credentials``.

    [vpn]
    gateways = ["vpn1.corp.example", "192.0.2.7"]   # tried in this order
    identity = "alice@corp.example"                 # our IKE identity (EAP identity too)
    remote_identity = "vpn.corp.example"            # optional: default, each gateway's name
    auth = "psk"                                    # "eap-mschapv2" or "pubkey"
    ca_file = "/etc/trustroam/corp-ca.pem"          # the gateway's CA (EAP, pubkey)
    cert_file = "/etc/trustroam/alice.pem"          # pubkey only
    key_file = "/etc/trustroam/alice.key"           # pubkey only (may be encrypted)
    keep_alive_inside = false                       # RFC 5266 3.4.2's MAY
    dpd_delay = 10                                  # seconds (>= 1; DPD cannot be off)
    dead_gateway_after = 10                         # seconds: a silent gateway is left
    intranet = ["10.0.0.0/8"]                       # optional: default, the home network
    ike_proposals = ["aes128-sha256-x25519"]        # optional: default, charon's
    esp_proposals = ["aes128gcm16-x25519"]          # optional: default, charon's

Only what is secure is accepted (errors name the key): identities that name one
peer (no ``%any``, ``*``, address ranges or typed prefixes such as ``fqdn:``),
proposals from ``ALLOWED`` (no null encryption, MD5, DES/3DES or MODP groups
below 2048 bits) and no ``eap-md5``.

Secrets (``vpn_psk``, ``vpn_password``, ``vpn_key_passphrase``) come from the
secret agent or the root-only secrets file and reach charon over VICI only.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from app.config import ConfigError, Section, toml_string
from app.vpn.liveness import MIN_DEAD_AFTER, retransmit_total

# Names of secrets (keys of the secrets file / agent), not secrets.
SECRET_PSK = "vpn_psk"  # noqa: S105
SECRET_PASSWORD = "vpn_password"  # noqa: S105
SECRET_KEY_PASSPHRASE = "vpn_key_passphrase"  # noqa: S105
SECRET_KEYS = (SECRET_PSK, SECRET_PASSWORD, SECRET_KEY_PASSPHRASE)

# Keys that would put a secret into the profile file; rejected with a pointer to
# where secrets belong.
_SECRET_LIKE = ("psk", "password", "secret", "passphrase", "key", *SECRET_KEYS)
_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_PROPOSAL_RE = re.compile(r"^[a-z0-9_]+(-[a-z0-9_]+)*$")


class AuthMethod(Enum):
    PSK = "psk"
    EAP_MSCHAPV2 = "eap-mschapv2"
    PUBKEY = "pubkey"

    @property
    def is_eap(self) -> bool:
        return self is AuthMethod.EAP_MSCHAPV2


REFUSED_AUTH = {
    "eap-md5": "it derives no key, so nothing binds it to the IKE SA (RFC 7296 2.16: "
               "SHOULD NOT), and it lets whoever answers try the password offline; "
               "use \"eap-mschapv2\" or \"pubkey\"",
}

# strongSwan's proposal keywords that are secure (RFC 8221, RFC 8247), by role.
_AES = ("aes128", "aes192", "aes256")
ENCRYPTION = frozenset({"aes", *_AES, *(a + "ctr" for a in _AES)})
AEAD = frozenset({"chacha20poly1305",
                  *(a + m for a in _AES for m in ("gcm16", "gcm128", "ccm16", "ccm128"))})
INTEGRITY = frozenset({"sha256", "sha384", "sha512", "sha2_256", "sha2_384", "sha2_512",
                       "sha1", "sha", "aesxcbc", "aescmac"})
PRF = frozenset({"prfsha256", "prfsha384", "prfsha512", "prfsha1", "prfaesxcbc",
                 "prfaescmac"})
KEY_EXCHANGE = frozenset({"modp2048", "modp3072", "modp4096", "modp6144", "modp8192",
                          "ecp256", "ecp384", "ecp521", "ecp256bp", "ecp384bp", "ecp512bp",
                          "curve25519", "x25519", "curve448", "x448"})
ESN = frozenset({"esn", "noesn"})
_WHY_NOT = (("null", "null encryption"), ("md5", "MD5"), ("des", "DES/3DES"),
            ("modp", "a MODP group below 2048 bits or with a small subgroup"))

# strongSwan identities that match more than one peer, or carry a type prefix
# (libstrongswan identification_create_from_string).
_ANY_IDS = frozenset({"", "%any", "%any6", "0.0.0.0", "*", "::", "0::0"})
_TYPED_IDS = ("ipv4:", "ipv6:", "ipv4net:", "ipv6net:", "ipv4range:", "ipv6range:",
              "rfc822:", "email:", "userfqdn:", "fqdn:", "dns:", "asn1dn:", "asn1gn:",
              "xmppaddr:", "keyid:")
_NUMERIC_TYPE_RE = re.compile(r"^\{[^}]*\}:")


@dataclass(frozen=True)
class VpnConfig:
    gateways: tuple[str, ...]
    identity: str
    auth: AuthMethod = AuthMethod.PSK
    remote_identity: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keep_alive_inside: bool = False
    dpd_delay: int = 10
    dead_gateway_after: int = 10
    """Seconds of silence after which the gateway in use is dead and the next one of
    ``gateways`` is tried (``app.vpn.liveness`` sets charon's DPD to hold it)."""
    intranet: tuple[IPv4Network, ...] = ()
    ike_proposals: tuple[str, ...] = ()
    esp_proposals: tuple[str, ...] = ()

    def remote_id(self, gateway: str) -> str:
        """The identity the gateway must prove: the configured one, else its own name."""
        return self.remote_identity if self.remote_identity is not None else gateway

    @property
    def secrets_needed(self) -> tuple[str, ...]:
        """Secret keys without which ``load_shared`` cannot be built."""
        if self.auth is AuthMethod.PSK:
            return (SECRET_PSK,)
        if self.auth.is_eap:
            return (SECRET_PASSWORD,)
        return ()  # pubkey: the passphrase only if the key file is encrypted


# -- parsing -----------------------------------------------------------------

def parse(section: Section, home_network: IPv4Network) -> VpnConfig:
    """The ``[vpn]`` table of a profile (``section`` is ``top.sub("vpn")``)."""
    for k in _SECRET_LIKE:
        if section.has(k):
            raise section.error(k, "secrets do not belong in a profile: VPN secrets come "
                                   "from the keyring (tray) or the root-only secrets file")
    gateways = _str_list(section, "gateways", required=True)
    if not gateways:
        raise section.error("gateways", "must name at least one VPN gateway")
    for i, gw in enumerate(gateways):
        if not _is_host(gw):
            raise ConfigError(section.file, f"{section.key('gateways')}[{i}]",
                              f"{gw!r} is not an IP address or host name")
        if _is_wildcard_address(gw):
            # Also the default remote identity: "0.0.0.0" would match any peer.
            raise ConfigError(section.file, f"{section.key('gateways')}[{i}]",
                              f"{gw!r} is not one gateway's address")
        if gw in gateways[:i]:
            raise ConfigError(section.file, f"{section.key('gateways')}[{i}]",
                              f"{gw!r} is listed twice")
    identity = _identity(section, "identity", required=True)
    assert identity is not None
    remote_identity = _identity(section, "remote_identity", required=False)
    if section.has("auth") and section.str_("auth") in REFUSED_AUTH:
        name = section.str_("auth")
        raise section.error("auth", f"{name!r} is refused: {REFUSED_AUTH[name]}")
    auth = section.enum("auth", AuthMethod, AuthMethod.PSK)
    ca_file = _abs_path(section, "ca_file")
    cert_file = _abs_path(section, "cert_file")
    key_file = _abs_path(section, "key_file")
    if auth is AuthMethod.PUBKEY:
        for name, value in (("cert_file", cert_file), ("key_file", key_file)):
            if value is None:
                raise section.error(name, "is required with auth = \"pubkey\"")
    else:
        for name, value in (("cert_file", cert_file), ("key_file", key_file)):
            if value is not None:
                raise section.error(name, f"is only used with auth = \"pubkey\" "
                                          f"(auth is {auth.value!r})")
    intranet = tuple(_networks(section, "intranet")) or (home_network,)
    cfg = VpnConfig(
        gateways=tuple(gateways), identity=identity, auth=auth,
        remote_identity=remote_identity, ca_file=ca_file, cert_file=cert_file,
        key_file=key_file,
        keep_alive_inside=section.bool_("keep_alive_inside", False),
        dpd_delay=_dpd_delay(section),
        dead_gateway_after=_dead_after(section),
        intranet=intranet,
        ike_proposals=tuple(_proposals(section, "ike_proposals")),
        esp_proposals=tuple(_proposals(section, "esp_proposals")),
    )
    section.done()
    return cfg


def parse_table(table: Mapping[str, Any], source: str, home_network: IPv4Network
                ) -> VpnConfig:
    """Convenience for callers holding the raw ``[vpn]`` table."""
    return parse(Section(source, "vpn", table), home_network)


def dump(cfg: VpnConfig, home_network: IPv4Network) -> list[str]:
    """The ``[vpn]`` table's lines (without the header), so that ``parse`` of them
    gives ``cfg`` back.  Defaults are left out: the file says only what was chosen
    (an intranet equal to the home network follows it if home_network changes)."""
    def strings(values: Sequence[str]) -> str:
        return "[" + ", ".join(toml_string(v) for v in values) + "]"

    lines = [f"gateways = {strings(cfg.gateways)}", f"identity = {toml_string(cfg.identity)}"]
    if cfg.remote_identity is not None:
        lines.append(f"remote_identity = {toml_string(cfg.remote_identity)}")
    lines.append(f"auth = {toml_string(cfg.auth.value)}")
    for name, path in (("ca_file", cfg.ca_file), ("cert_file", cfg.cert_file),
                       ("key_file", cfg.key_file)):
        if path is not None:
            lines.append(f"{name} = {toml_string(str(path))}")
    lines += [f"keep_alive_inside = {str(cfg.keep_alive_inside).lower()}",
              f"dpd_delay = {cfg.dpd_delay}"]
    if cfg.dead_gateway_after != 10:
        lines.append(f"dead_gateway_after = {cfg.dead_gateway_after}")
    if cfg.intranet and cfg.intranet != (home_network,):
        lines.append(f"intranet = {strings([str(n) for n in cfg.intranet])}")
    if cfg.ike_proposals:
        lines.append(f"ike_proposals = {strings(cfg.ike_proposals)}")
    if cfg.esp_proposals:
        lines.append(f"esp_proposals = {strings(cfg.esp_proposals)}")
    return lines


def _dpd_delay(section: Section) -> int:
    """``dpd_delay``: 0 once meant DPD off; a dead gateway would then never be left
    (the failover needs DPD), so it is refused rather than changed in silence."""
    value = section.int_("dpd_delay", 10, lo=0, hi=3600)
    if value == 0:
        raise section.error("dpd_delay", "0 (DPD off) is not allowed: a dead gateway "
                            "would never be found within dead_gateway_after; leave "
                            "dpd_delay out (dead_gateway_after then decides) or give "
                            "seconds")
    return value


def _dead_after(section: Section) -> int:
    """``dead_gateway_after``: at least charon's retransmissions plus a 1 s DPD delay."""
    value = section.int_("dead_gateway_after", 10, lo=0, hi=3600)
    if value < MIN_DEAD_AFTER:
        raise section.error("dead_gateway_after",
                            f"must be at least {MIN_DEAD_AFTER} s, got {value}: charon "
                            f"retransmits a liveness check for {retransmit_total():.1f} s "
                            "before it gives up (packaging/strongswan/trustroam.conf)")
    return value


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_wildcard_address(text: str) -> bool:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return ip.is_unspecified or ip.is_multicast or text == "255.255.255.255"


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(_HOST_RE.match(text)) and not text.replace(".", "").isdigit()
    return True


def _str_list(section: Section, name: str, *, required: bool = False) -> list[str]:
    return section.str_list(name, required=required)


def _identity(section: Section, name: str, *, required: bool) -> str | None:
    value = section.str_(name, required=True) if required else section.optional_str(name)
    if value is None:
        return None
    if not value.strip() or not 0 < len(value.encode()) <= 255:
        raise section.error(name, "must be 1 to 255 bytes of text")
    if any(c in value for c in "\0\n\r"):
        raise section.error(name, "must be one line of text")
    why = identity_problem(value)
    if why:
        raise section.error(name, f"{value!r} {why}")
    return value


def identity_problem(value: str) -> str:
    """Why charon would take ``value`` for more than one peer's identity (or for a
    typed one, which we do not write), or "" when it names one peer."""
    text = value.strip()
    low = text.lower()
    if low in _ANY_IDS or text.startswith("%"):
        return "matches any peer; name the one identity"
    if low.startswith(_TYPED_IDS) or _NUMERIC_TYPE_RE.match(text) or text.startswith("@#"):
        return "has a type prefix; write the identity itself (e.g. vpn.corp.example)"
    if "*" in text:
        return "has a wildcard '*'; name the one identity"
    if "=" not in text and "@" not in text:
        for sep in "/-":
            head = text.split(sep, 1)[0]
            if sep in text and _is_ip(head):
                return "is an address range; name the one address"
    return ""


def _abs_path(section: Section, name: str) -> Path | None:
    value = section.optional_str(name)
    if value is None:
        return None
    path = Path(value)
    if not path.is_absolute():
        raise section.error(name, f"{value!r} must be an absolute path")
    if ".." in path.parts:
        raise section.error(name, f"{value!r} must not contain '..'")
    return path


def _networks(section: Section, name: str) -> list[IPv4Network]:
    out = []
    for i, text in enumerate(_str_list(section, name)):
        try:
            out.append(IPv4Network(text, strict=True))
        except ValueError:
            raise ConfigError(section.file, f"{section.key(name)}[{i}]",
                              f"{text!r} is not an IPv4 network like 10.0.0.0/8") from None
    return out


def _proposals(section: Section, name: str) -> list[str]:
    values = _str_list(section, name)
    esp = name == "esp_proposals"
    for i, text in enumerate(values):
        if not _PROPOSAL_RE.match(text):
            raise ConfigError(section.file, f"{section.key(name)}[{i}]",
                              f"{text!r} is not a proposal like aes128-sha256-x25519")
        why = proposal_problem(text, esp=esp)
        if why:
            raise ConfigError(section.file, f"{section.key(name)}[{i}]", f"{text!r}: {why}")
    return values


def proposal_problem(text: str, *, esp: bool) -> str:
    """Why a strongSwan proposal is not secure enough, or "" (README: VPN profile)."""
    allowed = ENCRYPTION | AEAD | INTEGRITY | KEY_EXCHANGE | (ESN if esp else PRF)
    tokens = text.split("-")
    for t in tokens:
        if t not in allowed:
            weak = next((why for word, why in _WHY_NOT if word in t), None)
            return (f"{t!r} is {weak}, which is not allowed" if weak else
                    f"{t!r} is not an allowed algorithm here (see the README's VPN profile)")
    enc = [t for t in tokens if t in ENCRYPTION]
    aead = [t for t in tokens if t in AEAD]
    if enc and aead:
        return "mixes AEAD and non-AEAD encryption"
    if not (enc or aead):
        return "has no encryption algorithm"
    if enc and not any(t in INTEGRITY for t in tokens):
        return "has no integrity algorithm"
    if not esp and not any(t in KEY_EXCHANGE for t in tokens):
        return "has no key exchange (Diffie-Hellman) group"
    return ""
