"""The exact VICI messages that load a ``[vpn]`` profile into charon and drive it.

Pure: no file, socket or clock.  File contents (certificates) and secrets come
in as arguments; the adapter (``app.vpn.charon``) reads, sends and receives.
A message is a plain dict as the ``vici`` package sends it; ``describe`` names
its keys for logs, never its values (they may be secrets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from app.net.gate_rules import CHARON_MARK
from app.vpn.liveness import dpd_delay_for
from app.vpn.profile import SECRET_PASSWORD, SECRET_PSK, AuthMethod, VpnConfig

CONNECTION = "trustroam"
"""The name of our connection in charon (one VPN profile active at a time)."""
CHILD = "intranet"


class SecretMissing(Exception):
    """A secret the profile's auth method needs was not supplied (names the key only)."""

    def __init__(self, key: str, auth: AuthMethod) -> None:
        super().__init__(f"{key} is missing: auth = {auth.value!r} needs it")
        self.key = key


@dataclass(frozen=True)
class Certificates:
    """PEM/DER contents of the profile's public files (read by ``app.vpn.credentials``)."""

    ca: bytes | None = None
    cert: bytes | None = None


def load_conn(cfg: VpnConfig, gateway: str, certs: Certificates = Certificates(),
              name: str = CONNECTION) -> dict[str, Any]:
    """``load-conn`` for one gateway (charon initiates only to the first remote address,
    so the adapter loads the next gateway when one fails)."""
    if gateway not in cfg.gateways:
        raise ValueError(f"{gateway!r} is not one of the profile's gateways")
    local: dict[str, Any] = {"id": cfg.identity}
    remote: dict[str, Any] = {"id": cfg.remote_id(gateway)}
    if cfg.auth is AuthMethod.PSK:
        local["auth"] = "psk"
        remote["auth"] = "psk"
    elif cfg.auth.is_eap:
        # EAP authenticates us only; the gateway proves itself with a certificate.
        local["auth"] = cfg.auth.value
        local["eap_id"] = cfg.identity
        remote["auth"] = "pubkey"
    else:
        local["auth"] = "pubkey"
        remote["auth"] = "pubkey"
        if certs.cert is not None:
            local["certs"] = [certs.cert]
    if remote["auth"] == "pubkey" and certs.ca is not None:
        remote["cacerts"] = [certs.ca]
    child: dict[str, Any] = {
        "remote_ts": [str(n) for n in cfg.intranet],
        # The access-mode machine decides when to bring the tunnel up.
        "start_action": "none",
        "dpd_action": "clear",
        "close_action": "none",
        # What kernel ESP sends for this SA carries charon's mark: the gate lets
        # only that reach the gateways (kernel-libipsec's ESP leaves from charon's
        # marked socket anyway).
        "set_mark_out": f"{CHARON_MARK:#x}",
    }
    if cfg.esp_proposals:
        child["esp_proposals"] = list(cfg.esp_proposals)
    conn: dict[str, Any] = {
        "version": "2",
        "remote_addrs": [gateway],
        "vips": ["0.0.0.0"],  # ask for a tunnel inner address (RFC 5266's TIA)
        "mobike": "yes",
        # IKEv2's DPD timeout is charon's global retransmission (app.vpn.liveness):
        # the delay alone is ours to set, within the profile's dead_gateway_after.
        "dpd_delay": f"{dpd_delay_for(cfg.dead_gateway_after, cfg.dpd_delay)}s",
        "keyingtries": "1",  # the adapter moves on to the next gateway itself
        "local": local,
        "remote": remote,
        "children": {CHILD: child},
    }
    if cfg.ike_proposals:
        conn["proposals"] = list(cfg.ike_proposals)
    return {name: conn}


def load_shared(cfg: VpnConfig, secrets: Mapping[str, str], name: str = CONNECTION
                ) -> list[dict[str, Any]]:
    """``load-shared`` messages for the profile's auth method (none for pubkey).

    Each carries a unique ``id`` so loading again replaces rather than adds.
    """
    needed = cfg.secrets_needed
    for key in needed:
        if not secrets.get(key):
            raise SecretMissing(key, cfg.auth)
    if cfg.auth is AuthMethod.PSK:
        owners = [cfg.identity, *(cfg.remote_id(gw) for gw in cfg.gateways)]
        return [{"id": f"{name}-psk", "type": "IKE", "data": secrets[SECRET_PSK],
                 "owners": list(dict.fromkeys(owners))}]
    if cfg.auth.is_eap:
        return [{"id": f"{name}-eap", "type": "EAP", "data": secrets[SECRET_PASSWORD],
                 "owners": [cfg.identity]}]
    return []


def unload_shared(cfg: VpnConfig, name: str = CONNECTION) -> list[dict[str, Any]]:
    if cfg.auth is AuthMethod.PSK:
        return [{"id": f"{name}-psk"}]
    if cfg.auth.is_eap:
        return [{"id": f"{name}-eap"}]
    return []


def load_key(key_pem: bytes) -> dict[str, Any]:
    """``load-key`` for the (already decrypted) private key of auth = pubkey."""
    return {"type": "any", "data": key_pem}


def initiate(name: str = CONNECTION, timeout: float = 10.0) -> dict[str, Any]:
    """``initiate``: charon answers within ``timeout`` (ms on the wire)."""
    return {"ike": name, "child": CHILD, "timeout": str(int(timeout * 1000))}


def terminate(name: str = CONNECTION, timeout: float = 3.0) -> dict[str, Any]:
    """``terminate``: every IKE SA of the connection; after ``timeout`` without the
    gateway's DELETE answer charon drops it anyway (force), so this never hangs;
    ``timeout`` 0: dropped at once, the DELETE sent once and not waited for."""
    return {"ike": name, "timeout": str(int(timeout * 1000)), "force": "yes"}


def rekey_child(ike_id: int, child: str = CHILD) -> dict[str, Any]:
    """``rekey``: our CHILD SA(s) of IKE SA ``ike_id`` (a fresh pair of SAs)."""
    return {"child": child, "ike-id": str(ike_id)}


def list_sas(name: str = CONNECTION) -> dict[str, Any]:
    # Not "noblock": it skips an IKE SA that is busy (e.g. rekeying CHILD SAs right
    # after a MOBIKE move) and the tunnel would look gone.  The call has a timeout.
    return {"ike": name}


def unload_conn(name: str = CONNECTION) -> dict[str, Any]:
    return {"name": name}


def unload_key(key_id: str) -> dict[str, Any]:
    """``unload-key``: the id ``load-key`` answered (hex of the key's fingerprint)."""
    return {"id": key_id}


def describe(message: Mapping[str, Any]) -> Sequence[str]:
    """Key paths of a message, for logs: never the values (they may be secrets)."""
    out: list[str] = []
    for k, v in message.items():
        if isinstance(v, Mapping):
            out += [f"{k}.{sub}" for sub in describe(v)]
        else:
            out.append(k)
    return out
