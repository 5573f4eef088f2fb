"""The userspace tunnel's two engines over a real veth, as root.

Two namespaces joined by one veth; in each a TUN and ``UserspaceTunnel``
(tests/tunnel_endpoint.py) tunnelling to the other, in IP-in-IP (RFC 2003) or
GRE (RFC 2784).  The kernels at both ends
are the judges: a segment the compiled engine cut or merged with a wrong
checksum or length would be dropped by them, and the transfers below would
not arrive whole.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from app.net import ipip
from tests.lab.procs import Proc
from tests.requirements import require, require_root

# Not "tr-": the lab removes every tr-* namespace when it starts or stops, and
# another engineer's lab run would pull these from under a running test.
NS = ("trte-a", "trte-b")
OUTER = ("10.77.0.1", "10.77.0.2")
INNER = ("10.78.0.1", "10.78.0.2")
STRANGER = "10.77.0.3"  # a second address on A's side of the veth: not the peer


def ns_run(ns: str, code: str, timeout: float = 30) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def veth() -> Iterator[None]:
    require_root("network namespaces need root")
    for ns in NS:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
    batch = [f"netns add {ns}" for ns in NS] + [
        f"link add te0 netns {NS[0]} type veth peer name te0 netns {NS[1]}"]
    subprocess.run(["ip", "-batch", "-"], input="\n".join(batch) + "\n", text=True,
                   check=True)
    for ns, addr in zip(NS, OUTER, strict=True):
        cmds = f"link set lo up\naddr add {addr}/24 dev te0\nlink set te0 up\n"
        if ns == NS[0]:
            cmds += f"addr add {STRANGER}/24 dev te0\n"
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input=cmds, text=True, check=True)
    try:
        yield
    finally:
        for ns in NS:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


class Tunnel:
    def __init__(self, engine: str, encap: str) -> None:
        self.engine = engine
        self.gre = encap == "gre"
        self.ends = [Proc(NS[i], sys.executable, "-m", "tests.tunnel_endpoint", OUTER[i],
                          OUTER[1 - i], INNER[i], INNER[1 - i], engine, encap)
                     for i in (0, 1)]
        for e in self.ends:
            line = e.wait("READY")[-1]
            assert line.split()[-1] == engine, line

    def stats(self, side: int) -> dict[str, int]:
        end = self.ends[side]
        end.p.send_signal(signal.SIGUSR1)
        line = end.wait("STATS")[-1]
        result: dict[str, int] = json.loads(line.split(" ", 1)[1])
        return result

    def queued(self, side: int) -> int:
        """Bytes waiting in that end's raw tunnel sockets."""
        raw = ns_run(NS[side], "print(open('/proc/net/raw').read())").splitlines()[1:]
        return sum(int(line.split()[4].split(":")[1], 16) for line in raw if line.strip())

    def settle(self, side: int) -> None:
        """Wait until what was sent to a paused end has all arrived in its queue."""
        last, deadline = -1, time.monotonic() + 5
        while time.monotonic() < deadline:
            now = self.queued(side)
            if now and now == last:
                return
            last = now
            time.sleep(0.02)  # /proc/net/raw has no event to wait for
        raise AssertionError("nothing queued at the paused tunnel end")

    def pause(self, side: int) -> None:
        """Stop one end so what arrives queues up and is read in one batch."""
        self.ends[side].p.send_signal(signal.SIGSTOP)

    def resume(self, side: int) -> None:
        self.ends[side].p.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        for e in self.ends:
            e.p.send_signal(signal.SIGCONT)
            e.stop()


@pytest.fixture(scope="module", params=[("python", "ipip"), ("compiled", "ipip"),
                                        ("python", "gre"), ("compiled", "gre")],
                ids=["python-ipip", "compiled-ipip", "python-gre", "compiled-gre"])
def tunnel(request: pytest.FixtureRequest, veth: None) -> Iterator[Tunnel]:
    engine, encap = request.param
    if engine == "compiled":
        require(ipip.compiled_engine_available(),
                "app.net._fastpath is not built (pip install -e . with a C compiler)")
    t = Tunnel(engine, encap)
    # The first packet may need the peer's ARP entry: one round trip settles it.
    ns_run(NS[0], "import subprocess; subprocess.run(['ping', '-c1', '-W2', "
                  f"'{INNER[1]}'], check=True, capture_output=True)")
    try:
        yield t
    finally:
        t.stop()


