"""Build, re-plug and tear down the lab in network namespaces.

Everything is created with ``ip -batch`` (one process per namespace, run in
parallel) so ``up`` takes well under the 3 s target.  What the lab starts is
recorded in ``STATE_DIR/state.json``; ``down`` also sweeps every ``tr-``
namespace and every process inside it, so it cleans up after a crash or a
``kill -9`` of the lab itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.lab import charon, nm, polkit
from app.lab import dns as lab_dns
from app.lab import portal as lab_portal
from app.lab.topology import (
    MN,
    MN_IFACE,
    MN_IFACE2,
    MN_PORT,
    MN_PORT2,
    PREFIX,
    SECOND_METRIC,
    SWITCH,
    AccessNet,
    Topology,
    bridge,
    default,
    switch_port,
)

STATE_DIR = Path(os.environ.get("TRUSTROAM_LAB_DIR", "/run/trustroam-lab"))
# charon gets a private /run, which would hide STATE_DIR: its files live here.
CHARON_DIR = Path(os.environ.get("TRUSTROAM_LAB_CHARON_DIR", "/var/lib/trustroam-lab"))
NETNS_ETC = Path("/etc/netns")


class LabError(Exception):
    """A lab step failed; the message says which and what the tool printed."""


@dataclass
class LabState:
    mn_net: str | None = None
    pids: dict[str, int] = field(default_factory=dict)
    nm: bool = False

    @classmethod
    def load(cls) -> LabState:
        try:
            raw = json.loads((STATE_DIR / "state.json").read_text())
        except (OSError, ValueError):
            return cls()
        return cls(raw.get("mn_net"), {k: int(v) for k, v in raw.get("pids", {}).items()},
                   bool(raw.get("nm", False)))

    def save(self) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = STATE_DIR / "state.json.tmp"
        tmp.write_text(json.dumps({"mn_net": self.mn_net, "pids": self.pids, "nm": self.nm}))
        tmp.replace(STATE_DIR / "state.json")


async def _run(*argv: str, stdin: str | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv[:4])}: {err.decode().strip() or out.decode().strip()}")
    return out.decode()


async def _ip_batch(lines: list[str], netns: str | None = None) -> None:
    if not lines:
        return
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    await _run(*argv, stdin="\n".join(lines) + "\n")


def _sysctl_writes(node: str, router: bool) -> list[str]:
    if node == MN:
        # As a Debian desktop is (systemd's 50-default.conf): loose reverse-path
        # filtering, which accepts a packet to the home address on any link that
        # has some route back.  The gate, not rp_filter, must keep them out.
        return ["net.ipv4.conf.all.rp_filter=2", "net.ipv4.conf.default.rp_filter=2"]
    settings = ["net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
    if router:
        settings.append("net.ipv4.ip_forward=1")
    return settings


NATS = {"tr-nat": "ext", "tr-bnat": "core"}
"""Masquerading routers and the interface they hide their side behind: the public
NAT (untrusted) and an intranet branch's (trusted, RFC 5266 section 4)."""
BRIDGE_NF = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
             "net.bridge.bridge-nf-call-arptables")


async def _plain_switch() -> None:
    """A switch does not run the IP firewall on the frames it bridges.

    Where br_netfilter is loaded (Docker loads it), every bridged frame in the
    switch namespace would go through the IP hooks: per-packet work a real
    switch does not do (14 % of the CPU of a tunnelled iperf3 run).  The
    settings are per namespace; without the module they do not exist.
    """
    if not Path("/proc/sys/net/bridge").exists():
        return
    await _run("ip", "netns", "exec", SWITCH, "sysctl", "-qw", *(f"{k}=0" for k in BRIDGE_NF))


def existing_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines()
            if line.split() and line.split()[0].startswith(PREFIX)]


