"""A ping stream whose losses are counted, for walks across the lab's networks.

The CN (``tr-cn``) sends an ICMP echo request to the home address every 20 ms,
each with its sequence number and send time; every reply is reported as a line.
``ping_stream`` yields once the stream flows (three replies) and, when the
``with`` block ends, stops sending, waits for late replies and fills in
``PingStream.result``: sent, received, lost, and the runs of lost sequence
numbers (a handover's outage is one run).  It asserts nothing: the caller
decides what loss is acceptable.

    with ping_stream() as pings:
        lab.move("nat")
        pings.wait_reply(after=time.time())   # flowing again on the new path
    assert pings.result.lost <= 10, pings.result
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from app.lab.configs import HOME
from tests.lab.procs import Proc

PINGER = """
import os, select, signal, socket, struct, sys, time
target, interval, drain = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ident = os.getpid() & 0xFFFF
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.setblocking(False)
stopping = []
signal.signal(signal.SIGUSR1, lambda *_: stopping.append(time.monotonic()))

def checksum(b):
    if len(b) % 2:
        b += b"\\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16:
        t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF

def request(seq):
    body = struct.pack("!d", time.time()) + b"trustroam-walk".ljust(24, b".")
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq & 0xFFFF)
    return struct.pack("!BBHHH", 8, 0, checksum(head + body), ident, seq & 0xFFFF) + body

sent = received = 0
seen = set()
next_t = time.monotonic()
print("STARTED", ident, flush=True)
while True:
    now = time.monotonic()
    if stopping and now > stopping[0] + drain:
        break
    if not stopping and now >= next_t:
        try:
            s.sendto(request(sent), (target, 0))
        except OSError as e:  # no route during a move: a lost packet, counted
            print("SENDERR", sent, e.errno, flush=True)
        sent += 1
        next_t += interval
        if next_t < now:  # behind (the CPU was busy): keep the pace, do not burst
            next_t = now + interval
    wait = max(0.0, (stopping[0] + drain if stopping else next_t) - time.monotonic())
    try:
        r, _, _ = select.select([s], [], [], wait)
    except InterruptedError:
        continue
    while r:
        try:
            pkt = s.recv(2048)
        except BlockingIOError:
            break
        ihl = (pkt[0] & 0x0F) * 4
        kind, _, _, rid, seq = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
        if kind != 0 or rid != ident:
            continue
        (t_sent,) = struct.unpack("!d", pkt[ihl + 8:ihl + 16])
        dup = seq in seen
        seen.add(seq)
        received += not dup
        print("R" if not dup else "D", seq, repr(t_sent), repr(time.time()), flush=True)