GRE_IPV4 = r"b'\x00\x00\x08\x00'"  # RFC 2784: no checksum, version 0, IPv4


def send_ipip(outer_src: str, inners: list[str], gre: str | None = None) -> None:
    """From A: IP-in-IP packets (inner given as scapy expressions) to B's outer address;
    with ``gre`` (an expression for the GRE header), GRE packets instead."""
    ns_run(NS[0], f"""
import socket
from scapy.all import IP, TCP, UDP, Raw
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, {4 if gre is None else 47})
s.bind(('{outer_src}', 0))
for inner in [{", ".join(inners)}]:
    s.sendto({gre or "b''"} + (inner if isinstance(inner, bytes) else bytes(inner)),
             ('{OUTER[1]}', 0))
""")


def send_tunnelled(tunnel: Tunnel, outer_src: str, inners: list[str]) -> None:
    """As the tunnel's peer does: in its encapsulation."""
    send_ipip(outer_src, inners, GRE_IPV4 if tunnel.gre else None)


UDP_SINK = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind(('{ip}', {port})); s.settimeout({timeout})
print('BOUND', flush=True)
got = []
try:
    while len(got) < {count}:
        got.append(s.recv(65535).hex())
except TimeoutError:
    pass
print('GOT', json.dumps(got), flush=True)
"""


def udp_sink(port: int, count: int, timeout: float = 20) -> Proc:
    """Receives until ``count`` datagrams came (it exits at once then) or ``timeout``
    seconds passed since it bound: the bound must cover the senders' start-up (a
    Python with scapy per send, two sends in a test; on a loaded 2-core machine that
    took over 3 s, and the genuine packet came after the sink had given up)."""
    p = Proc(NS[1], sys.executable, "-c",
             UDP_SINK.format(ip=INNER[1], port=port, count=count, timeout=timeout))
    p.wait("BOUND")
    return p


def received(sink: Proc) -> list[bytes]:
    line = sink.wait("GOT", timeout=30)[-1]
    sink.stop()
    return [bytes.fromhex(h) for h in json.loads(line.split(" ", 1)[1])]


def test_tcp_stream_arrives_whole(tunnel: Tunnel) -> None:
    """8 MiB over TCP, both ways through the tunnel (data one way, ACKs back)."""
    before_a, before_b = tunnel.stats(0), tunnel.stats(1)
    server = Proc(NS[1], sys.executable, "-c", f"""
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('{INNER[1]}', 9000)); s.listen(); print('LISTENING', flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while (d := c.recv(1 << 16)):
    h.update(d); n += len(d)
print('GOT', n, h.hexdigest(), flush=True)
""")
    server.wait("LISTENING")
    ns_run(NS[0], f"""
import random, socket
data = random.Random(7).randbytes(8 << 20)
c = socket.create_connection(('{INNER[1]}', 9000), timeout=20)
c.sendall(data); c.close()
""", timeout=60)
    got = server.wait("GOT", timeout=30)[-1].split()
    server.stop()
    data = random.Random(7).randbytes(8 << 20)
    assert got[1:] == [str(len(data)), hashlib.sha256(data).hexdigest()]
    a, b = tunnel.stats(0), tunnel.stats(1)
    assert a["out"] > before_a["out"] and b["in"] > before_b["in"]
    if tunnel.engine == "compiled":
        # The offload paths carried it: aggregates read, segments merged.
        assert a["tso_reads"] > before_a["tso_reads"], a
        assert b["merged_writes"] > before_b["merged_writes"], b


def test_udp_datagrams_keep_their_boundaries(tunnel: Tunnel) -> None:
    """Runs of equal datagrams (merged by the compiled engine into one write) and
    odd sizes in between arrive as the same datagrams, in order."""
    sizes = [100] * 40 + [1, 7, 1400, 33] + [512] * 30 + [511] + [1452, 1452, 20]
    payloads = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    sink = udp_sink(9001, len(payloads))
    before = tunnel.stats(1)
    tunnel.pause(1)
    try:
        ns_run(NS[0], f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('{INNER[0]}', 0))
for p in {payloads!r}:
    s.sendto(p, ('{INNER[1]}', 9001))
""")
        tunnel.settle(1)
    finally:
        tunnel.resume(1)
    assert received(sink) == payloads
    after = tunnel.stats(1)
    if tunnel.engine == "compiled":
        assert after["merged_writes"] > before["merged_writes"], after


