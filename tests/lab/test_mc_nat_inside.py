"""NAT inside the VPN (RFC 5266 4) with the real helper, charon and home agent.

The lab's gateways NAT their address pools towards the intranet
(``Lab.up(gw_pool_nat=True)``): the home agent sees the TIA's registration from
the gateway's own address.  §4: "the TIA could be from a private address space
associated with the VPN gateway.  In such a case, Mobile IPv4 NAT traversal
should be used in addition to IPsec NAT traversal in the 'mc' mode."  The helper
runs with ``--dataplane kernel`` forced, as a desktop with the ipip module gets:
the UDP-tunnelled binding must take the userspace plane on its own (this kernel
has no ipip at all, so a binding that needed the kernel's device would fail here).

The mobile node goes home -> nat (behind the lab's NAT too: both layers) -> pub
(the NATing gateway only, a MOBIKE move) with a TCP session from the
correspondent node to its home address and a ping stream; captures on both
untrusted links, judged by tshark, must show nothing in clear (IKE and ESP in
UDP or ESP only, besides DHCP and the direct probe).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from app.lab.configs import write_helper_files
from app.lab.world import Lab
from tests.dbus_client import properties, run_as
from tests.lab.conftest import a_lab
from tests.lab.leaks import PROTO_UDP, is_probe, lab_policy, leaks, read_frames
from tests.lab.nat_rebind import rebind
from tests.lab.procs import (
    GW1,
    Proc,
    carries_data_again,
    echo_session,
    helper_world,
    history,
    mac_of_mn,
    wait_history,
)
from tests.lab.vpn_walk import bridge_capture, ping_stream

KEEPALIVE = 3  # seconds, the home agent's RFC 3519 4.9 interval in its reply
UNTRUSTED = ("nat", "pub")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from a_lab(gw_inside=False, gw_pool_nat=True)


@pytest.fixture(scope="module")
def world(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("mcnat")
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1,))
    with helper_world(lab.nm_bus(), d, profiles, secrets,
                      ha_extra=f"keepalive_interval = {KEEPALIVE}\n",
                      helper_args=("--dataplane", "kernel")) as w:
        yield w


def props(world: dict[str, object]) -> dict[str, object]:
    value = run_as(None, str(world["bus"]), properties)
    assert isinstance(value, dict), value
    return value


def wait_layers(world: dict[str, object], want: list[str], timeout: float = 20) -> None:
    """The status names exactly ``want``'s NAT layers (charon's NAT-T reading comes
    after a MOBIKE move's exchange)."""
    deadline = time.monotonic() + timeout
    monitor = world["monitor"]
    assert isinstance(monitor, Proc)
    while (p := props(world))["NatLayers"] != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"NatLayers {p['NatLayers']}, not {want}: {p}")
        with contextlib.suppress(TimeoutError):
            monitor.wait("", timeout=1.0)  # the next property change