print("DONE", sent, received, flush=True)
"""


@dataclass
class PingResult:
    sent: int
    received: int
    lost_runs: list[tuple[int, int]] = field(default_factory=list)
    """(first, last) sequence number of each run of requests never answered."""
    send_errors: int = 0

    @property
    def lost(self) -> int:
        return self.sent - self.received

    @property
    def longest_run(self) -> int:
        return max((b - a + 1 for a, b in self.lost_runs), default=0)


class PingStream:
    """The running stream; ``replies`` holds (seq, sent at, received at) in arrival order."""

    def __init__(self, proc: Proc, interval: float) -> None:
        self.proc = proc
        self.interval = interval
        self.replies: list[tuple[int, float, float]] = []
        self.result: PingResult | None = None
        self._read = 0

    def _take(self) -> None:
        for line in self.proc.out.seen[self._read:]:
            parts = line.split()
            if parts and parts[0] == "R":
                self.replies.append((int(parts[1]), float(parts[2]), float(parts[3])))
        self._read = len(self.proc.out.seen)

    def wait_reply(self, after: float, timeout: float = 15.0) -> tuple[int, float, float]:
        """The first reply to a request sent at or after ``after`` (time.time()):
        the stream flows on the current path."""
        deadline = time.monotonic() + timeout
        while True:
            self._take()
            for r in self.replies:
                if r[1] >= after:
                    return r
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no ping reply to a request sent after {after:.3f} "
                                   f"({len(self.replies)} replies so far)")
            try:
                self.proc.wait("R ", timeout=left)
            except TimeoutError:
                continue

    def count(self) -> int:
        """Replies so far."""
        self._take()
        return len(self.replies)

    def finish(self, drain: float) -> PingResult:
        self.proc.p.send_signal(signal.SIGUSR1)
        done = self.proc.wait("DONE", timeout=drain + 10)[-1].split()
        self._take()
        sent, received = int(done[1]), int(done[2])
        answered = {seq for seq, _, _ in self.replies}
        runs: list[tuple[int, int]] = []
        for seq in range(sent):
            if seq in answered:
                continue
            if runs and runs[-1][1] == seq - 1:
                runs[-1] = (runs[-1][0], seq)
            else:
                runs.append((seq, seq))
        errors = sum(1 for line in self.proc.out.seen if line.startswith("SENDERR"))
        self.result = PingResult(sent, received, runs, errors)
        return self.result


@contextmanager
def ping_stream(target: str = HOME, node: str = "tr-cn", interval: float = 0.02,
                drain: float = 1.0, start_timeout: float = 15.0) -> Iterator[PingStream]:
    """Pings ``target`` from ``node`` every ``interval`` s; yields once three replies
    came back; on leaving, stops sending and waits ``drain`` s for late replies,
    then ``stream.result`` holds the counts (also when the block raised)."""
    proc = Proc(node, sys.executable, "-c", PINGER, target, str(interval), str(drain))
    stream = PingStream(proc, interval)
    try:
        proc.wait("STARTED")
        deadline = time.monotonic() + start_timeout
        while stream.count() < 3:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"ping stream {node} -> {target}: no replies in "
                                   f"{start_timeout} s")
            try:
                proc.wait("R ", timeout=left)
            except TimeoutError:
                continue
        yield stream
    finally:
        try:
            if proc.p.poll() is None:
                stream.finish(drain)
        finally:
            proc.stop()


# -- mode mc by hand (no helper): charon's TIA, the lab MN driver registering it ----------

MC_CLIENT = """connections {{
  lab {{
    version = 2
    remote_addrs = {gateway}
    vips = 0.0.0.0
    mobike = yes
    dpd_delay = 2s
    proposals = aes128-sha256-x25519
    local {{
      auth = psk
      id = mn@lab
    }}
    remote {{
      auth = psk
      id = {gateway}
    }}
    children {{
      intranet {{
        remote_ts = {ts}
        esp_proposals = aes128gcm16-x25519
      }}
    }}
  }}
}}
secrets {{
  ike-lab {{
    secret = {psk}
  }}
}}
"""


@dataclass
class ByHand:
    """Mode mc built by hand: ``tia`` from charon, the home agent's binding to it."""

    tia: str
    directory: Path
    ha: Proc
    mn: Proc


def swanctl(op: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    from app.lab import charon
    from app.lab.world import CHARON_DIR
    d = charon.directory(CHARON_DIR, "tr-mn")
    return subprocess.run(["ip", "netns", "exec", "tr-mn", *charon.swanctl(d, op, *args)],
                          capture_output=True, text=True, timeout=timeout, check=False)


def tunnel_inner_address() -> str | None:
    out = subprocess.run(["ip", "-n", "tr-mn", "-j", "-4", "addr", "show", "dev", "ipsec0"],
                         capture_output=True, text=True, check=False)
    try:
        return str(json.loads(out.stdout)[0]["addr_info"][0]["local"])
    except (ValueError, IndexError, KeyError):
        return None


MIP_TUNNEL = "trmn0"
"""The Mobile IP tunnel device of tests.lab.mn_driver (and of the helper, app/net)."""


def restart_mn_charon(interfaces_ignore: str) -> None:
    """The MN's charon again, as the lab starts it but ignoring ``interfaces_ignore``.

    Without it, a MOBIKE move in mode mc picks the home address (on the Mobile IP
    tunnel device) as the new IKE source in the instant the new link has its
    address but not yet its default route: charon finds the default route through
    the tunnel device in any table, whatever the rules say; every path probe then
    fails ("Network is unreachable") and the IKE SA is destroyed after 10 probes
    (seen in the lab, charon 5.9.8)."""
    from app.lab import charon
    from app.lab.topology import MN
    from app.lab.world import CHARON_DIR, Lab, LabState
    Lab().kill_charon(MN)
    d = charon.directory(CHARON_DIR, MN)
    text = charon.strongswan_conf(d, None)  # (the lab's MN already ignores trmn0)
    if "install_routes = yes\n" not in text:
        raise RuntimeError("the lab's strongswan.conf changed: cannot add interfaces_ignore")
    ignore = f"install_routes = yes\n  interfaces_ignore = {interfaces_ignore}\n"
    (d / "strongswan.conf").write_text(text.replace("install_routes = yes\n", ignore))
    sock = d / "charon.vici"
    sock.unlink(missing_ok=True)
    proc = subprocess.Popen(["ip", "netns", "exec", MN, *charon.command(d)],
                            stdout=subprocess.DEVNULL, stderr=(d / "stderr.log").open("w"),
                            start_new_session=True)
    state = LabState.load()
    state.pids[f"charon-{MN}"] = proc.pid  # the lab's down() ends it like its own
    state.save()
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"charon in {MN} did not come back (see {d / 'charon.log'})")
        time.sleep(0.02)  # charon signals readiness only by its socket