class Lab:
    def __init__(self, topo: Topology | None = None) -> None:
        self.topo = topo or default()
        self.gw_inside = True
        self.portal = False
        """A captive portal on pub (:mod:`app.lab.portal`): ``up(portal=True)``."""
        self.gw_pool_nat = False
        """The VPN gateways NAT their address pools towards the intranet (RFC 5266 4):
        ``up(gw_pool_nat=True)``."""

    # -- up --------------------------------------------------------------------

    def up(self, *, at: str = "home", nm: bool = False, gw_inside: bool = True,
           portal: bool = False, gw_pool_nat: bool = False) -> float:
        """``gw_inside=False``: the VPN gateways are reachable only from outside;
        ``portal``: pub's router is a captive portal (:mod:`app.lab.portal`);
        ``gw_pool_nat``: each gateway masquerades its pool's traffic into the DMZ, so
        the home agent sees the gateway's address, never the TIA (RFC 5266 4)."""
        self.gw_inside = gw_inside
        self.portal = portal
        self.gw_pool_nat = gw_pool_nat
        return self._up_timed(at=at, nm=nm)

    def _up_timed(self, *, at: str, nm: bool) -> float:
        """Build the world; returns the seconds it took."""
        if existing_namespaces():
            raise LabError("a lab is already up (run 'trustroam-lab down' first)")
        if at not in self.topo.access:
            raise LabError(f"no access network {at!r}; choose from "
                           f"{', '.join(self.topo.access)}")
        t0 = time.monotonic()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = LabState(nm=nm)
        state.save()
        try:
            asyncio.run(self._up(state, at))
        except BaseException:
            self.down()
            raise
        return time.monotonic() - t0

    async def _up(self, state: LabState, at: str) -> None:
        t = self.topo
        await _ip_batch([f"netns add {n}" for n in t.nodes])
        # MN resolv.conf etc. must never touch the host's: give namespaces an /etc.
        for n in t.nodes:
            (NETNS_ETC / n).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / n / "resolv.conf").write_text("# trustroam lab\n")
        if lab_dns.available():  # the MN's names go to its systemd-resolved, as on Debian
            (NETNS_ETC / MN / "resolv.conf").write_text(lab_dns.STUB_RESOLV_CONF)
        cables = [f"link add {switch_port(p)} netns {SWITCH} type veth peer name {p.iface} "
                  f"netns {p.node}" for p in t.ports]
        cables.append(f"link add {MN_PORT} netns {SWITCH} type veth peer name {MN_IFACE} "
                      f"netns {MN}")
        await _ip_batch(cables)
        sw = ["link set lo up"]
        for link in t.links:
            sw += [f"link add {bridge(link)} type bridge stp_state 0 mcast_snooping 0",
                   f"link set {bridge(link)} up"]
        for p in t.ports:
            sw += [f"link set {switch_port(p)} master {bridge(p.link)}",
                   f"link set {switch_port(p)} up"]
        sw += [f"link set {MN_PORT} master {bridge(t.access[at].link)}",
               f"link set {MN_PORT} up"]
        jobs = [_ip_batch(sw, SWITCH), _plain_switch()]
        for node in t.nodes:
            if node == SWITCH:
                continue
            lines = ["link set lo up"]
            for p in t.ports:
                if p.node == node:
                    lines += [f"addr add {p.address} dev {p.iface}", f"link set {p.iface} up"]
            if node == MN:
                lines.append(f"link set {MN_IFACE} up")
            jobs.append(self._node(node, lines))
        await asyncio.gather(*jobs)
        await asyncio.gather(*(self._routes(n) for n in t.routes))
        await asyncio.gather(self._firewall(), self._nat(), self._links_ready())
        if self.gw_pool_nat:
            await asyncio.gather(*(self._pool_nat(gw) for gw in charon.GATEWAYS))
        for net in t.access.values():
            state.pids[f"dnsmasq-{net.name}"] = self._start_dnsmasq(net)
        self._start_resolvers(state)
        if self.portal:
            state.pids["portal"] = await self._start_portal()
        state.mn_net = at
        await self._start_bus(state)
        if lab_dns.available():
            self._start_resolved(state)
        if state.nm:
            await self._start_nm(state)
        else:
            state.pids["dhclient"] = self._start_dhclient()
        for gw in charon.GATEWAYS:
            state.pids[f"charon-{gw.node}"] = self._start_charon(gw.node, gw)
        state.pids[f"charon-{MN}"] = self._start_charon(MN, None)
        state.save()
        await asyncio.gather(*(self._load_gateway(gw) for gw in charon.GATEWAYS),
                             self._vici_ready(MN))

    async def _links_ready(self, timeout: float = 5.0) -> None:
        """Wait until every switch port forwards.  The kernel's linkwatch reports
        carrier up to a second late; until then a bridge drops what the port sends."""
        deadline = time.monotonic() + timeout
        while True:
            out = await _run("ip", "-n", SWITCH, "-j", "link", "show")
            ports = [link for link in json.loads(out) if link.get("master")]
            if ports and all(link.get("operstate") == "UP" for link in ports):
                return
            if time.monotonic() > deadline:
                late = [link["ifname"] for link in ports if link.get("operstate") != "UP"]
                raise LabError(f"switch ports without carrier after {timeout} s: {late}")
            await asyncio.sleep(0.02)  # netlink has no "carrier settled" event to await

    async def _mn_carrier(self, *, up: bool, timeout: float = 5.0) -> None:
        """Wait until the MN's own eth0 shows the carrier change (linkwatch lag)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = await _run("ip", "-n", MN, "-j", "link", "show", "dev", MN_IFACE)
            if (json.loads(out)[0].get("operstate") == "UP") is up:
                return
            await asyncio.sleep(0.02)
        raise LabError(f"the MN's {MN_IFACE} did not go {'up' if up else 'down'}")

    async def _node(self, node: str, lines: list[str]) -> None:
        await _ip_batch(lines, node)
        await _run("ip", "netns", "exec", node, "sysctl", "-qw",
                   *_sysctl_writes(node, node in self.topo.routers))

    async def _routes(self, node: str) -> None:
        await _ip_batch([f"route replace {dst} via {gw}" for dst, gw in self.topo.routes[node]],
                        node)

    async def _firewall(self) -> None:
        # External networks reach the DMZ (IKE, NAT-T, ESP) and nothing inside:
        # a registration request sent from outside gets no answer.
        rules = """
