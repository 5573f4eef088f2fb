"""The profile's [vpn] table: parsed, checked, refused naming the key (issue 12)."""

from __future__ import annotations

import tomllib
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from app.config import ConfigError
from app.vpn.profile import AuthMethod, VpnConfig, parse_table

HOME = IPv4Network("10.20.1.0/24")
GOOD = """
[vpn]
gateways = ["172.16.0.11", "vpn2.corp.example"]
identity = "alice@corp.example"
"""


def parse(text: str) -> VpnConfig:
    return parse_table(tomllib.loads(text)["vpn"], "corp.toml", HOME)


def test_defaults():
    cfg = parse(GOOD)
    assert cfg.gateways == ("172.16.0.11", "vpn2.corp.example")
    assert cfg.auth is AuthMethod.PSK and cfg.identity == "alice@corp.example"
    assert cfg.intranet == (HOME,), "the tunnel reaches the home network by default"
    assert not cfg.keep_alive_inside and cfg.dpd_delay == 10
    assert cfg.remote_id("172.16.0.11") == "172.16.0.11"


def test_everything_set():
    cfg = parse(GOOD + """remote_identity = "vpn.corp.example"
auth = "pubkey"
ca_file = "/etc/trustroam/ca.pem"
cert_file = "/etc/trustroam/alice.pem"
key_file = "/etc/trustroam/alice.key"
keep_alive_inside = true
dpd_delay = 3
intranet = ["10.0.0.0/8", "172.20.0.0/16"]
ike_proposals = ["aes128-sha256-x25519"]
esp_proposals = ["aes128gcm16-x25519"]
""")
    assert cfg.auth is AuthMethod.PUBKEY and cfg.keep_alive_inside and cfg.dpd_delay == 3
    assert cfg.remote_id("172.16.0.11") == "vpn.corp.example"
    assert cfg.key_file == Path("/etc/trustroam/alice.key")
    assert cfg.intranet == (IPv4Network("10.0.0.0/8"), IPv4Network("172.20.0.0/16"))


@pytest.mark.parametrize(("extra", "key", "words"), [
    ('auth = "eap-tls"', "vpn.auth", "must be one of"),
    ("dpd_delay = -1", "vpn.dpd_delay", "between 0 and 3600"),
    ('dpd_delay = "10s"', "vpn.dpd_delay", "must be an integer"),
    ("keep_alive_inside = 1", "vpn.keep_alive_inside", "true or false"),
    ('ca_file = "ca.pem"', "vpn.ca_file", "absolute path"),
    ('cert_file = "/x.pem"', "vpn.cert_file", 'only used with auth = "pubkey"'),
    ('auth = "pubkey"\nkey_file = "/k"', "vpn.cert_file", "is required"),
    ('auth = "pubkey"\ncert_file = "/c"', "vpn.key_file", "is required"),
    ('intranet = ["10.0.0.1/8"]', "vpn.intranet[0]", "not an IPv4 network"),
    ('intranet = "10.0.0.0/8"', "vpn.intranet", "array of strings"),
    ('ike_proposals = ["aes 128"]', "vpn.ike_proposals[0]", "not a proposal"),
    ('remote_identity = ""', "vpn.remote_identity", "1 to 255 bytes"),
    ('remote_identity = "a\\nb"', "vpn.remote_identity", "one line"),
    ('psk = "hunter2"', "vpn.psk", "secrets do not belong"),
    ('vpn_password = "hunter2"', "vpn.vpn_password", "secrets do not belong"),
    ('gatways = ["x"]', "vpn.gatways", "not a known setting"),
])
def test_bad_values_are_named(extra, key, words):
    with pytest.raises(ConfigError) as exc:
        parse(GOOD + extra + "\n")
    assert exc.value.key == key and words in str(exc.value), str(exc.value)
    assert str(exc.value).startswith(f"corp.toml: {key}: ")
    assert "hunter2" not in str(exc.value)


@pytest.mark.parametrize(("gateways", "key", "words"), [
    ("[]", "vpn.gateways", "at least one"),
    ('"172.16.0.11"', "vpn.gateways", "array of strings"),
    ('["172.16.0.11", "bad host!"]', "vpn.gateways[1]", "not an IP address or host name"),
    ('["172.16.0.11", "172.16.0.11"]', "vpn.gateways[1]", "listed twice"),
    ('["300.1.1.1"]', "vpn.gateways[0]", "not an IP address"),
])
def test_bad_gateways_are_named(gateways, key, words):
    with pytest.raises(ConfigError) as exc:
        parse(f'[vpn]\ngateways = {gateways}\nidentity = "a"\n')
    assert exc.value.key == key and words in str(exc.value), str(exc.value)