@contextmanager
def mc_by_hand(directory: Path, gateway: str = "172.16.0.11",
               ignore_tunnel: bool = True) -> Iterator[ByHand]:
    """With the MN on an untrusted link: the VPN up (swanctl, PSK, MOBIKE), the HA
    running, and ``tests.lab.mn_driver`` on ``ipsec0``: the TIA as co-located
    care-of address, a userspace IP-in-IP tunnel (app.net.ipip) from the TIA to
    the HA for the home address's traffic, registered through the VPN.  Yields
    when the HA accepted; tears all of it down (VPN terminated) on leaving.

    ``ignore_tunnel``: restart the MN's charon with ``interfaces_ignore = trmn0``
    first (see ``restart_mn_charon``); False keeps the lab's charon as it is."""
    from app.lab import charon
    from app.lab.configs import HA, MN_HA_KEY, ha_toml
    if ignore_tunnel:
        restart_mn_charon(MIP_TUNNEL)
    conf = directory / "swanctl-mc.conf"
    conf.write_text(MC_CLIENT.format(gateway=gateway, ts=charon.INTRANET_TS,
                                     psk=charon.LAB_PSK))
    loaded = swanctl("--load-all", "--file", str(conf))
    if loaded.returncode != 0:
        raise RuntimeError(f"swanctl --load-all: {loaded.stdout}{loaded.stderr}")
    up = swanctl("--initiate", "--child", "intranet", "--timeout", "10")
    ha = mn = None
    try:
        tia = tunnel_inner_address()
        if up.returncode != 0 or tia is None:
            raise RuntimeError(f"VPN not up: {up.stdout}{up.stderr}")
        (directory / "ha.toml").write_text(ha_toml(directory / "ha-state"))
        ha = Proc("tr-ha", sys.executable, "-m", "app.agents.ha_cli", "--config",
                  str(directory / "ha.toml"))
        ha.wait("serving registrations")
        mn = Proc("tr-mn", sys.executable, "-m", "tests.lab.mn_driver", "--ha", HA,
                  "--home", HOME, "--key", MN_HA_KEY, "--iface", "ipsec0")
        line = mn.wait("REGISTERED", timeout=20)[-1].split()
        if line[1] != tia or line[2] not in ("0", "1"):
            raise RuntimeError(f"registration of the TIA {tia} through the VPN: {line}")
        yield ByHand(tia, directory, ha, mn)
    finally:
        for p in (mn, ha):
            if p is not None:
                p.stop()
        swanctl("--terminate", "--ike", "lab", "--timeout", "5")


@contextmanager
def bridge_capture(path: Path, net: str, bpf: str) -> Iterator[Path]:
    """tcpdump on the switch's bridge of access network ``net`` (immediate mode: a
    capture stopped right after a frame still holds it), written to ``path``."""
    from app.lab.topology import SWITCH, bridge, default
    p = Proc(SWITCH, "tcpdump", "-U", "--immediate-mode", "-n", "-i",
             bridge(default().access[net].link), "-w", str(path), bpf, stderr_lines=True)
    try:
        assert p.err is not None
        p.err.wait("listening on")
        yield path
    finally:
        p.p.send_signal(signal.SIGINT)
        try:
            p.p.wait(10)
        finally:
            p.stop()