table inet tr_fw
delete table inet tr_fw
table inet tr_fw {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "core" oifname "dmz" ip daddr {pools} accept
    iifname "core" oifname "dmz" {inside_to_dmz}
    iifname "core" accept
    iifname "dmz" accept
    iifname "ext" oifname "dmz" udp dport { 500, 4500 } accept
    iifname "ext" oifname "dmz" meta l4proto esp accept
    iifname "ext" oifname "dmz" icmp type echo-request accept
  }
}
"""
        # The VPN's address pools are routed through the gateways: the intranet always
        # reaches them (the home agent's tunnel to a TIA); only the gateways'
        # own addresses can be made unreachable from inside (``gw_inside``).
        pools = ", ".join(g.pool for g in charon.GATEWAYS)
        rules = rules.replace("{inside_to_dmz}", "accept" if self.gw_inside else "drop")
        rules = rules.replace("{pools}", "{ " + pools + " }")
        await _run("ip", "netns", "exec", "tr-fw", "nft", "-f", "-", stdin=rules)

    def set_gw_inside(self, inside: bool) -> None:
        """Whether the intranet reaches the VPN gateways (RFC 5266 3.4.2's keep-alive
        inside needs it); the firewall is replaced in one transaction."""
        self.gw_inside = inside
        asyncio.run(self._firewall())

    def set_nat(self, *, fully_random: bool, node: str = "tr-nat") -> None:
        """Reload a NAT (``tr-nat`` outside, ``tr-bnat`` the trusted branch):
        ``fully_random`` makes it pick a new port for each new mapping."""
        subprocess.run(["ip", "netns", "exec", node, "nft", "delete", "table", "ip",
                        "tr_nat"], capture_output=True, check=False)
        asyncio.run(self._one_nat(node, NATS[node], fully_random))

    def flush_nat_mappings(self, node: str = "tr-nat") -> None:
        """Forget every NAT mapping, as a NAT reboot or timeout would."""
        subprocess.run(["ip", "netns", "exec", node, "conntrack", "-F"],
                       capture_output=True, check=False)

    async def _nat(self) -> None:
        await asyncio.gather(*(self._one_nat(node, out) for node, out in NATS.items()))

    async def _one_nat(self, node: str, out: str, fully_random: bool = False) -> None:
        masq = "masquerade fully-random" if fully_random else "masquerade"
        rules = f"""
