"""Every auth method's VICI messages are accepted by the real charon (root).

A private charon (its own network and mount namespace, not the lab's) loads the
connection, secrets, key and certificates the adapter builds for psk,
eap-mschapv2 and pubkey; charon's own view (``get-conns``, ``get-shared``,
``get-keys``) shows what arrived, and that closing the adapter (Disconnect, the
helper's stop) leaves none of it behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import vici

from app.lab import charon as lab_charon
from app.vpn.charon import Charon
from app.vpn.profile import AuthMethod, VpnConfig
from tests.requirements import require, require_root

SECRET = "correct-horse-battery"


@pytest.fixture
async def private_charon(tmp_path: Path) -> AsyncIterator[Path]:
    require_root("a private charon needs namespaces and a bind mount")
    require(Path(lab_charon.CHARON).exists(), "strongSwan's charon is not installed "
                                              "(scripts/install-deps installs it)")
    require(shutil.which("openssl") is not None, "openssl is not installed")
    d = lab_charon.prepare(tmp_path, "solo", gateway=None)
    proc = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private",
                             *lab_charon.command(d)], stdout=subprocess.DEVNULL,
                            stderr=(d / "stderr.log").open("w"), start_new_session=True)
    sock = d / "charon.vici"
    try:
        for _ in range(500):
            if sock.exists() or proc.poll() is not None:
                break
            await asyncio.sleep(0.02)  # charon signals readiness by its socket
        assert sock.exists(), (d / "stderr.log").read_text()
        yield sock
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _pki(d: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA, and a user certificate and encrypted key it signed."""
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "mn.key", "mn.csr",
                                                   "mn.pem"))

    def run(*argv: str) -> None:
        subprocess.run(["openssl", *argv], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ed25519", "-nodes", "-subj", "/CN=Lab CA", "-days", "2",
        "-keyout", str(ca_key), "-out", str(ca))
    run("genpkey", "-algorithm", "ed25519", "-aes256", "-pass", f"pass:{SECRET}",
        "-out", str(key))
    run("req", "-new", "-key", str(key), "-passin", f"pass:{SECRET}", "-subj",
        "/CN=mn@lab", "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-out", str(cert))
    key.chmod(0o600)  # as the helper reads a private key: root's alone
    ca.chmod(0o644)
    cert.chmod(0o644)
    return ca, cert, key


@pytest.mark.parametrize("auth", list(AuthMethod))
async def test_charon_accepts_each_auth_method(private_charon, tmp_path, auth):
    ca, cert, key = _pki(tmp_path)
    pubkey = auth is AuthMethod.PUBKEY
    cfg = VpnConfig(gateways=("172.16.0.11", "vpn2.example"), identity="mn@lab",
                    auth=auth, ca_file=None if auth is AuthMethod.PSK else ca,
                    cert_file=cert if pubkey else None, key_file=key if pubkey else None,
                    intranet=(IPv4Network("10.0.0.0/8"),), dpd_delay=5,
                    ike_proposals=("aes128-sha256-x25519",),
                    esp_proposals=("aes128gcm16-x25519",))
    secrets = {"vpn_psk": SECRET, "vpn_password": SECRET, "vpn_key_passphrase": SECRET}
    a = Charon(private_charon, call_timeout=5.0)
    try:
        assert await a.start()
        await a.load(cfg, secrets)
        conns = await a._call("get-conns", lambda s: s.get_conns(), 5.0)
        assert conns["conns"] == [b"trustroam"]
        listed = await a._call("list-conns", lambda s: list(s.list_conns()), 5.0)
        conn = listed[0]["trustroam"]
        assert conn["remote_addrs"] == [b"172.16.0.11"] and conn["version"] == b"IKEv2"
        assert conn["children"]["intranet"]["remote-ts"] == [b"10.0.0.0/8"]
        local, remote = conn["local-1"], conn["remote-1"]
        assert local["id"] == b"mn@lab" and remote["id"] == b"172.16.0.11"
        if auth is AuthMethod.PSK:
            assert local["class"] == remote["class"] == b"pre-shared key"
            assert remote["cacerts"] == []
        else:
            # EAP or a certificate for us; the gateway always proves itself with a
            # certificate under the profile's CA.
            assert remote["class"] == b"public key" and remote["cacerts"] == [b"CN=Lab CA"]
        if auth.is_eap:
            assert local["class"] == b"EAP" and local["eap_id"] == b"mn@lab"
            assert local["eap-type"] == auth.value.upper().replace("-", "_").encode()
        if auth is AuthMethod.PUBKEY:
            assert local["class"] == b"public key" and local["certs"] == [b"CN=mn@lab"]
        keys = await a._call("get-keys", lambda s: s.get_keys(), 5.0)
        assert bool(keys.get("keys")) is pubkey, "the decrypted key reached charon"
        if auth is not AuthMethod.PUBKEY:
            shared = await a._call("get-shared", lambda s: s.get_shared(), 5.0)
            assert shared["keys"] == [b"trustroam-psk" if auth is AuthMethod.PSK
                                      else b"trustroam-eap"]
        # Loading again (charon back, profile switched) replaces, never duplicates.
        await a.load(cfg, secrets)
        conns = await a._call("get-conns", lambda s: s.get_conns(), 5.0)
        assert conns["conns"] == [b"trustroam"]
        # Disconnect / stop: the adapter closes, and charon keeps nothing of ours.
        await a.close()
        assert _left_in_charon(private_charon) == {"conns": [], "shared": [], "keys": []}
    finally:
        await a.close()


def _left_in_charon(sock: Path) -> dict[str, list[bytes]]:
    """charon's own lists, asked on a session of the test's."""
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as raw:
        raw.connect(str(sock))
        s = vici.Session(raw)
        return {"conns": list(s.get_conns().get("conns", [])),
                "shared": list(s.get_shared().get("keys", [])),
                "keys": list(s.get_keys().get("keys", []))}