def test_tunnel_from_another_source_is_dropped(tunnel: Tunnel) -> None:
    """RFC 3024: only the registered tunnel end may send for an inner address."""
    sink = udp_sink(9002, 1)
    before = tunnel.stats(1)
    inner = f"IP(src='{INNER[0]}', dst='{INNER[1]}')/UDP(sport=1, dport=9002)/Raw(b'%s')"
    send_tunnelled(tunnel, STRANGER, [inner % "spoofed"])
    send_tunnelled(tunnel, OUTER[0], [inner % "genuine"])
    assert received(sink) == [b"genuine"]
    assert tunnel.stats(1)["dropped_spoofed"] == before["dropped_spoofed"] + 1


def test_malformed_tunnel_packets_are_counted_and_survived(tunnel: Tunnel) -> None:
    sink = udp_sink(9003, 1)
    before = tunnel.stats(1)
    send_tunnelled(tunnel, OUTER[0], [
        "b''",                                    # nothing inside
        "b'\\x45\\x00\\x00'",                     # a truncated header
        "b'\\x60' + bytes(39)",                   # IPv6 inside
        "b'\\x4f' + bytes(19)",                   # IHL says 60 bytes, 20 there
        f"IP(src='{INNER[0]}', dst='{INNER[1]}')/UDP(sport=1, dport=9003)/Raw(b'after')",
    ])
    assert received(sink) == [b"after"]
    after = tunnel.stats(1)
    assert after["malformed"] >= before["malformed"] + 3, after


def _csum_errors() -> int:
    snmp = ns_run(NS[1], "print(open('/proc/net/snmp').read())")
    tcp = [line.split() for line in snmp.splitlines() if line.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("InCsumErrors")])


def test_a_segment_with_a_bad_checksum_is_not_merged_into_good_ones(tunnel: Tunnel) -> None:
    """Merged segments are marked as checksummed: each must have been verified first,
    so a corrupted one still reaches the kernel as itself, and is counted there."""
    seg = (f"IP(src='{INNER[0]}', dst='{INNER[1]}')/TCP(sport=5555, dport=5556, flags='A', "
           "seq={seq}, ack=1{extra})/Raw(bytes(1000))")
    before = _csum_errors()
    tunnel.pause(1)
    try:
        send_tunnelled(tunnel, OUTER[0], [seg.format(seq=1000, extra=""),
                             seg.format(seq=2000, extra=", chksum=0x1234"),
                             seg.format(seq=3000, extra="")])
        tunnel.settle(1)
    finally:
        tunnel.resume(1)
    deadline = time.monotonic() + 5
    while _csum_errors() == before and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel's counter has no event to wait for
    assert _csum_errors() == before + 1


GRE_CHECKSUMMED = r"""
def gre_csum(inner):
    from scapy.utils import checksum
    pkt = bytes(inner)
    c = checksum(b'\x80\x00\x08\x00\x00\x00\x00\x00' + pkt)
    return bytes([0x80, 0, 8, 0, c >> 8, c & 0xFF, 0, 0]) + pkt
"""


