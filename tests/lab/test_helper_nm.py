"""trustroamd with the real NetworkManager as its link source (``trustroam-lab up --nm``):
NM's D-Bus events drive the same modes as rtnetlink does."""

from __future__ import annotations

import sys

from app.lab.configs import ha_toml, write_helper_files
from tests.lab.procs import TCP_ECHO_SERVER, Proc
from tests.lab.test_helper import TCP_CLIENT, ctl, status, wait_mode


def test_modes_follow_networkmanager(lab_nm, tmp_path):
    (tmp_path / "ha.toml").write_text(ha_toml(tmp_path / "ha"))
    profiles, secrets = write_helper_files(tmp_path, "corp")
    bus = {"DBUS_SYSTEM_BUS_ADDRESS": lab_nm.nm_bus()}
    ha = Proc("tr-ha", sys.executable, "-m", "app.agents.ha_cli", "--config",
              str(tmp_path / "ha.toml"))
    procs = [ha]
    try:
        ha.wait("serving registrations")
        helper = Proc("tr-mn", sys.executable, "-m", "app.service.daemon", "--profiles-dir",
                      str(profiles), "--secrets", str(secrets), extra_env=bus)
        procs.append(helper)
        helper.wait("serving org.trustroam.Helper1")
        monitor = Proc("tr-mn", sys.executable, "-m", "app.ctl", "monitor", extra_env=bus)
        procs.append(monitor)
        monitor.wait("trustroam: ")
        world = {"bus": lab_nm.nm_bus(), "monitor": monitor}
        assert ctl(world, "connect", "corp").returncode == 0
        wait_mode(world, "h", timeout=30)  # NM's first DHCP lease on the home link
        server = Proc("tr-mn", sys.executable, "-c", TCP_ECHO_SERVER)
        procs.append(server)
        server.wait("LISTENING")
        stop = tmp_path / "stop"
        client = Proc("tr-cn", sys.executable, "-c", TCP_CLIENT, str(stop))
        procs.append(client)
        client.wait("CONNECTED")
        for net, mode in (("t1", "c"), ("t2", "c"), ("home", "h")):
            lab_nm.move(net)
            wait_mode(world, mode, timeout=30)
            before = len(client.out.seen)
            while len(client.out.seen) <= before + 1:
                client.wait("ECHO", timeout=20)
        stop.touch()
        client.wait("TCP OK", timeout=20)
        history = ctl(world, "history", "500").stdout
        assert "source=NetworkManager" in history, history
        assert status(world)["Interface"] == "eth0"
    finally:
        for p in reversed(procs):
            p.stop()
