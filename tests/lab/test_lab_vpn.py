"""The lab's VPN side works with strongSwan on both ends: an MN on an untrusted
link gets a tunnel inner address from a DMZ gateway, reaches the intranet
through it, and keeps it across a MOBIKE move (pub -> nat)."""

from __future__ import annotations

import json
import subprocess
import time

from app.lab import charon
from app.lab.world import CHARON_DIR
from tests.lab.conftest import mn_address, ns_exec
from tests.lab.vpn_walk import MC_CLIENT

CLIENT = MC_CLIENT.format(gateway="172.16.0.11", ts=charon.INTRANET_TS, psk=charon.LAB_PSK)


def swanctl(op: str, *args: str) -> subprocess.CompletedProcess[str]:
    d = charon.directory(CHARON_DIR, "tr-mn")
    return ns_exec("tr-mn", *charon.swanctl(d, op, *args), timeout=30)


def tia() -> str | None:
    out = ns_exec("tr-mn", "ip", "-j", "-4", "addr", "show", "dev", "ipsec0")
    try:
        return str(json.loads(out.stdout)[0]["addr_info"][0]["local"])
    except (ValueError, IndexError, KeyError):
        return None


def test_vpn_from_outside_and_mobike_move(lab, tmp_path):
    lab.move("pub")
    mn_address(prefix="203.0.113.")
    conf = tmp_path / "swanctl.conf"
    conf.write_text(CLIENT)
    assert swanctl("--load-all", "--file", str(conf)).returncode == 0
    up = swanctl("--initiate", "--child", "intranet", "--timeout", "10")
    assert up.returncode == 0, up.stdout + up.stderr
    inner = tia()
    assert inner is not None and inner.startswith("10.99.1."), inner
    ping = ns_exec("tr-mn", "ping", "-c2", "-i0.2", "-W2", "-I", inner, "10.20.1.99")
    assert ping.returncode == 0, ping.stdout
    # Directly, the intranet stays unreachable from outside.
    assert ns_exec("tr-mn", "ping", "-c1", "-W1", "-I", "eth0", "10.20.1.99").returncode != 0

    lab.move("nat")
    mn_address(prefix="192.168.50.")
    # MOBIKE: the same IKE SA and TIA, now from behind the NAT.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        sas = swanctl("--list-sas").stdout
        if "192.168.50." in sas and "ESTABLISHED" in sas:
            break
        time.sleep(0.1)  # charon announces roams only in its log / VICI events
    assert "192.168.50." in sas, sas
    assert tia() == inner
    ping = ns_exec("tr-mn", "ping", "-c2", "-i0.2", "-W3", "-I", inner, "10.20.1.99")
    assert ping.returncode == 0, ping.stdout
    swanctl("--terminate", "--ike", "lab")