@pytest.mark.parametrize("what", ["header", "checksum", "encapsulation"])
def test_rfc2784_gre_packets_are_checked(tunnel: Tunnel, what: str) -> None:
    """RFC 2784 2.3: a version other than 0, or RFC 1701's bits (1-5) set: discarded;
    2.4 and RFC 3024 A.2: only protocol type 0x800 is ours; 2.2: a present checksum is
    verified (a right one delivered, a wrong one dropped).  RFC 3024 4.3.2: a packet in
    an encapsulation not registered (GRE to an IP-in-IP binding, or the reverse) is
    discarded.  Each refusal is counted.  Both ends have both raw sockets open."""
    # Up to two datagrams: where one is refused the sink waits out its bound.
    sink = udp_sink(9004, 2, timeout=10)
    before = tunnel.stats(1)
    inner = f"IP(src='{INNER[0]}', dst='{INNER[1]}')/UDP(sport=1, dport=9004)/Raw(b'%s')"
    want = [b"after"]
    wrong_encap = 0
    if what == "header":
        refused = inner % "refused"
        send_ipip(OUTER[0], [rf"b'\x00\x01\x08\x00' + bytes({refused})",  # version 1
                             rf"b'\x00\x07\x08\x00' + bytes({refused})",  # version 7
                             rf"b'\x20\x00\x08\x00' + bytes({refused})",  # K (RFC 1701)
                             rf"b'\x00\x00\x86\xdd' + bytes({refused})"],  # IPv6 type
                  gre="b''")
    elif what == "checksum":
        # Checksum present: right, then wrong (a payload bit flipped after summing).
        ns_run(NS[0], GRE_CHECKSUMMED + f"""
import socket
from scapy.all import IP, UDP, Raw
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
s.bind(('{OUTER[0]}', 0))
bad = bytearray(gre_csum({inner % "corrupt"})); bad[-1] ^= 1
s.sendto(gre_csum({inner % "summed"}), ('{OUTER[1]}', 0))
s.sendto(bytes(bad), ('{OUTER[1]}', 0))
""")
        if tunnel.gre:
            want = [b"summed", b"after"]
        else:
            wrong_encap = 1  # a right GRE packet, but the binding is IP-in-IP
    else:
        send_ipip(OUTER[0], [inner % "the other encapsulation"],
                  None if tunnel.gre else GRE_IPV4)
        wrong_encap = 1
    send_tunnelled(tunnel, OUTER[0], [inner % "after"])
    assert received(sink) == want
    after = tunnel.stats(1)
    grew = {k: after[k] - before[k] for k in ("gre_rejected", "gre_bad_checksum",
                                              "wrong_encap")}
    assert grew == {"gre_rejected": 4 * (what == "header"),
                    "gre_bad_checksum": int(what == "checksum"),
                    "wrong_encap": wrong_encap}, after


@pytest.mark.parametrize("engine", ["python", "compiled"])
def test_rfc2784_2_2_checksum_verified_over_odd_and_even_lengths(engine: str) -> None:
    """The checksum covers the GRE header and the payload as 16-bit words, an odd
    last byte padded: right sums over every length parity are delivered, each with
    one bit wrong is dropped.  Over loopback in this namespace, no veth needed."""
    import select
    import socket

    from scapy.layers.inet import IP, UDP
    from scapy.packet import Raw
    from scapy.utils import checksum

    require_root("raw GRE sockets need root")
    if engine == "compiled":
        require(ipip.compiled_engine_available(), "app.net._fastpath is not built")
    tun, feed = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # stands in for TUN
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, ipip.IPPROTO_IPIP)
    gre = socket.socket(socket.AF_INET, socket.SOCK_RAW, ipip.IPPROTO_GRE)
    gre.bind(("127.0.0.1", 0))
    gre.setblocking(False)
    send = socket.socket(socket.AF_INET, socket.SOCK_RAW, ipip.IPPROTO_GRE)
    eng: ipip.Engine = (ipip._fastpath.Engine(tun.fileno(), raw.fileno(), -1, 12, 16,
                                              gre_fd=gre.fileno())
                        if engine == "compiled" else
                        ipip.PythonEngine(tun.fileno(), raw.fileno(), -1, 12, 16,
                                          gre_fd=gre.fileno()))
    inner_dst = "10.78.9.9"
    eng.set_accept(socket.inet_aton(inner_dst), socket.inet_aton("127.0.0.1"), True)
    feed.setblocking(False)
    try:
        sent = []
        for n in (0, 1, 2, 3, 1001):  # UDP payload lengths: the GRE packet's parity varies
            pkt = bytes(IP(src="10.78.9.1", dst=inner_dst) / UDP(sport=1, dport=2)
                        / Raw(load=bytes(i * 7 & 0xFF for i in range(n))))
            c = checksum(b"\x80\x00\x08\x00\x00\x00\x00\x00" + pkt)
            good = bytes([0x80, 0, 8, 0, c >> 8, c & 0xFF, 0, 0]) + pkt
            bad = bytearray(good)
            bad[-1] ^= 0x10
            for p in (good, bytes(bad)):
                send.sendto(p, ("127.0.0.1", 0))
            sent.append(pkt)
        while sum(eng.counters()[k] for k in ("in", "gre_bad_checksum")) < 10:
            assert select.select([gre], [], [], 5)[0], eng.counters()
            eng.pump_gre()
        delivered = []
        while True:
            try:
                delivered.append(feed.recv(65535))
            except BlockingIOError:
                break
        c = eng.counters()
        assert delivered == sent and c["in"] == 5 and c["gre_bad_checksum"] == 5, c
    finally:
        if isinstance(eng, ipip.PythonEngine):
            eng.close()
        for s in (tun, feed, raw, gre, send):
            s.close()
