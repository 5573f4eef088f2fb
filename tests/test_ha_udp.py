"""The real trustroam-ha process over real UDP on loopback."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from ipaddress import IPv4Address

import pytest

from app.mip.auth import Algorithm
from app.mip.extensions import UdpTunnelRequest
from app.mn.registration import (
    Denied,
    Registered,
    RegistrationClient,
    RegistrationConfig,
    ReplayMode,
    TimedOut,
)
from tests.haproc import HaProcess, cli
from tests.mipclient import KEY_A, KEY_B, Mn

A = IPv4Address
HA = A("10.20.1.1")
COA = "127.0.0.1"  # the request really comes from loopback: no NAT


@pytest.fixture
def ha(tmp_path):
    proc = HaProcess(tmp_path).start()
    yield proc
    if proc.proc is not None:
        proc.stop()


@pytest.fixture
def alice():
    return Mn(A("10.20.1.10"), HA, KEY_A)


def register(ha, mn, data):
    rep = mn.check_reply(ha.exchange(data))
    mn.learn(rep)
    return rep


def test_accept_and_list(ha, alice):
    rep = register(ha, alice, alice.request(COA, lifetime=300))
    assert rep.code == 1 and rep.lifetime == 300
    rows = ha.bindings()
    assert len(rows) == 1
    row = rows[0]
    assert row["home_address"] == "10.20.1.10" and row["care_of_address"] == COA
    assert 290 < row["seconds_left"] <= 300 and row["reverse_tunnel"] is True
    text = cli("bindings", "--config", str(ha.config)).stdout
    assert "10.20.1.10" in text and "ip-in-ip" in text
    ha.wait_log("new binding")


def test_rejections_over_udp(ha, alice):
    assert register(ha, alice, alice.request(COA, key=b"\x09" * 16)).code == 131
    assert register(ha, alice, alice.request(COA, home_agent="10.20.1.2")).code == 136
    bad = alice.request(COA) + b"\x83\x40x"
    assert register(ha, alice, bad).code == 134
    assert ha.bindings() == []


def test_replay_and_resync(ha, alice):
    data = alice.request(COA)
    assert register(ha, alice, data).code == 1
    assert register(ha, alice, data).code == 133
    alice.clock_offset, alice._last = -3600.0, 0  # an hour slow, e.g. after a bad RTC
    rep = register(ha, alice, alice.request(COA))
    assert rep.code == 133 and abs(alice.clock_offset) < 2
    assert register(ha, alice, alice.request(COA)).code == 1


def test_nonce_mode_with_key_file_and_keyed_md5(ha):
    bob = Mn(A("10.20.1.11"), HA, KEY_B, spi=257, algorithm=Algorithm.KEYED_MD5,
             nonce_mode=True)
    assert register(ha, bob, bob.request(COA)).code == 133
    assert register(ha, bob, bob.request(COA)).code == 1


def test_nat_detected_udp_tunnel(ha, alice):
    rep = register(ha, alice, alice.request("192.0.2.50", extensions=[UdpTunnelRequest()]))
    assert rep.code == 1 and rep.udp_tunnel_reply.keepalive_interval == 110
    (row,) = ha.bindings()
    assert row["nat_detected"] and row["udp_tunnel"] and row["source"].startswith("127.0.0.1:")
    assert register(ha, alice, alice.request("192.0.2.50")).code == 129


def test_deregistration(ha, alice):
    register(ha, alice, alice.request(COA))
    rep = register(ha, alice, alice.request(COA, lifetime=0))
    assert rep.code == 1 and rep.lifetime == 0
    assert ha.bindings() == []


def test_lifetime_expiry(tmp_path, alice):
    ha = HaProcess(tmp_path, max_lifetime=1).start()
    try:
        assert register(ha, alice, alice.request(COA)).lifetime == 1
        ha.wait_log("expired", timeout=5)  # the HA's own timer, not a sleep here
        assert ha.bindings() == []
    finally:
        ha.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_restart_keeps_bindings_and_replay_state(tmp_path, alice, sig):
    ha = HaProcess(tmp_path).start()
    first = alice.request(COA, lifetime=500)
    assert register(ha, alice, first).code == 1
    ha.stop(sig)
    ha.start()
    try:
        assert any("1 bindings restored" in line for line in ha.log)
        (row,) = ha.bindings()
        assert row["care_of_address"] == COA and 480 < row["seconds_left"] < 500
        assert register(ha, alice, first).code == 133  # replay refused after restart
        assert register(ha, alice, alice.request(COA, lifetime=500)).code == 1
    finally:
        ha.stop()


def test_unknown_extension_gets_no_reply(ha, alice):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        s.sendto(alice.request(COA, sign=False) + b"\x63\x00", ("127.0.0.1", ha.port))
        with pytest.raises(TimeoutError):
            s.recvfrom(100)
    ha.wait_log("unknown non-skippable extension type 99")
    # and the HA still serves
    assert register(ha, alice, alice.request(COA)).code == 1


def test_config_error_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[home_agent]\naddress = "10.20.1.1"\nhome_network = "10.20.1.0/24"\n'
                   '[[mobile_nodes]]\nhome_address = "10.20.1.10"\nspi = 300\n'
                   'key = "hex:0011"\n')
    out = cli("--config", str(bad))
    assert out.returncode == 2
    assert out.stderr.strip() == (f"trustroam-ha: {bad}: mobile_nodes[0].key: is 2 bytes; it "
                                  "must be 16 to 64 bytes (128 bits at least)")
    assert "Traceback" not in out.stderr


def test_port_in_use_is_a_clear_error(ha):
    out = cli("--config", str(ha.config))
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{ha.port}: Address already in use" in out.stderr
    assert "Traceback" not in out.stderr


def test_bindings_before_first_run(tmp_path):
    proc = HaProcess(tmp_path)
    out = cli("bindings", "--config", str(proc.config))
    assert out.returncode == 1 and "no binding cache" in out.stderr


def test_check_command(tmp_path):
    proc = HaProcess(tmp_path)
    out = cli("check", "--config", str(proc.config))
    assert out.returncode == 0 and "2 mobile nodes" in out.stdout


def test_sample_client_of_the_demo(ha):
    import subprocess
    import sys

    from tests.haproc import env

    def run(hoa):
        return subprocess.run([sys.executable, "-m", "app.agents.sample_client", "--config",
                               str(ha.config), "--home-address", hoa, "--wait", "5"],
                              env=env(), capture_output=True, text=True, timeout=30,
                              check=False)

    out = run("10.20.1.10")
    assert out.returncode == 0, out.stderr
    assert "simultaneous mobility bindings unsupported (1), lifetime 300" in out.stdout
    nonce = run("10.20.1.11")  # nonce mode: 133 first, then accepted
    assert "identification mismatch (133)" in nonce.stdout
    assert "registration accepted" in nonce.stdout and nonce.returncode == 0
    bad = run("10.20.1.99")
    assert bad.returncode == 2 and "not a mobile node" in bad.stderr


class _Relay(asyncio.DatagramProtocol):
    """Delays every datagram by ``one_way`` seconds each way: a distant home agent."""

    def __init__(self, ha_port: int, one_way: float) -> None:
        self.ha_port, self.one_way = ha_port, one_way
        self.client: tuple[str, int] | None = None
        self.front: asyncio.DatagramTransport | None = None
        self.back: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        if addr[1] == self.ha_port:  # a reply: back to the client, later
            assert self.front is not None and self.client is not None
            loop.call_later(self.one_way, self.front.sendto, data, self.client)
        else:
            self.client = addr
            assert self.back is not None
            loop.call_later(self.one_way, self.back.sendto, data, ("127.0.0.1", self.ha_port))


async def _register_through(relay_port: int, client: RegistrationClient) -> list[object]:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[bytes] = asyncio.Queue()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        loop.add_reader(s.fileno(), lambda: inbox.put_nowait(s.recv(4096)))
        events: list[object] = []
        client.register(A(COA), time.time())
        try:
            while not any(isinstance(e, Registered | Denied | TimedOut) for e in events):
                for d in client.datagrams_to_send():
                    s.sendto(d.data, ("127.0.0.1", relay_port))
                while (e := client.next_event()) is not None:
                    events.append(e)
                if events and isinstance(events[-1], Registered | Denied | TimedOut):
                    break
                wait = max(0.0, (client.get_timer() or time.time() + 30) - time.time())
                try:
                    data = await asyncio.wait_for(inbox.get(), wait)
                except TimeoutError:
                    client.handle_timer(time.time())
                else:
                    client.receive(data, time.time())
        finally:
            loop.remove_reader(s.fileno())
    return events


@pytest.mark.parametrize("rtt", [0.4, 1.2])
@pytest.mark.parametrize("mode", ["timestamp", "nonce"])
def test_rfc5944_3_6_3_distant_home_agent_over_real_udp(ha, mode, rtt):
    if mode == "timestamp":
        cfg = RegistrationConfig(A("10.20.1.10"), HA, 256, Algorithm.HMAC_MD5, KEY_A,
                                 lifetime=300)
    else:
        cfg = RegistrationConfig(A("10.20.1.11"), HA, 257, Algorithm.KEYED_MD5, KEY_B,
                                 lifetime=300, replay=ReplayMode.NONCE)

    async def main() -> list[object]:
        loop = asyncio.get_running_loop()
        relay = _Relay(ha.port, rtt / 2)
        front, _ = await loop.create_datagram_endpoint(lambda: relay,
                                                       local_addr=("127.0.0.1", 0))
        back, _ = await loop.create_datagram_endpoint(lambda: relay,
                                                      local_addr=("127.0.0.1", 0))
        relay.front, relay.back = front, back
        try:
            return await _register_through(front.get_extra_info("sockname")[1],
                                           RegistrationClient(cfg))
        finally:
            front.close()
            back.close()

    events = asyncio.run(main())
    assert isinstance(events[-1], Registered), events
    assert events[-1].rtt >= rtt


@pytest.mark.parametrize(("extra", "code"), [("", 1), ("gre = false", 139)])
def test_rfc5944_3_8_2_3_real_home_agent_offers_gre_per_its_config(tmp_path, alice, extra,
                                                                    code):
    """The real ``trustroam-ha``: a request asking only for GRE (G) is accepted by
    default, and denied 139 with ``gre = false`` in [home_agent]."""
    from app.mip.messages import RegFlags

    proc = HaProcess(tmp_path, extra=extra).start()
    try:
        rep = register(proc, alice, alice.request(COA, flags=RegFlags.D | RegFlags.G))
        assert rep.code == code
        assert len(proc.bindings()) == (code == 1)
    finally:
        proc.stop()