table ip tr_nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat;
    oifname "{out}" {masq}
  }}
}}
"""
        await _run("ip", "netns", "exec", node, "nft", "-f", "-", stdin=rules)

    async def _pool_nat(self, gw: charon.Gateway, fully_random: bool = False) -> None:
        """The gateway source-NATs what its pool sends into the DMZ (its own address):
        a TIA from a private pool, translated on its way to the home agent."""
        await _run("ip", "netns", "exec", gw.node, "nft", "-f", "-",
                   stdin=charon.pool_nat_rules(gw, fully_random=fully_random))

    def set_pool_nat(self, *, fully_random: bool) -> None:
        """Reload the gateways' pool NAT (``up(gw_pool_nat=True)``): ``fully_random``
        makes each pick a new port for each new mapping."""
        if not self.gw_pool_nat:
            raise LabError("the gateways do not NAT their pools (up(gw_pool_nat=True))")
        for gw in charon.GATEWAYS:
            subprocess.run(["ip", "netns", "exec", gw.node, "nft", "delete", "table", "ip",
                            charon.POOL_NAT_TABLE], capture_output=True, check=False)
        asyncio.run(self._apply_pool_nat(fully_random))

    async def _apply_pool_nat(self, fully_random: bool) -> None:
        await asyncio.gather(*(self._pool_nat(gw, fully_random) for gw in charon.GATEWAYS))

    async def _start_portal(self) -> int:
        """pub's captive portal: its rules on the router, then its HTTP server."""
        await _run("ip", "netns", "exec", lab_portal.NODE, "nft", "-f", "-",
                   stdin=lab_portal.RULES)
        log = self.portal_log()
        log.write_text("")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab_portal.NODE, sys.executable, "-m", "app.lab.portal",
             "serve", str(log)], stdout=subprocess.PIPE,
            stderr=(STATE_DIR / "portal.err").open("w"), start_new_session=True, text=True)
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)  # its readiness line
        if "portal serving" not in line:
            raise LabError(f"the captive portal did not start (see {STATE_DIR / 'portal.err'})")
        return proc.pid

    @staticmethod
    def portal_log() -> Path:
        """One line per HTTP request the portal received: ``client method host path``."""
        return STATE_DIR / "portal.log"

    @staticmethod
    def portal_signed() -> list[str]:
        """The link-layer addresses that have signed in at pub's portal."""
        out = subprocess.run(["ip", "netns", "exec", lab_portal.NODE, "nft", "-j", "list",
                              "set", "inet", lab_portal.TABLE, "signed"],
                             capture_output=True, text=True, check=False)
        try:
            for item in json.loads(out.stdout)["nftables"]:
                if "set" in item:
                    return [str(e) for e in item["set"].get("elem", [])]
        except (ValueError, KeyError):
            pass
        return []

    def _start_dnsmasq(self, net: AccessNet) -> int:
        port = self.topo.port(net.dhcp_server, net.link)
        conf = STATE_DIR / f"dnsmasq-{net.name}.conf"
        conf.write_text(
            f"port=0\ninterface={port.iface}\nbind-interfaces\n"
            f"dhcp-range={net.pool[0]},{net.pool[1]},{net.router.netmask},1h\n"
            f"dhcp-option=option:router,{net.router.ip}\n"
            f"dhcp-option=option:dns-server,{lab_dns.resolver_of(self.topo, net)}\n"
            f"{lab_dns.dhcp_domain_options(net)}"
            f"dhcp-leasefile={STATE_DIR / f'dnsmasq-{net.name}.leases'}\n"
            "dhcp-authoritative\nno-ping\nuser=root\nno-resolv\nno-hosts\n")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", net.dhcp_server, "dnsmasq", "--keep-in-foreground",
             f"--conf-file={conf}", f"--pid-file={STATE_DIR / f'dnsmasq-{net.name}.pid'}"],
            stdout=subprocess.DEVNULL, stderr=(STATE_DIR / f"dnsmasq-{net.name}.log").open("w"),
            start_new_session=True)
        return proc.pid

    def _start_resolvers(self, state: LabState) -> None:
        """The intranet's resolver and each visited network's own (app.lab.dns)."""
        servers = [("intranet", lab_dns.INTRANET_NODE, lab_dns.INTRANET_RESOLVER, True)]
        for net in self.topo.access.values():
            if not net.home:
                servers.append((net.name, net.dhcp_server,
                                lab_dns.resolver_of(self.topo, net), False))
        for name, node, address, intranet in servers:
            conf = STATE_DIR / f"dns-{name}.conf"
            conf.write_text(lab_dns.dnsmasq_conf(address, STATE_DIR / f"dns-{name}.log",
                                                 intranet=intranet))
            proc = subprocess.Popen(
                ["ip", "netns", "exec", node, "dnsmasq", "--keep-in-foreground",
                 f"--conf-file={conf}", f"--pid-file={STATE_DIR / f'dns-{name}.pid'}"],
                stdout=subprocess.DEVNULL, stderr=(STATE_DIR / f"dns-{name}.err").open("w"),
                start_new_session=True)
            state.pids[f"dns-{name}"] = proc.pid

    def _start_resolved(self, state: LabState) -> None:
        """The MN's systemd-resolved on its private system bus (app.lab.dns)."""
        d = CHARON_DIR / "nm"
        conf = d / "resolved.conf"
        conf.write_text(lab_dns.RESOLVED_CONF)
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=nm.bus_address(d / "system_bus_socket"),
                   SYSTEMD_LOG_LEVEL="debug", SYSTEMD_LOG_TARGET="console")
        proc = subprocess.Popen(["ip", "netns", "exec", MN, *lab_dns.resolved_command(conf)],
                                env=env, stdout=subprocess.DEVNULL,
                                stderr=(d / "resolved.log").open("w"), start_new_session=True)
        state.pids["resolved"] = proc.pid

    async def _start_bus(self, state: LabState) -> None:
        """The MN's private system bus (for the helper, NetworkManager and polkitd)."""
        d, sock, _ = nm.prepare(CHARON_DIR, MN_IFACE)
        bus = subprocess.Popen(["dbus-daemon", f"--config-file={d / 'bus.conf'}", "--nofork"],
                               stdout=subprocess.DEVNULL, stderr=(d / "bus.log").open("w"),
                               start_new_session=True)
        state.pids["dbus"] = bus.pid
        deadline = time.monotonic() + 10
        while not sock.exists():
            if time.monotonic() > deadline:
                raise LabError(f"the lab's system bus did not open {sock}")
            await asyncio.sleep(0.02)  # dbus-daemon signals readiness only by the socket
        cmd = polkit.command(d)
        if cmd is not None:
            env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=nm.bus_address(sock))
            proc = subprocess.Popen(["ip", "netns", "exec", MN, *cmd], env=env,
                                    stdout=subprocess.DEVNULL,
                                    stderr=(d / "polkitd.log").open("w"),
                                    start_new_session=True)
            state.pids["polkitd"] = proc.pid

    async def _start_nm(self, state: LabState) -> None:
        d, sock, nm_conf = nm.prepare(CHARON_DIR, MN_IFACE)
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=nm.bus_address(sock))
        proc = subprocess.Popen(["ip", "netns", "exec", MN, *nm.nm_command(nm_conf)], env=env,
                                stdout=subprocess.DEVNULL, stderr=(d / "nm.log").open("w"),
                                start_new_session=True)
        state.pids["NetworkManager"] = proc.pid

    def nm_bus(self) -> str:
        """DBUS_SYSTEM_BUS_ADDRESS of the MN's private system bus (helper, polkitd, NM)."""
        return nm.bus_address(CHARON_DIR / "nm" / "system_bus_socket")

    def _start_charon(self, node: str, gw: charon.Gateway | None) -> int:
        d = charon.prepare(CHARON_DIR, node, gateway=gw)
        if gw is not None:
            subprocess.run(["ip", "-n", node, "addr", "add", f"{gw.inside}/32", "dev", "lo"],
                           check=True, capture_output=True)
        proc = subprocess.Popen(["ip", "netns", "exec", node, *charon.command(d)],
                                stdout=subprocess.DEVNULL, stderr=(d / "stderr.log").open("w"),
                                start_new_session=True)
        return proc.pid

    def kill_charon(self, node: str = MN) -> None:
        """Kill a node's charon as a crash would (SIGKILL: its VICI socket file stays)."""
        state = LabState.load()
        pid = state.pids.pop(f"charon-{node}", None)
        if pid is not None:
            _kill(pid)
        state.save()

    def start_charon(self, node: str = MN) -> None:
        """(Re)start the MN's charon as ``up`` does; returns when its VICI socket exists."""
        if node != MN:
            raise LabError("only the MN's charon restarts alone (a gateway needs its config)")
        state = LabState.load()
        if f"charon-{node}" in state.pids:
            raise LabError(f"charon in {node} is already running")
        with contextlib.suppress(FileNotFoundError):  # a killed charon leaves it behind
            (charon.directory(CHARON_DIR, node) / "charon.vici").unlink()
        state.pids[f"charon-{node}"] = self._start_charon(node, None)
        state.save()
        asyncio.run(self._vici_ready(node))

    async def _vici_ready(self, node: str, timeout: float = 10.0) -> None:
        sock = charon.directory(CHARON_DIR, node) / "charon.vici"
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if time.monotonic() > deadline:
                raise LabError(f"charon in {node} did not open {sock} within {timeout} s "
                               f"(see {sock.parent / 'charon.log'})")
            await asyncio.sleep(0.02)  # charon signals readiness only by the socket

    async def _load_gateway(self, gw: charon.Gateway) -> None:
        await self._vici_ready(gw.node)
        d = charon.directory(CHARON_DIR, gw.node)
        await _run("ip", "netns", "exec", gw.node,
                   *charon.swanctl(d, "--load-all", "--file", str(d / "swanctl.conf")))


    def _dhclient_script(self, metric: int = 0) -> Path:
        script = STATE_DIR / ("dhclient-script" if not metric else f"dhclient-script-{metric}")
        script.write_text("""#!/bin/sh
# The lab's DHCP client script: address and default route only, no resolv.conf.
# Only the interface's own addresses (label = its name) are flushed, as Debian's
# script does: another label (the kernel-ESP emulation's virtual IP) stays.
case "$reason" in
BOUND|RENEW|REBIND|REBOOT)
  if [ "$old_ip_address" != "$new_ip_address" ]; then
    ip addr flush dev "$interface" label "$interface" scope global
  fi
  ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface"
  for r in $new_routers; do ip route replace default via "$r" dev "$interface"METRIC; break; done
  ;;
EXPIRE|FAIL|RELEASE|STOP)
  ip addr flush dev "$interface" label "$interface" scope global
  ;;
esac
exit 0
""".replace("METRIC", f" metric {metric}" if metric else ""))
        script.chmod(0o755)
        return script

    def _start_dhclient(self, iface: str = MN_IFACE, metric: int = 0) -> int:
        tag = "" if iface == MN_IFACE else f"-{iface}"
        leases = STATE_DIR / f"mn{tag}.leases"
        with contextlib.suppress(FileNotFoundError):
            leases.unlink()
        proc = subprocess.Popen(
            ["ip", "netns", "exec", MN, "dhclient", "-4", "-d", "-sf",
             str(self._dhclient_script(metric)), "-lf", str(leases), "-pf",
             str(STATE_DIR / f"dhclient{tag}.pid"), iface],
            stdout=subprocess.DEVNULL, stderr=(STATE_DIR / "dhclient.log").open("a"),
            start_new_session=True)
        return proc.pid

    # -- move ------------------------------------------------------------------

    def move(self, net: str) -> None:
        """Re-plug the mobile node's cable into ``net``'s link, as a user would."""
        if net not in self.topo.access:
            raise LabError(f"no access network {net!r}; choose from "
                           f"{', '.join(self.topo.access)}")
        state = LabState.load()
        if MN not in existing_namespaces():
            raise LabError("the lab is not up (run 'trustroam-lab up')")
        old = state.pids.pop("dhclient", None)
        if old is not None and not state.nm:
            _kill(old)
        # Unplug (the MN sees carrier go), flush, plug into the new bridge.
        asyncio.run(self._replug(net, flush=not state.nm))
        state.mn_net = net
        if state.nm:
            # NetworkManager defers acting on a carrier loss by 4 s and keeps its
            # lease if the carrier returns sooner; a re-plug into another network
            # is a new connection for it, as when a laptop joins another network.
            out = subprocess.run(["nmcli", "--wait", "0", "connection", "up",
                                  f"lab-{MN_IFACE}"], env=dict(os.environ,
                                  DBUS_SYSTEM_BUS_ADDRESS=self.nm_bus()),
                                 capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise LabError(f"NetworkManager did not take the move: {out.stderr.strip()}")
        else:
            state.pids["dhclient"] = self._start_dhclient()
        state.save()

    def unplug(self) -> None:
        """Pull the MN's first cable (eth0) out: its DHCP client stops, its addresses go.
        ``move`` plugs it in again."""
        state = LabState.load()
        if MN not in existing_namespaces():
            raise LabError("the lab is not up (run 'trustroam-lab up')")
        if state.nm:
            raise LabError("unplug is for the lab without NetworkManager")
        old = state.pids.pop("dhclient", None)
        if old is not None:
            _kill(old)
        asyncio.run(self._unplug(MN_PORT, MN_IFACE))
        state.mn_net = None
        state.save()

    # -- the second link (Wi-Fi next to the Ethernet) -----------------------------

    def plug_second(self, net: str) -> None:
        """Plug the MN's second link (eth1, made on first use) into ``net``'s link, with
        its own DHCP client; its default route has metric ``SECOND_METRIC``."""
        if net not in self.topo.access:
            raise LabError(f"no access network {net!r}; choose from "
                           f"{', '.join(self.topo.access)}")
        state = LabState.load()
        if MN not in existing_namespaces():
            raise LabError("the lab is not up (run 'trustroam-lab up')")
        if state.nm:
            raise LabError("the second link is for the lab without NetworkManager")
        old = state.pids.pop(f"dhclient-{MN_IFACE2}", None)
        if old is not None:
            _kill(old)
        asyncio.run(self._plug_second(net))
        state.pids[f"dhclient-{MN_IFACE2}"] = self._start_dhclient(MN_IFACE2, SECOND_METRIC)
        state.save()

    def unplug_second(self) -> None:
        """Pull the second link out (nothing if it was never plugged)."""
        state = LabState.load()
        old = state.pids.pop(f"dhclient-{MN_IFACE2}", None)
        if old is not None:
            _kill(old)
        state.save()
        if self._has_second():
            asyncio.run(self._unplug(MN_PORT2, MN_IFACE2))

    @staticmethod
    def _has_second() -> bool:
        return subprocess.run(["ip", "-n", MN, "link", "show", MN_IFACE2], capture_output=True,
                              check=False).returncode == 0

    async def _plug_second(self, net: str) -> None:
        if not self._has_second():
            await _ip_batch([f"link add {MN_PORT2} netns {SWITCH} type veth peer name "
                             f"{MN_IFACE2} netns {MN}"])
            await _ip_batch([f"link set {MN_IFACE2} up"], MN)
        await self._unplug(MN_PORT2, MN_IFACE2)
        await _ip_batch([f"link set {MN_PORT2} master {bridge(self.topo.access[net].link)}",
                         f"link set {MN_PORT2} up"], SWITCH)
        await self._links_ready()
        await self._carrier(MN_IFACE2, up=True)

    async def _unplug(self, port: str, iface: str) -> None:
        await _ip_batch([f"link set {port} down", f"link set {port} nomaster"], SWITCH)
        await self._carrier(iface, up=False)
        await _ip_batch([f"addr flush dev {iface} label {iface} scope global"], MN)

    async def _carrier(self, iface: str, *, up: bool, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = await _run("ip", "-n", MN, "-j", "link", "show", "dev", iface)
            if (json.loads(out)[0].get("operstate") == "UP") is up:
                return
            await asyncio.sleep(0.02)  # linkwatch lag: no event to await
        raise LabError(f"the MN's {iface} did not go {'up' if up else 'down'}")

    async def _replug(self, net: str, flush: bool) -> None:
        await _ip_batch([f"link set {MN_PORT} down", f"link set {MN_PORT} nomaster"], SWITCH)
        await self._mn_carrier(up=False)
        if flush:
            # The interface's own addresses: one under another label stays, as
            # charon's virtual IP stays through a DHCP change with kernel ESP
            # (tests/lab/kernel_esp.py puts it there).
            await _ip_batch([f"addr flush dev {MN_IFACE} label {MN_IFACE} scope global"], MN)
        await _ip_batch([f"link set {MN_PORT} master {bridge(self.topo.access[net].link)}",
                         f"link set {MN_PORT} up"], SWITCH)
        await self._links_ready()

    # -- down ------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove every trace of the lab; returns what was removed."""
        removed: list[str] = []
        state = LabState.load()
        for name, pid in state.pids.items():
            if _kill(pid):
                removed.append(f"process {name} ({pid})")
        for ns in existing_namespaces():
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                                 check=False)
            for pid_text in out.stdout.split():
                if _kill(int(pid_text)):
                    removed.append(f"process {pid_text} in {ns}")
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            removed.append(f"namespace {ns}")
        for d in NETNS_ETC.glob(f"{PREFIX}*"):
            shutil.rmtree(d, ignore_errors=True)
        for d in (STATE_DIR, CHARON_DIR):
            if d.exists():
                shutil.rmtree(d, ignore_errors=True)
                removed.append(str(d))
        return removed

    # -- status ----------------------------------------------------------------

    def status(self) -> dict[str, object]:
        state = LabState.load()
        namespaces = existing_namespaces()
        mn_addr = None
        if MN in namespaces:
            out = subprocess.run(["ip", "-n", MN, "-j", "-4", "addr", "show", MN_IFACE],
                                 capture_output=True, text=True, check=False)
            with contextlib.suppress(ValueError, IndexError, KeyError):
                infos = json.loads(out.stdout)[0]["addr_info"]
                mn_addr = [f"{a['local']}/{a['prefixlen']}" for a in infos]
        return {
            "up": bool(namespaces),
            "namespaces": namespaces,
            "mn_net": state.mn_net,
            "mn_addresses": mn_addr,
            "processes": {k: {"pid": v, "alive": _alive(v)} for k, v in state.pids.items()},
            "nm": state.nm,
        }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _kill(pid: int) -> bool:
    """Kill a process and its session (what the lab starts leads its own)."""
    killed = False
    for target, fn in ((pid, os.killpg), (pid, os.kill)):
        try:
            fn(target, signal.SIGKILL)
            killed = True
        except (ProcessLookupError, PermissionError):
            pass
    if killed:
        _reap(pid)
    return killed


def _reap(pid: int, timeout: float = 2.0) -> None:
    """Wait until a killed process is gone (reaped if it is our child, else a zombie)."""
    try:
        os.waitpid(pid, 0)  # SIGKILL is immediate; this returns at once
        return
    except ChildProcessError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return
        time.sleep(0.005)  # nothing to await: the kernel tears it down
