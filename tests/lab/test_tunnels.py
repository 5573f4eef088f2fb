"""Packets follow the mobile node: CN traffic to the home address crosses the
userspace IP-in-IP tunnel (mode c) and the RFC 3519 UDP tunnel behind the NAT."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.lab.configs import CN, HA, HOME, MN_HA_KEY, fa_toml, ha_toml
from tests.lab.conftest import mn_address, ns_exec
from tests.lab.procs import TCP_ECHO_SERVER, Proc, capture

KEY = MN_HA_KEY


@pytest.fixture(scope="module")
def ha(lab, tmp_path_factory) -> Iterator[Proc]:
    d = tmp_path_factory.mktemp("ha")
    cfg = Path(d) / "ha.toml"
    cfg.write_text(ha_toml(d / "state"))
    proc = Proc("tr-ha", sys.executable, "-m", "app.agents.ha_cli", "--config", str(cfg))
    proc.wait("serving registrations")
    yield proc
    proc.stop()


def run_mn(*extra: str) -> Proc:
    mn = Proc("tr-mn", sys.executable, "-m", "tests.lab.mn_driver", "--ha", HA, "--home", HOME,
              "--key", KEY, *extra)
    line = mn.wait("REGISTERED")[-1]
    assert line.split()[-1] == "0", line
    return mn


TCP_CLIENT = f"""
import socket, sys
c = socket.create_connection(("{HOME}", 7000), timeout=5)
for i in range(20):
    msg = f"hello {{i}}".encode()
    c.sendall(msg)
    assert c.recv(4096) == msg