@pytest.mark.parametrize("missing", ["gateways", "identity"])
def test_required_keys(missing):
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(missing))
    with pytest.raises(ConfigError, match=f"vpn.{missing}: is required"):
        parse(text)


@pytest.mark.parametrize("key", ["identity", "remote_identity"])
@pytest.mark.parametrize(("value", "words"), [
    ("%any", "matches any peer"), ("%any6", "matches any peer"), ("*", "matches any peer"),
    ("0.0.0.0", "matches any peer"), ("::", "matches any peer"),
    ("*@corp.example", "wildcard"), ("C=CH, O=Corp, CN=*", "wildcard"),
    ("fqdn:vpn.corp.example", "type prefix"), ("KEYID:#00ff", "type prefix"),
    ("{2}:vpn.corp.example", "type prefix"), ("@#00ff", "type prefix"),
    ("10.0.0.0/8", "address range"), ("10.0.0.1-10.0.0.9", "address range"),
])
def test_identities_matching_more_than_one_peer_are_refused(key, value, words):
    with pytest.raises(ConfigError) as exc:
        parse(GOOD.replace('identity = "alice@corp.example"', "") +
              f'identity = "alice@corp.example"\n{key} = "{value}"\n'
              if key == "remote_identity" else
              GOOD.replace("alice@corp.example", value))
    assert exc.value.key == f"vpn.{key}" and words in str(exc.value), str(exc.value)


def test_identities_of_one_peer_are_kept():
    for value in ("alice@corp.example", "vpn-1.corp.example", "192.0.2.7", "2001:db8::1",
                  "C=CH, O=Corp, CN=vpn.corp.example", "@vpn.corp.example", "@@alice"):
        assert parse(GOOD + f'remote_identity = "{value}"\n').remote_identity == value


@pytest.mark.parametrize(("key", "value", "words"), [
    ("esp_proposals", "null-sha256", "'null' is null encryption"),
    ("esp_proposals", "aes128-md5", "'md5' is MD5"),
    ("ike_proposals", "3des-md5-modp768", "'3des' is DES/3DES"),
    ("ike_proposals", "des-sha256-modp2048", "'des' is DES/3DES"),
    ("ike_proposals", "aes128-sha256-modp1024", "'modp1024' is a MODP group below 2048"),
    ("ike_proposals", "aes128-sha256-modp1536", "'modp1536' is a MODP group below 2048"),
    ("ike_proposals", "aes128-sha256-modp2048s256", "MODP group"),
    ("ike_proposals", "aes256-prfmd5-sha256-x25519", "'prfmd5' is MD5"),
    ("ike_proposals", "blowfish128-sha256-x25519", "not an allowed algorithm"),
    ("ike_proposals", "aes128-sha256", "no key exchange"),
    ("esp_proposals", "aes128", "no integrity"),
    ("esp_proposals", "sha256", "no encryption"),
])
def test_weak_proposals_are_refused_naming_the_key(key, value, words):
    with pytest.raises(ConfigError) as exc:
        parse(GOOD + f'{key} = ["aes256gcm16-prfsha384-ecp384", "{value}"]\n'
              if key == "ike_proposals" else GOOD + f'{key} = ["aes256gcm16", "{value}"]\n')
    assert exc.value.key == f"vpn.{key}[1]" and words in str(exc.value), str(exc.value)


def test_secure_proposals_are_kept():
    cfg = parse(GOOD + 'ike_proposals = ["aes128-sha256-x25519", "aes256gcm16-prfsha384-'
                       'ecp384", "chacha20poly1305-prfsha256-curve448", "aes256-sha512-'
                       'modp4096"]\nesp_proposals = ["aes128gcm16-x25519", "aes256-sha256",'
                       ' "aes128gcm16-modp3072-esn"]\n')
    assert len(cfg.ike_proposals) == 4 and len(cfg.esp_proposals) == 3


def test_eap_md5_is_refused_and_says_why():
    with pytest.raises(ConfigError) as exc:
        parse(GOOD + 'auth = "eap-md5"\n')
    assert exc.value.key == "vpn.auth" and "RFC 7296 2.16" in str(exc.value)
    assert "eap-mschapv2" in str(exc.value)


@pytest.mark.parametrize(("extra", "key", "words"), [
    ('gateways = ["0.0.0.0"]', "vpn.gateways[0]", "not one gateway's address"),
    ('gateways = ["vpn.corp.example"]\nca_file = "/etc/trustroam/../shadow"', "vpn.ca_file",
     "must not contain '..'"),
])
def test_a_wildcard_gateway_and_dotdot_paths_are_refused(extra, key, words):
    with pytest.raises(ConfigError) as exc:
        parse(GOOD.replace('gateways = ["172.16.0.11", "vpn2.corp.example"]\n', "") + extra
              + "\n")
    assert exc.value.key == key and words in str(exc.value), str(exc.value)
