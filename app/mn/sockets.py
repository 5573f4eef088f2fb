"""The mobile node's sockets: registration, agent discovery and the VPN probe.

The driver's I/O on the network, apart from the routes and the gate
(docs/ARCHITECTURE.md): what arrives goes out through the sinks given at
construction, never back into the driver; everything opened here is closed
by :meth:`MobileNodeSockets.close`.

- The link's registration socket (:func:`direct_socket`: bound to the link's
  address and interface, so a probe never takes a tunnel) and one per other
  source (the home address, RFC 5944 3.6.1.1).  RFC 3519 4.7 tunnel data on it
  goes to ``on_tunnel_data``, everything else to ``on_datagram`` tagged LINK.
- The registration socket bound to the TIA, through the VPN (mode mc): tagged VPN.
- The ICMP socket of the link that hears agent advertisements and sends
  solicitations (RFC 5944 2.1, 2.2).
- The VPN probe: an ICMP echo to the gateway from the physical link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address

from app.mip.errors import DecodeError
from app.mip.icmp import ALL_ROUTERS, AgentFlags, AgentSolicitation, advertisement_in_ip, icmp_in_ip
from app.mip.messages import MIP_PORT
from app.mn import access_mode as am
from app.mn.nat_keepalive import echo_request, parse_echo_reply
from app.mn.reply_path import Path
from app.net.gate_rules import HELPER_MARK
from app.net.ipip import IP_FREEBIND, TUNNEL_DATA_HEADER
from app.net.ipsec_bypass import bypass_ipsec
from app.net.mn_routes import VPN_DEVICE

log = logging.getLogger("trustroam.mn")
ECHO_ID = 0x5452
"""ICMP identifier of the VPN probe's echoes."""
ECHO_FORGET = 10.0
"""Seconds after which an unanswered VPN probe is no longer matched."""


