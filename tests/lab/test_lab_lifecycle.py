"""`down` leaves nothing behind, also after the lab was killed; a second `up` works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from app.lab import world
from app.lab.world import Lab, existing_namespaces
from tests.haproc import env
from tests.lab.conftest import mn_address


def _alive_not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def test_down_leaves_nothing_and_up_again_works():
    lab = Lab()
    lab.down()
    lab.up(at="t1")
    mn_address(prefix="10.30.1.")
    pids = list(world.LabState.load().pids.values())
    assert pids and all(_alive_not_zombie(p) for p in pids)
    lab.down()
    assert existing_namespaces() == []
    assert not world.STATE_DIR.exists()
    assert not list(Path("/etc/netns").glob("tr-*"))
    assert not any(_alive_not_zombie(p) for p in pids)
    lab.up(at="home")
    try:
        mn_address(prefix="10.20.1.")
    finally:
        lab.down()


def test_down_after_the_lab_process_was_killed():
    """`up` in a child process, SIGKILLed mid-way; `down` still sweeps everything."""
    Lab().down()
    code = ("import os, signal; from app.lab.world import Lab; Lab().up(); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code], env=env(), check=False)
    assert proc.returncode == -signal.SIGKILL
    assert existing_namespaces()  # it was killed with the world up
    pids = list(world.LabState.load().pids.values())
    out = subprocess.run([sys.executable, "-m", "app.lab.cli", "down"], env=env(),
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert existing_namespaces() == []
    assert not any(_alive_not_zombie(p) for p in pids)
    assert os.path.exists("/run") and not world.STATE_DIR.exists()


def test_second_up_refused_while_up_and_bad_net_named():
    lab = Lab()
    lab.down()
    lab.up()
    try:
        import pytest

        with pytest.raises(world.LabError, match="already up"):
            lab.up()
        with pytest.raises(world.LabError, match="no access network 'moon'"):
            lab.move("moon")
    finally:
        lab.down()


def test_gateways_only_from_outside_option():
    from tests.lab.conftest import ns_exec

    lab = Lab()
    lab.down()
    lab.up(at="t1", gw_inside=False)
    try:
        mn_address(prefix="10.30.1.")
        assert ns_exec("tr-mn", "ping", "-c1", "-W1", "172.16.0.11").returncode != 0
        assert ns_exec("tr-mn", "ping", "-c1", "-W1", "10.20.1.99").returncode == 0
        lab.move("pub")
        mn_address(prefix="203.0.113.")
        assert ns_exec("tr-mn", "ping", "-c1", "-W1", "172.16.0.11").returncode == 0
    finally:
        lab.down()
