"""The exact VICI messages built from a [vpn] profile (issue 12)."""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path

import pytest

from app.vpn.profile import AuthMethod, VpnConfig
from app.vpn.vici_messages import (
    Certificates,
    SecretMissing,
    describe,
    initiate,
    list_sas,
    load_conn,
    load_key,
    load_shared,
    terminate,
    unload_conn,
    unload_shared,
)


def lab_cfg(**kw: object) -> VpnConfig:
    base: dict[str, object] = {"gateways": ("172.16.0.11", "172.16.0.12"),
                               "identity": "mn@lab", "intranet": (IPv4Network("10.0.0.0/8"),),
                               "dpd_delay": 2, "dead_gateway_after": 11}
    base.update(kw)
    return VpnConfig(**base)  # type: ignore[arg-type]


def test_rfc5266_3_3_load_conn_asks_for_mobike_and_a_tia():
    """The lab's tried client: remote_addrs, vips 0.0.0.0, mobike, dpd_delay, child
    remote_ts = intranet, and nothing started by charon on its own."""
    msg = load_conn(lab_cfg(ike_proposals=("aes128-sha256-x25519",),
                            esp_proposals=("aes128gcm16-x25519",)), "172.16.0.12")
    assert msg == {"trustroam": {
        "version": "2",
        "remote_addrs": ["172.16.0.12"],
        "vips": ["0.0.0.0"],
        "mobike": "yes",
        "dpd_delay": "2s",
        "keyingtries": "1",
        "proposals": ["aes128-sha256-x25519"],
        "local": {"id": "mn@lab", "auth": "psk"},
        "remote": {"id": "172.16.0.12", "auth": "psk"},
        "children": {"intranet": {"remote_ts": ["10.0.0.0/8"], "start_action": "none",
                                  "dpd_action": "clear", "close_action": "none",
                                  "set_mark_out": "0x5453",
                                  "esp_proposals": ["aes128gcm16-x25519"]}},
    }}


def test_load_conn_gateway_must_be_configured():
    with pytest.raises(ValueError, match="not one of"):
        load_conn(lab_cfg(), "192.0.2.1")


@pytest.mark.parametrize("auth", [AuthMethod.EAP_MSCHAPV2])
def test_load_conn_eap_the_gateway_proves_itself_with_a_certificate(auth):
    msg = load_conn(lab_cfg(auth=auth, remote_identity="vpn.corp.example"),
                    "172.16.0.11", Certificates(ca=b"CA-PEM"))["trustroam"]
    assert msg["local"] == {"id": "mn@lab", "auth": auth.value, "eap_id": "mn@lab"}
    assert msg["remote"] == {"id": "vpn.corp.example", "auth": "pubkey",
                             "cacerts": [b"CA-PEM"]}


def test_load_conn_pubkey_sends_certificate_contents():
    msg = load_conn(lab_cfg(auth=AuthMethod.PUBKEY, cert_file=Path("/c"),
                            key_file=Path("/k")), "172.16.0.11",
                    Certificates(ca=b"CA", cert=b"CERT"))["trustroam"]
    assert msg["local"] == {"id": "mn@lab", "auth": "pubkey", "certs": [b"CERT"]}
    assert msg["remote"]["auth"] == "pubkey" and msg["remote"]["cacerts"] == [b"CA"]


def test_load_conn_psk_sends_no_ca():
    msg = load_conn(lab_cfg(), "172.16.0.11", Certificates(ca=b"CA"))["trustroam"]
    assert "cacerts" not in msg["remote"]


def test_load_shared_psk_owned_by_us_and_the_gateways():
    (msg,) = load_shared(lab_cfg(), {"vpn_psk": "s3cret", "vpn_password": "unused"})
    assert msg == {"id": "trustroam-psk", "type": "IKE", "data": "s3cret",
                   "owners": ["mn@lab", "172.16.0.11", "172.16.0.12"]}
    assert unload_shared(lab_cfg()) == [{"id": "trustroam-psk"}]


def test_load_shared_eap_password():
    cfg = lab_cfg(auth=AuthMethod.EAP_MSCHAPV2)
    (msg,) = load_shared(cfg, {"vpn_password": "pw"})
    assert msg == {"id": "trustroam-eap", "type": "EAP", "data": "pw", "owners": ["mn@lab"]}


def test_load_shared_pubkey_needs_nothing():
    cfg = lab_cfg(auth=AuthMethod.PUBKEY, cert_file=Path("/c"), key_file=Path("/k"))
    assert load_shared(cfg, {}) == []
    assert load_key(b"KEY") == {"type": "any", "data": b"KEY"}


@pytest.mark.parametrize(("auth", "key"), [(AuthMethod.PSK, "vpn_psk"),
                                           (AuthMethod.EAP_MSCHAPV2, "vpn_password")])
def test_missing_secret_names_the_key(auth, key):
    with pytest.raises(SecretMissing) as exc:
        load_shared(lab_cfg(auth=auth), {"vpn_psk": "", "other": "x"})
    assert exc.value.key == key and key in str(exc.value)


def test_initiate_terminate_and_list_arguments():
    assert initiate(timeout=7.5) == {"ike": "trustroam", "child": "intranet",
                                     "timeout": "7500"}
    assert terminate(timeout=2) == {"ike": "trustroam", "timeout": "2000", "force": "yes"}
    assert list_sas() == {"ike": "trustroam"}
    assert unload_conn() == {"name": "trustroam"}


def test_describe_never_shows_values():
    keys = describe({"a": "s3cret", "b": {"c": "s3cret"}})
    assert keys == ["a", "b.c"]


def test_terminate_without_patience_drops_the_sa_at_once():
    # strongSwan's vici: force with no timeout destroys the IKE SA without waiting.
    assert terminate(timeout=0) == {"ike": "trustroam", "timeout": "0", "force": "yes"}


# -- what is not secure is refused, naming the key (security review 2026-12-07, 7) --