print("TCP OK", flush=True)
"""


def tcp_session_to_home_address() -> None:
    """The CN holds a TCP session with an echo server bound to the home address."""
    server = Proc("tr-mn", sys.executable, "-c", TCP_ECHO_SERVER)
    try:
        server.wait("LISTENING")
        client = ns_exec("tr-cn", sys.executable, "-c", TCP_CLIENT)
        assert "TCP OK" in client.stdout, client.stdout + client.stderr
    finally:
        server.stop()


def test_mode_c_ping_and_tcp_through_the_ipip_tunnel(lab, ha):
    lab.move("t1")
    coa = mn_address(prefix="10.30.1.")
    mn = run_mn()
    try:
        cap = capture("tr-ir", "t1", "ip proto 4")
        ping = ns_exec("tr-cn", "ping", "-c3", "-i0.2", "-W2", HOME)
        assert ping.returncode == 0, ping.stdout
        tcp_session_to_home_address()
        # Both directions are IP-in-IP between the HA and the care-of address,
        # for the ping and for the TCP session.
        cap.wait(f"IP {HA} > {coa}: IP {CN} > {HOME}: ICMP echo request")
        cap.wait(f"IP {coa} > {HA}: IP {HOME} > {CN}: ICMP echo reply")
        cap.wait(f"IP {HA} > {coa}: IP {CN}.")
        cap.wait(f"IP {coa} > {HA}: IP {HOME}.7000 > {CN}.")
        cap.stop()
    finally:
        mn.stop()


def test_reverse_tunnel_from_wrong_source_is_dropped(lab, ha):
    """RFC 3024: only the registered care-of address may reverse-tunnel for the home address."""
    lab.move("t1")
    mn_address(prefix="10.30.1.")
    mn = run_mn()
    try:
        spoof = ("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_RAW, 4); "
                 "from scapy.layers.inet import IP, ICMP; "
                 f"s.sendto(bytes(IP(src='{HOME}', dst='{CN}')/ICMP()), ('{HA}', 0))")
        cap = capture("tr-cn", "home", f"icmp and src host {HOME}")
        assert ns_exec("tr-fa1", sys.executable, "-c", spoof).returncode == 0
        assert ns_exec("tr-cn", "ping", "-c1", "-W2", HOME).returncode == 0  # real path works
        # tcpdump prints in arrival order: had the spoofed request got through,
        # it would come before the genuine reply.
        lines = cap.wait("ICMP echo reply")
        cap.stop()
        assert not [line for line in lines if "echo request" in line], lines
    finally:
        mn.stop()


def test_behind_nat_udp_tunnel(lab, ha):
    lab.move("nat")
    mn_address(prefix="192.168.50.")
    # From outside the firewall drops registrations: for this data-plane test the
    # firewall lets UDP 434 to the HA through (the VPN path comes with trustroamd).
    ns_exec("tr-fw", "nft", "insert", "rule", "inet", "tr_fw", "forward", "iifname", "ext",
            "ip", "daddr", HA, "udp", "dport", "434", "accept")
    ns_exec("tr-nat", "ip", "route", "add", "10.20.1.0/24", "via", "198.51.100.2")
    try:
        mn = run_mn("--udp", "--keepalive", "0.3")
        try:
            cap = capture("tr-nat", "ext", "udp port 434")
            ping = ns_exec("tr-cn", "ping", "-c3", "-i0.2", "-W2", HOME)
            assert ping.returncode == 0, ping.stdout
            # Data rides UDP 434 between the HA and the NAT's public address.
            cap.wait(f"IP {HA}.434 > 198.51.100.3.")
            cap.wait("IP 198.51.100.3.")
            cap.stop()
            # The NAT forgets its mapping and picks a new port.  RFC 3519 4.3/4.10: the
            # HA takes tunnel data only from the bound address and port, and learns a
            # new mapping from a new registration, never from the data (a host behind
            # the same NAT must not be able to redirect the tunnel).
            lab.set_nat(fully_random=True)
            lab.flush_nat_mappings()
            stale = ns_exec("tr-cn", "ping", "-c2", "-i0.2", "-W1", HOME)
            assert stale.returncode != 0, stale.stdout  # the keepalives taught it nothing
            mn.stop()
            mn = run_mn("--udp", "--keepalive", "0.3")  # a new registration
            ping = ns_exec("tr-cn", "ping", "-c3", "-i0.2", "-W2", HOME)
            assert ping.returncode == 0, ping.stdout
        finally:
            mn.stop()
            lab.set_nat(fully_random=False)
    finally:
        ns_exec("tr-nat", "ip", "route", "del", "10.20.1.0/24")
        lab_restore_firewall(lab)


def lab_restore_firewall(lab) -> None:
    import asyncio
    ns_exec("tr-fw", "nft", "delete", "table", "inet", "tr_fw")
    asyncio.run(lab._firewall())


def test_mode_f_through_the_foreign_agent(lab, ha, tmp_path):
    cfg = tmp_path / "fa.toml"
    cfg.write_text(fa_toml("fa1", advert_interval=0.5))
    fa = Proc("tr-fa1", sys.executable, "-m", "app.agents.fa_cli", "--config", str(cfg))
    try:
        fa.wait("foreign agent on fa")
        lab.move("fa1")
        mn_address(prefix="10.40.1.")
        mn = Proc("tr-mn", sys.executable, "-m", "tests.lab.mn_driver", "--ha", HA, "--home",
                  HOME, "--key", KEY, "--fa")
        try:
            assert "ADVERT 10.40.1.1" in mn.wait("ADVERT")[-1]
            assert mn.wait("REGISTERED")[-1].split()[-1] == "0"
            fa.wait("(relayed to the mobile node)")
            cap = capture("tr-ir", "core", "ip proto 4")
            ping = ns_exec("tr-cn", "ping", "-c3", "-i0.2", "-W2", HOME)
            assert ping.returncode == 0, ping.stdout
            # HA <-> FA care-of address, both ways (reverse tunnelling by the FA).
            cap.wait(f"IP {HA} > 10.40.1.1: IP {CN} > {HOME}: ICMP echo request")
            cap.wait(f"IP 10.40.1.1 > {HA}: IP {HOME} > {CN}: ICMP echo reply")
            tcp_session_to_home_address()
            cap.wait(f"IP 10.40.1.1 > {HA}: IP {HOME}.7000 > {CN}.")
            cap.stop()
        finally:
            mn.stop()
            ns_exec("tr-mn", "ip", "addr", "del", f"{HOME}/32", "dev", "eth0")
    finally:
        fa.stop()


def test_mode_h_at_home_no_tunnel(lab, ha):
    # Registered away first, so the HA proxies the home address...
    lab.move("t2")
    mn_address(prefix="10.30.2.")
    away = run_mn()
    away.stop()
    ns_exec("tr-mn", "ip", "addr", "del", f"{HOME}/32", "dev", "trmn0")
    # ...then home: deregistration withdraws the proxy ARP, the MN answers itself.
    lab.move("home")
    mn_address(prefix="10.20.1.")
    mn = Proc("tr-mn", sys.executable, "-m", "tests.lab.mn_driver", "--ha", HA, "--home", HOME,
              "--key", KEY, "--at-home")
    try:
        assert mn.wait("REGISTERED")[-1].split()[-1] == "0"
        ha.wait(f"{HOME}: deregistered (binding to")
        assert "proxy" not in ns_exec("tr-ha", "ip", "neigh", "show", "proxy").stdout
        ns_exec("tr-cn", "ip", "neigh", "flush", "dev", "home")
        cap = capture("tr-mn", "eth0", f"icmp and host {HOME}")
        ping = ns_exec("tr-cn", "ping", "-c2", "-i0.2", "-W2", HOME)
        assert ping.returncode == 0, ping.stdout
        cap.wait(f"IP {CN} > {HOME}: ICMP echo request")  # straight on the link
        cap.stop()
        tcp_session_to_home_address()
        mac = ns_exec("tr-cn", "ip", "neigh", "show", HOME).stdout
        ha_mac = ns_exec("tr-ha", "cat", "/sys/class/net/home/address").stdout.strip()
        assert ha_mac not in mac  # the CN talks to the MN itself, not the HA's proxy
    finally:
        mn.stop()
        ns_exec("tr-mn", "ip", "addr", "del", f"{HOME}/24", "dev", "eth0")


def test_f_to_f_move_between_foreign_agents(lab, ha, tmp_path):
    fas = []
    for node, coa in (("tr-fa1", "10.40.1.1"), ("tr-fa2", "10.40.2.1")):
        cfg = tmp_path / f"{node}.toml"
        cfg.write_text(fa_toml("fa1" if coa == "10.40.1.1" else "fa2", advert_interval=0.5))
        fas.append(Proc(node, sys.executable, "-m", "app.agents.fa_cli", "--config", str(cfg)))
    try:
        for fa in fas:
            fa.wait("foreign agent on fa")
        for net, coa in (("fa1", "10.40.1.1"), ("fa2", "10.40.2.1")):
            lab.move(net)
            mn_address(prefix=coa.rsplit(".", 1)[0] + ".")
            mn = Proc("tr-mn", sys.executable, "-m", "tests.lab.mn_driver", "--ha", HA,
                      "--home", HOME, "--key", KEY, "--fa")
            try:
                assert f"ADVERT {coa}" in mn.wait("ADVERT")[-1]
                assert mn.wait("REGISTERED")[-1].split()[-1] == "0"
                ping = ns_exec("tr-cn", "ping", "-c2", "-i0.2", "-W2", HOME)
                assert ping.returncode == 0, (net, ping.stdout)
            finally:
                mn.stop()
        # The HA is module-scoped: its queue still holds earlier tests' lines, and a
        # renewal to the same care-of address (10.40.1.1 after the mode f test) logs
        # only at DEBUG. So wait for this move's own line, never for "any line with
        # the home address" (which an earlier test's line satisfies), and never read
        # ``seen`` (it holds only the lines a wait has taken so far).
        ha.wait(f"{HOME}: moved -> 10.40.2.1")
    finally:
        for fa in fas:
            fa.stop()
        ns_exec("tr-mn", "ip", "addr", "del", f"{HOME}/32", "dev", "eth0")
