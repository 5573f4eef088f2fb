"""The lab's world behaves like the enterprise of RFC 5266's figure 1."""

from __future__ import annotations

import pytest

from tests.lab.conftest import mn_address, ns_exec

CN = "10.20.1.99"
GW1 = "172.16.0.11"


@pytest.mark.parametrize(("net", "prefix", "intranet", "gateway"), [
    ("t1", "10.30.1.", True, True),
    ("t2", "10.30.2.", True, True),
    ("fa1", "10.40.1.", True, True),
    ("fa2", "10.40.2.", True, True),
    ("home", "10.20.1.", True, True),
    ("pub", "203.0.113.", False, True),
    ("nat", "192.168.50.", False, True),
])
def test_every_access_network(lab, net, prefix, intranet, gateway):
    lab.move(net)
    addr = mn_address(prefix=prefix)
    assert lab.status()["mn_net"] == net
    reach_cn = ns_exec("tr-mn", "ping", "-c1", "-W1", CN).returncode == 0
    assert reach_cn is intranet, f"{net} ({addr}) reaching the intranet: {reach_cn}"
    assert (ns_exec("tr-mn", "ping", "-c1", "-W1", GW1).returncode == 0) is gateway


def test_nat_hides_the_mobile_node(lab):
    lab.move("nat")
    mn_address(prefix="192.168.50.")
    # The gateway must see the NAT's outside address, not the MN's: the NAT's
    # conntrack entry shows the translation.
    assert ns_exec("tr-mn", "ping", "-c1", "-W1", GW1).returncode == 0
    ct = ns_exec("tr-nat", "conntrack", "-L", "-p", "icmp")
    assert "src=192.168.50." in ct.stdout and "dst=198.51.100.3" in ct.stdout, ct.stdout


def test_exec_and_status_cli(lab):
    import json
    import subprocess
    import sys

    from tests.haproc import env
    st = subprocess.run([sys.executable, "-m", "app.lab.cli", "status", "--json"], env=env(),
                        capture_output=True, text=True, check=True)
    status = json.loads(st.stdout)
    assert status["up"] and "tr-ha" in status["namespaces"]
    assert all(p["alive"] for p in status["processes"].values())
    ex = subprocess.run([sys.executable, "-m", "app.lab.cli", "exec", "tr-ha", "--", "ip",
                         "-4", "-o", "addr", "show", "dev", "home"], env=env(), capture_output=True,
                        text=True, check=True)
    assert "10.20.1.1/24" in ex.stdout