def test_rfc5266_4_lab_mc_behind_a_nat_and_a_natting_gateway_tunnels_udp_inside_ipsec(
        lab: Lab, world: dict[str, object]) -> None:
    d = Path(str(world["dir"]))
    ha = world["ha"]
    assert isinstance(ha, Proc)
    wait_history(world, 0, "mode", {"mode": "h"}, timeout=25)
    mac = mac_of_mn()
    with ExitStack() as stack:
        pcaps = {net: stack.enter_context(bridge_capture(d / f"{net}.pcap", net,
                                                         f"ether host {mac}"))
                 for net in UNTRUSTED}
        client = stack.enter_context(echo_session(d))
        pings = stack.enter_context(ping_stream(drain=2.0))
        # Behind the lab's NAT and the NATing gateway: both layers.
        t = time.time()
        lab.move("nat")
        wait_history(world, t, "mode", {"state": "untrusted", "mode": "mc"}, timeout=30)
        tunnel = wait_history(world, t, "udp-tunnel")
        assert (tunnel["keepalive_s"], tunnel.get("path")) == (str(KEEPALIVE), "vpn"), tunnel
        bound = ha.wait("via UDP tunnel (NAT)")[-1]
        p = props(world)
        assert p["Mode"] == "mc" and p["TunnelInnerAddress"], p
        tia = str(p["TunnelInnerAddress"])
        assert f"-> {tia} via UDP tunnel (NAT)" in bound, bound
        wait_layers(world, ["ipsec", "mobile-ip"])
        assert props(world)["NatDetected"] is True
        pings.wait_reply(after=time.time(), timeout=20)
        carries_data_again(client)  # the correspondent's TCP session, through both NATs
        # Keepalives through the VPN are answered: no re-registration for want of them.
        time.sleep(3 * KEEPALIVE)  # let several keepalive rounds pass (nothing to await)
        carries_data_again(client)
        # The gateway's NAT only (pub): a MOBIKE move, the binding untouched.
        t = time.time()
        lab.move("pub")
        wait_history(world, t, "mobike", timeout=25)
        wait_layers(world, ["mobile-ip"])
        p = props(world)
        assert (p["Mode"], p["TunnelInnerAddress"], p["NatDetected"]) == ("mc", tia, True), p
        pings.wait_reply(after=time.time(), timeout=20)
        carries_data_again(client)
        # RFC 5266 3.3: MOBIKE only; the gateway's mapping of the TIA is the same.
        kinds = [(k, dd) for tm, k, dd in history(world, 200) if tm >= t]
        assert not [dd for k, dd in kinds if k == "probe-sent" and dd.get("vpn") == "true"
                    ], kinds
        assert "nat-rebind" not in [k for k, _ in kinds], kinds
    result = pings.result
    assert result is not None
    print(f"ping stream: {result.sent} sent, {result.lost} lost, "
          f"longest run {result.longest_run}")
    for net in UNTRUSTED:
        bad = leaks(pcaps[net], lab_policy(mac))
        assert not bad, f"{net}: " + "\n".join(str(o) for o in bad[:10])
        frames = read_frames(pcaps[net])
        # Only IKE/ESP-in-UDP (4500), or ESP, carried the traffic: the Mobile IP
        # tunnel (UDP 434) never shows outside, but for the direct probe.
        esp = [f for f in frames if f["esp.spi"]]
        assert esp, f"{net}: no ESP seen: judged nothing"
        # (the probe: a request out, a reply in, judged by the Mobile IP type; tunnel
        # data to or from the home agent's 434 is not excused)
        mip = [f for f in frames if f["ip.proto"] == PROTO_UDP and "434" in (
            f["udp.srcport"], f["udp.dstport"]) and not is_probe(f, lab_policy(mac))]
        assert mip == [], f"{net}: Mobile IP outside the VPN: {mip[:3]}"


def test_rfc3519_4_10_mc_survives_a_nat_rebinding_on_both_layers(
        lab: Lab, world: dict[str, object]) -> None:
    """Both NATs (the access network's and the gateway's pool NAT) forget their
    mappings and pick new ports: IPsec recovers by the MN's DPD (the gateway follows
    the new outer port), Mobile IP by its keepalives going unanswered and a new
    registration through the VPN (RFC 3519 4.10); the TCP session survives."""
    d = Path(str(world["dir"])) / "rebind"  # the session before left its stop file
    d.mkdir(exist_ok=True)
    if props(world)["Mode"] != "mc":  # run alone: mc on pub first
        t = time.time()
        lab.move("pub")
        wait_history(world, t, "mode", {"mode": "mc"}, timeout=30)
    # Into the NAT by MOBIKE: its NAT-D exchange is charon's baseline of the mapping
    # (an SA made behind the NAT and kept busy has none: tests/lab/nat_rebind.py).
    t = time.time()
    lab.move("nat")
    wait_history(world, t, "mobike", timeout=30)
    wait_layers(world, ["ipsec", "mobile-ip"])
    with echo_session(d) as client:
        r = rebind(lab, world, client)
        print(f"NAT rebinding recovered: IPsec {r.ipsec_s} s, Mobile IP {r.mobile_ip_s} s, "
              f"TCP {r.tcp_s} s")
    p = props(world)
    assert p["Mode"] == "mc" and p["NatLayers"] == ["ipsec", "mobile-ip"], p
