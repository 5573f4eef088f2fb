"""With `up --nm` the MN's addresses come from the real NetworkManager."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.lab.conftest import mn_address


def nmcli(lab, *args: str) -> str:
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=lab.nm_bus())
    return subprocess.run(["nmcli", *args], env=env, capture_output=True, text=True,
                          check=True, timeout=20).stdout


@pytest.mark.parametrize(("net", "prefix"), [("t1", "10.30.1."), ("fa2", "10.40.2."),
                                             ("nat", "192.168.50."), ("home", "10.20.1.")])
def test_networkmanager_follows_moves(lab_nm, net, prefix):
    lab_nm.move(net)
    mn_address(prefix=prefix, timeout=20)
    assert "eth0:ethernet:connected:lab-eth0" in nmcli(lab_nm, "-t", "device")
    assert lab_nm.status()["nm"] is True
    assert "dhclient" not in lab_nm.status()["processes"]