def direct_socket(iface: str, address: IPv4Address, *, freebind: bool = False
                  ) -> socket.socket:
    """A socket for RFC 5266 3.4's direct registration ("without any VPN
    encapsulation"): bound to the link's own address and interface, marked for
    the gate and the link's routing rules, and out of every IPsec policy both
    ways (``app.net.ipsec_bypass``: charon's, with kernel ESP, would take a request
    whose addresses it matches, and a reply decrypted by it must not count)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, HELPER_MARK)  # the gate knows us
        bypass_ipsec(s)
        if freebind:
            s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        s.bind((str(address), 0))
    except OSError:
        s.close()
        raise
    s.setblocking(False)
    return s


class EchoProbe:
    """The VPN probes in flight and the round trip of the reply that matches one
    (pure: the times are given)."""

    def __init__(self, identifier: int = ECHO_ID) -> None:
        self.identifier = identifier
        self._seq = 0
        self._sent: dict[int, tuple[float, IPv4Address]] = {}

    def request(self, source: IPv4Address, gateway: IPv4Address) -> tuple[int, bytes]:
        """The next sequence number and its ICMP echo request (the kernel adds the IP
        header)."""
        self._seq = (self._seq + 1) & 0xFFFF
        return self._seq, icmp_in_ip(echo_request(source, gateway, self.identifier,
                                                  self._seq))[1]

    def sent(self, seq: int, gateway: IPv4Address, now: float) -> None:
        self._sent = {k: v for k, v in self._sent.items() if now - v[0] < ECHO_FORGET}
        self._sent[seq] = (now, gateway)

    def reply(self, packet: bytes, now: float) -> tuple[IPv4Address, float] | None:
        """(gateway, RTT) if ``packet`` answers a probe in flight (its identifier and
        sequence, from its gateway); each probe is answered once."""
        for seq, (at, gw) in list(self._sent.items()):
            if parse_echo_reply(packet, gw) == (self.identifier, seq):
                del self._sent[seq]
                return gw, now - at
        return None


class MobileNodeSockets:
    """The sockets of one mobile node: opened as the driver's actions say, their input
    handed to the sinks, all closed by :meth:`close`."""

    def __init__(self, home_agent: IPv4Address, *,
                 on_datagram: Callable[[bytes, Path], None],
                 on_tunnel_data: Callable[[bytes], None],
                 udp_tunnel: Callable[[], bool],
                 udp_tunnel_via_vpn: Callable[[], bool] = lambda: False,
                 on_advert: Callable[[am.AgentAdvert], None] = lambda a: None,
                 on_echo: Callable[[IPv4Address, float], None] = lambda gw, rtt: None,
                 on_history: Callable[[str, dict[str, str]], None] = lambda k, d: None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``udp_tunnel``: whether the binding now has an RFC 3519 UDP tunnel (tunnel
        data is taken only then), on the TIA's socket if ``udp_tunnel_via_vpn`` (mode
        mc, RFC 5266 4) else on the link's; ``on_history``: entries such as
        "probe-sent"."""
        self.home_agent = home_agent
        self.on_datagram = on_datagram
        self.on_tunnel_data = on_tunnel_data
        self.udp_tunnel = udp_tunnel
        self.udp_tunnel_via_vpn = udp_tunnel_via_vpn
        self.on_advert = on_advert
        self.on_echo = on_echo
        self.on_history = on_history
        self.monotonic = monotonic
        self.echo = EchoProbe()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reg: socket.socket | None = None
        self._reg_source: IPv4Address | None = None
        self._by_source: dict[IPv4Address, socket.socket] = {}
        """Registration sockets bound to another source (the home address)."""
        self._icmp: socket.socket | None = None
        self._icmp_iface: str | None = None
        self._vpn_reg: socket.socket | None = None
        """Registrations from the TIA, through the VPN."""
        self._echo: socket.socket | None = None

    @property
    def registration(self) -> socket.socket | None:
        """The link's registration socket (it also carries an RFC 3519 UDP tunnel)."""
        return self._reg

    def udp_tunnel_socket(self, via_vpn: bool) -> socket.socket | None:
        """The registration socket that carries an RFC 3519 tunnel: the TIA's in mode
        mc (through the VPN), else the link's."""
        return self._vpn_reg if via_vpn else self._reg

    @property
    def can_register(self) -> bool:
        """A registration (or deregistration) can leave: on the link or through the VPN."""
        return self._reg is not None or self._vpn_reg is not None

    # -- opening ---------------------------------------------------------------

    def _watch(self, s: socket.socket, callback: Callable[..., None], *args: object) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._loop.add_reader(s.fileno(), callback, s, *args)

    def open_link(self, iface: str, address: IPv4Address, *, hear_agents: bool) -> None:
        """The link's registration socket (again), and its ICMP socket if agents are
        heard and the interface changed."""
        self._close_reg()
        s = direct_socket(iface, address)
        self._watch(s, self._readable, Path.LINK)
        self._reg, self._reg_source = s, address
        if hear_agents and self._icmp_iface != iface:
            self._close_icmp()
            i = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            try:
                i.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
                i.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, HELPER_MARK)
                i.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            except OSError:
                i.close()
                raise
            i.setblocking(False)
            self._watch(i, self._icmp_readable, iface)
            self._icmp, self._icmp_iface = i, iface

    def _source_socket(self, iface: str, source: IPv4Address) -> socket.socket:
        """A registration socket bound to ``source`` on ``iface`` (kept per source)."""
        s = self._by_source.get(source)
        if s is None:
            s = direct_socket(iface, source, freebind=True)
            self._watch(s, self._readable, Path.LINK)
            self._by_source[source] = s
        return s

    def open_vpn(self, tia: IPv4Address) -> None:
        """The registration socket on the TIA (mode mc); a failure is logged.  The same
        TIA again (IKE reauthentication, a re-initiate) keeps the socket: the binding
        and its RFC 3519 UDP tunnel name its source port (RFC 3519 3.3)."""
        old = self._vpn_reg
        if old is not None and old.fileno() != -1:
            with contextlib.suppress(OSError):
                if old.getsockname()[0] == str(tia):
                    return
        self.close_vpn()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, HELPER_MARK)
            with contextlib.suppress(OSError):  # kernel ESP: no device, the rule routes
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, VPN_DEVICE.encode())
            s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            s.bind((str(tia), 0))
        except OSError as exc:
            s.close()
            log.warning("cannot open the registration socket on the TIA %s: %s", tia,
                        exc.strerror)
            return
        s.setblocking(False)
        self._watch(s, self._readable, Path.VPN)
        self._vpn_reg = s

    # -- sending ---------------------------------------------------------------

    def send(self, a: am.Send) -> None:
        """A registration message: from the link (its source's socket) or the TIA."""
        vpn = a.through_vpn
        sock = self._vpn_reg if vpn else self._reg
        if sock is None:
            return
        d = a.datagram
        dst = (str(d.destination[0]), d.destination[1])
        try:
            # RFC 5944 3.6.1.1: from the care-of address when co-located, else from
            # the home address; TTL 255 where RFC 3024 4.1.1 asks for it.
            if not vpn and d.source is not None and d.source != self._reg_source:
                sock = self._source_socket(a.iface, d.source)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, d.ttl or -1)
            sock.sendto(d.data, dst)
        except OSError as exc:
            if vpn:
                log.info("registration through the VPN not sent to %s: %s", dst[0], exc.strerror)
            else:
                log.warning("cannot send the registration request to %s: %s", dst[0],
                            exc.strerror)
            return
        self.on_history("probe-sent", {"to": dst[0], "interface": VPN_DEVICE, "vpn": "true"}
                        if vpn else {"to": dst[0], "interface": a.iface})

    def solicit(self, iface: str) -> None:
        """An agent solicitation on the link's ICMP socket (RFC 5944 2.2: TTL 1)."""
        if self._icmp is None:
            return
        try:
            self._icmp.sendto(AgentSolicitation().encode(), (str(ALL_ROUTERS), 0))
        except OSError as exc:
            log.warning("cannot solicit agents on %s: %s", iface, exc.strerror)

    def send_echo(self, gateway: IPv4Address, iface: str, source: IPv4Address) -> None:
        """The VPN probe: one ICMP echo to the gateway from the physical link (the
        gate lets the helper's marked echo to a gateway through); its reply goes to
        ``on_echo``."""
        try:
            if self._echo is None:
                e = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
                e.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, HELPER_MARK)
                e.setblocking(False)
                self._watch(e, self._echo_readable)
                self._echo = e
            seq, packet = self.echo.request(source, gateway)
            self._echo.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
            self._echo.sendto(packet, (str(gateway), 0))
            self.echo.sent(seq, gateway, self.monotonic())
        except OSError as exc:
            log.info("VPN probe to %s not sent: %s", gateway, exc.strerror)

    # -- receiving ---------------------------------------------------------------

    def _readable(self, s: socket.socket, path: Path) -> None:
        ha = (str(self.home_agent), MIP_PORT)
        while True:
            try:
                data, peer = s.recvfrom(65535)
            except OSError:  # would block, interrupted, or an ICMP error on the socket
                return
            if data[:1] == TUNNEL_DATA_HEADER[:1] and s in (self._reg, self._vpn_reg):
                # RFC 3519 4.7 tunnel data on the registration's port: only from the home
                # agent's address and port, only while this binding has a UDP tunnel,
                # and only on the socket that carries it: in mc the direct probe's
                # socket is visible on the untrusted link, and what it got must not
                # reach trmn0.
                if (peer == ha and data[:4] == TUNNEL_DATA_HEADER and self.udp_tunnel()
                        and s is self.udp_tunnel_socket(self.udp_tunnel_via_vpn())):
                    self.on_tunnel_data(data[4:])
                continue
            self.on_datagram(data, path)

    def _icmp_readable(self, s: socket.socket, iface: str) -> None:
        for pkt in _packets(s):
            try:
                found = advertisement_in_ip(pkt)
            except DecodeError as exc:
                log.info("ignored a malformed ICMP packet on %s: %s", iface, exc)
                continue
            if found is None:
                continue
            agent, adv = found
            if not adv.care_of_addresses:
                continue  # a plain router advertisement, or a home agent only
            self.on_advert(am.AgentAdvert(
                iface, IPv4Address(adv.care_of_addresses[0]), adv.registration_lifetime,
                agent=agent, busy=bool(adv.flags & AgentFlags.B)))

    def _echo_readable(self, s: socket.socket) -> None:
        for pkt in _packets(s):
            got = self.echo.reply(pkt, self.monotonic())
            if got is not None:
                self.on_echo(*got)

    # -- closing -------------------------------------------------------------------

    def _drop(self, s: socket.socket) -> None:
        if self._loop is not None:
            self._loop.remove_reader(s.fileno())
        s.close()

    def _close_reg(self) -> None:
        for s in [self._reg, *self._by_source.values()]:
            if s is not None:
                self._drop(s)
        self._reg, self._reg_source = None, None
        self._by_source.clear()

    def _close_icmp(self) -> None:
        if self._icmp is not None:
            self._drop(self._icmp)
            self._icmp, self._icmp_iface = None, None

    def close_link(self) -> None:
        """The link's own sockets (it went down); the VPN's TIA may outlive it."""
        self._close_reg()
        self._close_icmp()

    def close_vpn(self) -> None:
        if self._vpn_reg is not None:
            self._drop(self._vpn_reg)
            self._vpn_reg = None

    def close(self) -> None:
        """Every socket this module opened."""
        self.close_link()
        self.close_vpn()
        if self._echo is not None:
            self._drop(self._echo)
            self._echo = None


def _packets(s: socket.socket) -> Iterator[bytes]:
    """What a non-blocking socket holds now (an error ends it: the next read tells)."""
    while True:
        try:
            yield s.recv(2048)
        except OSError:  # would block, interrupted, or an ICMP error on the socket
            return
