"""A minimal mobile node for lab tests (not the product's helper, which is trustroamd).

Run inside the MN namespace:
    python -m tests.lab.mn_driver --ha 10.20.1.1 --home 10.20.1.10 --key HEX [--udp]

Mode c: takes eth0's DHCP address as co-located care-of address, puts the home
address on a userspace IP-in-IP tunnel to the home agent, routes the home
address's traffic into it (reverse tunnelling), registers, prints
"REGISTERED <coa> <code>" and forwards until killed.  With --udp the tunnel is
RFC 3519 UDP 434 to the home agent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from ipaddress import IPv4Address

from app.mip.auth import Algorithm
from app.mip.icmp import AgentAdvertisement, AgentSolicitation
from app.mip.messages import MIP_PORT
from app.mn.registration import (
    Denied,
    Deregistered,
    Registered,
    RegistrationClient,
    RegistrationConfig,
)
from app.net.arp import send_gratuitous_arp
from app.net.ipip import TUNNEL_DATA_HEADER, Endpoint, Key, UserspaceTunnel

TUN = "trmn0"
TABLE = "100"


def coa_of(ifname: str) -> str:
    out = subprocess.run(["ip", "-j", "-4", "addr", "show", "dev", ifname], capture_output=True,
                         text=True, check=True)
    return str(json.loads(out.stdout)[0]["addr_info"][0]["local"])


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ha", required=True)
    ap.add_argument("--home", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--iface", default="eth0")
    ap.add_argument("--udp", action="store_true")
    ap.add_argument("--lifetime", type=int, default=600)
    ap.add_argument("--keepalive", type=float, default=0.0,
                    help="with --udp: send an RFC 3519 keepalive every this many seconds")
    ap.add_argument("--fa", action="store_true",
                    help="mode f: wait for an agent advertisement, register through the FA")
    ap.add_argument("--at-home", action="store_true",
                    help="mode h: home address on the link, deregister with the home agent")
    args = ap.parse_args()
    if args.fa:
        return await mode_f(args)
    if args.at_home:
        return await mode_h(args)
    coa = coa_of(args.iface)
    ha = args.ha
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((coa, 0 if not args.udp else MIP_PORT))
    udp.connect((ha, MIP_PORT))
    endpoint = Endpoint(ha, MIP_PORT if args.udp else None)
    ha_packed = socket.inet_aton(ha)
    tunnel = UserspaceTunnel(TUN, Key.SOURCE, Key.DESTINATION, udp_socket=udp)
    tunnel.set_route(None, endpoint)
    tunnel.set_accept(None, ha_packed)
    sh("ip", "addr", "replace", f"{args.home}/32", "dev", TUN)
    sh("ip", "link", "set", TUN, "up", "mtu", "1480")
    sh("ip", "route", "replace", "default", "dev", TUN, "table", TABLE)
    subprocess.run(["ip", "rule", "del", "from", args.home, "lookup", TABLE], check=False,
                   capture_output=True)
    sh("ip", "rule", "add", "from", args.home, "lookup", TABLE, "priority", "100")
    tunnel.start()

    code = register_sync(args, udp, coa, udp_tunnel=args.udp)
    print(f"REGISTERED {coa} {code}", flush=True)
    if code not in (0, 1):
        return 1
    loop = asyncio.get_running_loop()
    udp.setblocking(False)

    def from_udp() -> None:  # RFC 3519 tunnel data from the home agent
        while True:
            try:
                data = udp.recv(65535)
            except BlockingIOError:
                return
            if data[:4] == TUNNEL_DATA_HEADER:
                tunnel.write(data[4:])  # connected to the home agent: only it sends here

    loop.add_reader(udp.fileno(), from_udp)
    if args.udp and args.keepalive:
        # Keepalive: an ICMP echo request to the home agent inside the UDP tunnel,
        # which keeps (and after a rebinding, re-teaches) the NAT mapping.
        from scapy.layers.inet import ICMP, IP
        probe = TUNNEL_DATA_HEADER + bytes(IP(src=args.home, dst=ha) / ICMP())
        while True:
            udp.send(probe)
            await asyncio.sleep(args.keepalive)
    await asyncio.Event().wait()
    return 0


def register_sync(args: argparse.Namespace, sock: socket.socket, coa: str, *,
                  via: str | None = None, deregister: bool = False, udp_tunnel: bool = False,
                  lifetime: int | None = None) -> int | None:
    """Drive the product's sans-I/O RegistrationClient with real time and a socket."""
    cfg = RegistrationConfig(IPv4Address(args.home), IPv4Address(args.ha), 256,
                             Algorithm.HMAC_MD5, bytes.fromhex(args.key),
                             lifetime=lifetime or args.lifetime, retries=5)
    client = RegistrationClient(cfg)
    if deregister:
        client.deregister(time.time())
    else:
        client.register(IPv4Address(coa), time.time(),
                        via=IPv4Address(via) if via else None, udp_tunnel=udp_tunnel)
    while True:
        for d in client.datagrams_to_send():
            sock.sendto(d.data, (str(d.destination[0]), d.destination[1]))
        ev = client.next_event()
        if isinstance(ev, Registered | Deregistered):
            return 0
        if isinstance(ev, Denied):
            return ev.code
        if ev is not None:
            return None
        timer = client.get_timer()
        sock.settimeout(None if timer is None else max(0.0, timer - time.time()))
        try:
            client.receive(sock.recv(4096), time.time())
        except TimeoutError:
            client.handle_timer(time.time())


def wait_advertisement(ifname: str, timeout: float = 5.0) -> AgentAdvertisement:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
    s.settimeout(timeout)
    # Solicit (RFC 5944 2.2) rather than wait for the next periodic advertisement.
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.sendto(AgentSolicitation().encode(), ("224.0.0.2", 0))
    while True:
        pkt = s.recv(2048)
        ihl = (pkt[0] & 0x0F) * 4
        if pkt[ihl] == 9:
            return AgentAdvertisement.decode(pkt[ihl:])


async def mode_h(args: argparse.Namespace) -> int:
    sh("ip", "addr", "replace", f"{args.home}/24", "dev", args.iface)
    # The home agent must stop proxy-ARPing before ours counts; announce ourselves too.
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((args.home, 0))
    code = register_sync(args, udp, args.home, deregister=True)
    mac = open(f"/sys/class/net/{args.iface}/address").read().strip()  # noqa: SIM115
    send_gratuitous_arp(args.iface, bytes.fromhex(mac.replace(":", "")), IPv4Address(args.home))
    print(f"REGISTERED {args.home} {code}", flush=True)
    await asyncio.Event().wait()
    return 0


async def mode_f(args: argparse.Namespace) -> int:
    adv = wait_advertisement(args.iface)
    fa = str(adv.care_of_addresses[0])
    print(f"ADVERT {fa} seq {adv.sequence} flags {adv.flags!r}", flush=True)
    sh("ip", "addr", "replace", f"{args.home}/32", "dev", args.iface)
    # Through an FA the request leaves from the home address with TTL 255
    # (RFC 5944 3.6.1.1, RFC 3024 4.1.1: the agent answers 76 otherwise).
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args.iface.encode())
    udp.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
    udp.bind((args.home, 0))
    code = register_sync(args, udp, fa, via=fa,
                         lifetime=min(args.lifetime, adv.registration_lifetime))
    print(f"REGISTERED {fa} {code}", flush=True)
    await asyncio.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
