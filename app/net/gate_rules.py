"""The traffic gate's rules as data and as nftables text: pure, no I/O.

The gate is keyed to the decision, not a switch (docs/ARCHITECTURE.md section 4): its
allow rules name what was proven -- the interface, the care-of address the
decision was made on, the mode's tunnel, the home agent and the foreign
agent -- so a new address, a new link or an interface nobody decided on
matches none of them and is blocked from its first packet, whatever the helper
has or has not read yet.

While undecided (probing, untrusted, error, offline) only this leaves any
interface but loopback: DHCP from the client port to the server port of the
limited broadcast, the helper's registration request to the configured home
agent's port 434 and its agent solicitation (both from sockets with the
helper's mark), and IKE/NAT-T/ESP to the configured VPN gateways from charon
(its sockets' mark, ``charon.plugins.socket-default.fwmark``; kernel ESP's
output carries the CHILD SA's ``set_mark_out``).  IPv6 never leaves a managed
link: RFC 5266 is an IPv4 design, and an IPv6 path would bypass both Mobile IP
and the VPN.  Forwarded traffic (containers, virtual machines, a shared
connection) leaves only by a proven path.

What comes in is keyed to the same decision (``input`` and ``forward``): the
home address only from the proven path (the tunnel device in modes c and mc,
the link in h and f), the tunnel's outer packets only from the home agent (in
mc only through IPsec), and, whatever the decision, only the replies the
undecided state needs: DHCP, registration replies to the helper's sockets,
agent advertisements, IKE/NAT-T/ESP from the gateways to charon's sockets, the
gateways' echo replies and ICMP errors about flows that were let out.  So
rp_filter (loose on Debian) and the weak host model do not matter.

On request (the profile's ``allow_lan``, or the user for one network), modes c
and mc also open the access link's own on-link subnet in clear, from the link
address (:func:`lan_subnet` decides which, and refuses a public or routed one).
While undecided, a DNS query that would be dropped is refused instead (ICMP port
unreachable, TCP reset, in the ``output`` hook where ``reject`` is allowed), so a
desktop resolver gives up at once rather than after its timeout; nothing leaves.

Rendered as one ``inet`` table that :mod:`app.net.gate` replaces whole in one
nftables transaction, so there is never a moment with half a rule set.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from app.api import Mode
from app.mip.icmp import ALL_ROUTERS
from app.mip.messages import MIP_PORT, TYPE_REPLY, TYPE_REQUEST

TABLE = "trustroam_gate"
COUNTER = "blocked"
COUNTER_IN = "blocked_in"
"""Packets refused on the way in (a counter of their own: ``blocked`` counts what
the machine tried to send)."""
PRIORITY = 110
"""The gate's postrouting priority: after source NAT (100)."""
HELPER_MARK = 0x5452
"""SO_MARK of the helper's own registration and solicitation sockets."""
CHARON_MARK = 0x5453
"""charon's mark: ``charon.plugins.socket-default.fwmark`` on its IKE sockets (which
also carry kernel-libipsec's ESP, always UDP-encapsulated), and the CHILD SA's
``set_mark_out`` on what kernel ESP sends.  Only these reach the gateways."""
PROBE_MARK = 0x5454
"""The captive-portal probe's sockets (``app.net.portal_probe.PORTAL_MARK``)."""
SIGNIN_MARK = 0x5455
"""Set in the ``portal_out`` chain on the sign-in process's packets (app.net.portal_gate)."""
LIMITED_BROADCAST = IPv4Address("255.255.255.255")
LOCAL_INTERFACES = ("lo", "docker*", "br-*", "virbr*", "lxcbr*", "podman*", "cni*")
"""Interfaces that never leave the machine: loopback and the usual container and
virtual-machine bridges (nft wildcards).  Traffic to them is local, so it is not
gated; what they forward out of a physical link is."""


@dataclass(frozen=True, slots=True)
class GatePolicy:
    """What the profile says: the fixed addresses the undecided state lets through."""

    home_agent: IPv4Address
    home_address: IPv4Address
    tunnel: str
    """The mode c tunnel device (``trmn0``): traffic into it is encapsulated to the HA."""
    gateways: tuple[IPv4Address, ...] = ()
    """VPN gateways: IKE, NAT-T and ESP to them pass while undecided (RFC 5266 3.4)."""
    vpn_device: str = "ipsec0"
    """kernel-libipsec's TUN: what enters it leaves the machine encrypted."""
    allow_lan: bool = False
    """The profile's ``allow_lan``: the link's own private subnet in clear in c and mc."""
    home_network: IPv4Network | None = None
    """The home prefix: never opened as a local network (it goes through the tunnel)."""
    intranet: tuple[IPv4Network, ...] = ()
    """The VPN's intranet prefixes (routed through the tunnel): never opened either."""
    dns_servers: tuple[IPv4Address, ...] = ()
    """The profile's ``[dns]`` servers (the intranet's resolvers): never opened either."""


@dataclass(frozen=True, slots=True)
class ProvenPath:
    """A trusted decision: what the access-mode machine proved, and on what."""

    iface: str
    link_address: IPv4Address
    """The address the direct probe was answered on (the co-located care-of address)."""
    mode: Mode
    foreign_agent: IPv4Address | None = None
    """An FA advertising on this trusted link: registrations to it may leave."""
    tunnel_inner_address: IPv4Address | None = None
    """Mode mc: the VPN's inner address, the Mobile IP tunnel's outer source."""

    def __post_init__(self) -> None:
        if self.mode not in (Mode.HOME, Mode.COLOCATED, Mode.FOREIGN_AGENT, Mode.VPN):
            raise ValueError(f"no proven path for mode {self.mode.value}")
        if (self.mode is Mode.VPN) != (self.tunnel_inner_address is not None):
            raise ValueError("a tunnel inner address goes with mode mc, and only with it")


def _q(name: str) -> str:
    """An interface name as an nft string (names come from the kernel: no quotes)."""
    if '"' in name or "\\" in name or not name:
        raise ValueError(f"interface name {name!r} cannot be put in a rule")
    return f'"{name}"'


LAN_NETWORKS = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"),
                IPv4Network("192.168.0.0/16"), IPv4Network("169.254.0.0/16"))
"""What ``allow_lan`` may open: private (RFC 1918) and link-local (RFC 3927) space."""
LAN_MIN_PREFIX = 16
"""No wider local network than a /16: a link claiming 10.0.0.0/8 would take in
the whole of a corporate address plan."""
LAN_MODES = (Mode.COLOCATED, Mode.VPN)
"""The modes whose path is a tunnel: only there is the local network otherwise shut
(h and f send everything on the link already)."""


@dataclass(frozen=True, slots=True)
class LanDecision:
    """Which local network ``allow_lan`` opens on a link: ``subnet``, or None and why."""

    subnet: IPv4Network | None
    refusal: str = ""


def lan_subnet(link: IPv4Interface, policy: GatePolicy, mode: Mode = Mode.VPN
               ) -> LanDecision:
    """The access link's own on-link subnet (its address and prefix: never a routed
    prefix), if it is private or link-local space, no wider than a /16, and holds
    nothing that belongs to the tunnel (the home network, the VPN's intranet, the
    home agent, a VPN gateway, a ``[dns]`` server).  The VPN's intranet only in mode
    mc: a trusted network (mode c, the home agent answered directly) is inside the
    corporate network, in its address plan, and h and f send all in clear on it."""
    net = link.network
    if net.prefixlen > 30:
        return LanDecision(None, f"{link} has no local network (a /{net.prefixlen} "
                                 "holds no other host)")
    if not any(net.subnet_of(p) for p in LAN_NETWORKS):
        return LanDecision(None, f"{net} is not private (RFC 1918) or link-local "
                                 "address space: a public or routed network stays shut")
    if net.prefixlen < LAN_MIN_PREFIX:
        return LanDecision(None, f"{net} is wider than a /{LAN_MIN_PREFIX}: too wide to be "
                                 "opened as a local network")
    home = policy.home_network
    if home is not None and net.overlaps(home):
        return LanDecision(None, f"{net} overlaps the home network {home}: that goes "
                                 "through the tunnel")
    for prefix in policy.intranet if mode is Mode.VPN else ():
        if net.overlaps(prefix):
            return LanDecision(None, f"{net} overlaps the VPN's intranet {prefix}: that goes "
                                     "through the tunnel")
    for what, addr in (("the home agent", policy.home_agent),
                       ("the home address", policy.home_address),
                       *(("the VPN gateway", g) for g in policy.gateways),
                       *(("the [dns] server", d) for d in policy.dns_servers)):
        if addr in net:
            return LanDecision(None, f"{net} holds {what} {addr}: that goes through "
                                     "the tunnel")
    return LanDecision(net)


LAN_NAME_PORTS = (53, 853, 5353, 5355)
"""DNS, DNS over TLS, unicast mDNS and LLMNR: never to the local network, even with
``allow_lan`` (the visited network's resolver is in it, and a mode's names go
through the tunnel only)."""


def lan_rules(path: ProvenPath | None, lan: IPv4Network | None) -> list[str]:
    """Out: the link address to its own subnet, in modes c and mc only; never name
    lookups (resolved still sends the link's search-domain queries to the visited
    network's resolver, which is inside that subnet)."""
    if path is None or lan is None or path.mode not in LAN_MODES:
        return []
    to = f"oifname {_q(path.iface)} ip saddr {path.link_address} ip daddr {lan}"
    ports = ", ".join(str(p) for p in LAN_NAME_PORTS)
    return [f"{to} meta l4proto {{ tcp, udp }} th dport {{ {ports} }} counter name {COUNTER} "
            "drop", f"{to} accept"]


def lan_in_rules(path: ProvenPath | None, lan: IPv4Network | None,
                 forward: bool = False) -> list[str]:
    """In: only what answers the machine's own flows to that subnet (its services
    stay closed to the local network); ``forward``: answers to its guests' flows
    (they left masqueraded as the link address; here they are de-NATed already)."""
    if path is None or lan is None or path.mode not in LAN_MODES:
        return []
    to = "" if forward else f" ip daddr {path.link_address}"
    return [f"iifname {_q(path.iface)} ip saddr {lan}{to} ct state established,related accept"]


DNS_PORT = 53


def dns_refusal_rules(path: ProvenPath | None) -> list[str]:
    """While undecided, DNS out of any non-local interface is refused at once: an
    ICMP port unreachable (UDP) or a TCP reset goes back to the sender (on
    loopback) and nothing leaves.  Everything else is still dropped silently."""
    if path is not None:
        return []
    # The portal probe's and the sign-in window's lookups are not refused here: the
    # portal chain (postrouting) decides where they may go, or a named probe URL
    # would never resolve and no portal would ever be found.
    return [f"meta mark {{ {PROBE_MARK:#x}, {SIGNIN_MARK:#x} }} return",
            f"udp dport {DNS_PORT} reject",
            f"tcp dport {DNS_PORT} reject with tcp reset"]


REPLY_PAYLOAD = f"@th,64,8 {TYPE_REPLY}"
"""The first byte of the UDP payload (after the 8-byte header) is a Registration Reply."""
REQUEST_PAYLOAD = f"@th,64,8 {TYPE_REQUEST}"
"""... a Registration Request (RFC 5944 3.3), not RFC 3519 tunnel data (type 4)."""


def undecided_rules(policy: GatePolicy) -> list[str]:
    m = f"meta mark {HELPER_MARK:#x}"
    rules = [
        # DHCP, client to server, by the limited broadcast only: the link's server
        # is not known here, and "port 67 of any host" is a way out for anything
        # bound to port 68.  A unicast renewal (RFC 2131 4.4.5) is refused where the
        # proven path does not cover it; the client rebinds by broadcast at T2.
        f"meta nfproto ipv4 udp sport 68 ip daddr {LIMITED_BROADCAST} udp dport 67 accept",
        # The direct probe and agent solicitation (RFC 5944 2.2): the helper's own
        # sockets only (marked), not any process that picks the same ports.
        # ... never from the home address (in clear on a network not proven trusted:
        # only the home link's deregistration leaves from it, see proven_rules).
        # Registration Requests only: RFC 3519 tunnel data and keepalives (type 4)
        # leave from the same sockets to the same port, and only the mode's proven
        # path may carry them (c: the care-of address on the link; mc: IPsec).
        f"{m} ip saddr != {policy.home_address} ip daddr {policy.home_agent} "
        f"udp dport {MIP_PORT} {REQUEST_PAYLOAD} accept",
        f"{m} ip daddr {{ {ALL_ROUTERS}, {LIMITED_BROADCAST} }} icmp type "
        "router-solicitation accept",
    ]
    if policy.gateways:
        gws = ", ".join(str(g) for g in policy.gateways)
        # charon's packets only (its mark), never from the home address (MOBIKE
        # could pick it while mode h or f left it on the link).
        c = f"meta mark {CHARON_MARK:#x} ip saddr != {policy.home_address} ip daddr {{ {gws} }}"
        rules += [f"{c} udp dport {{ 500, 4500 }} accept",
                  f"{c} ip protocol esp accept",
                  # The VPN probe: the helper's echo to the gateway (RTT, liveness).
                  f"{m} ip daddr {{ {gws} }} icmp type echo-request accept"]
    return rules


def proven_rules(policy: GatePolicy, path: ProvenPath | None,
                 home_probe: str | None = None, lan: IPv4Network | None = None) -> list[str]:
    """The rules that open exactly the proven path (local and forwarded traffic alike:
    the chain runs after source NAT, so a masqueraded guest shows the link address);
    ``home_probe``: the link probed as the home link, where the helper's
    deregistration leaves from the home address (RFC 5944 3.6.1.1)."""
    probe = [f"oifname {_q(home_probe)} meta mark {HELPER_MARK:#x} ip saddr "
             f"{policy.home_address} ip daddr {policy.home_agent} udp dport {MIP_PORT} accept"
             ] if home_probe else []
    if path is None:
        return probe
    i = _q(path.iface)
    if path.mode is Mode.VPN:
        # Mode mc: the Mobile IP tunnel inside the VPN and nothing else.  Into the
        # tunnel device; its outer packets (TIA -> home agent) into charon's TUN, or,
        # with kernel ESP, out of the link only where an IPsec policy encrypts them.
        # Nothing from the link's own address: IKE/ESP to the gateways pass above.
        tia = path.tunnel_inner_address
        return [*probe, *lan_rules(path, lan), f"oifname {_q(policy.tunnel)} accept",
                f"oifname {_q(policy.vpn_device)} ip saddr {tia} ip daddr {policy.home_agent} "
                "accept",
                f"oifname {i} ip saddr {tia} ip daddr {policy.home_agent} rt ipsec exists "
                "accept"]
    if path.mode is Mode.COLOCATED:
        # The care-of address carries only the tunnel's outer packets (and, below,
        # registrations to the link's FA); everything else goes into the tunnel.
        rules = [f"oifname {i} ip saddr {path.link_address} ip daddr {policy.home_agent} "
                 "accept", f"oifname {_q(policy.tunnel)} accept", *lan_rules(path, lan)]
    else:
        rules = [f"oifname {i} ip saddr {{ {path.link_address}, {policy.home_address} }} "
                 "accept"]
    if path.foreign_agent is not None:
        rules.append(f"oifname {i} ip daddr {path.foreign_agent} udp dport {MIP_PORT} accept")
    # No IPv6 on a managed link, even a proven one: nothing in it is keyed to the
    # decision (link-local addresses and old prefixes survive a move), so its first
    # packets on a new network would leave before the helper shuts the gate.
    return [*probe, *rules]


def arp_rules(policy: GatePolicy, path: ProvenPath | None,
              home_probe: str | None = None) -> list[str]:
    """RFC 5944 4.6: no ARP naming the home address (the kernel's replies included)
    except on the proven home link in mode h, and to the foreign agent of the
    proven link."""
    home = f"arp saddr ip {policy.home_address}"
    at_home = path.iface if path is not None and path.mode is Mode.HOME else home_probe
    if at_home is not None:
        return [f"oifname != {_q(at_home)} {home} counter name {COUNTER} drop"]
    rules = []
    if path is not None and path.foreign_agent is not None:
        # The RFC's exception: the foreign agent we register with (or through) may
        # learn the home address's link-layer address from us.
        rules.append(f"oifname {_q(path.iface)} {home} arp daddr ip {path.foreign_agent} "
                     "accept")
    return [*rules, f"{home} counter name {COUNTER} drop"]




def undecided_in_rules(policy: GatePolicy) -> list[str]:
    """What may come in whatever the decision: the replies the undecided state needs.
    Never anything to the home address (that is the proven path's, or nobody's)."""
    rules = [
        f"ip daddr {policy.home_address} return",
        "meta nfproto ipv4 udp sport 67 udp dport 68 accept",  # DHCP, server to client
        # Registration replies (type 3), to the helper's own sockets only (nft's socket
        # lookup).  Not RFC 3519 tunnel data (type 4) from the same port: that comes in
        # only by a proven mode-c path, whose rule names the care-of address.
        f"ip saddr {policy.home_agent} udp sport {MIP_PORT} {REPLY_PAYLOAD} "
        f"socket mark {HELPER_MARK:#x} accept",
        "icmp type router-advertisement accept",  # agent advertisements (RFC 5944 2.1)
    ]
    if policy.gateways:
        gws = ", ".join(str(g) for g in policy.gateways)
        rules += [f"ip saddr {{ {gws} }} udp sport {{ 500, 4500 }} socket mark "
                  f"{CHARON_MARK:#x} accept",
                  f"ip saddr {{ {gws} }} ip protocol esp accept",
                  f"ip saddr {{ {gws} }} icmp type echo-reply accept"]  # the VPN probe
    # ICMP errors about flows that were let out (e.g. fragmentation needed for IKE).
    return [*rules, "meta l4proto icmp ct state related accept"]


def proven_in_rules(policy: GatePolicy, path: ProvenPath | None,
                    home_probe: str | None = None, forward: bool = False,
                    lan: IPv4Network | None = None) -> list[str]:
    """What the proven path lets in: the home address only by the mode's own way, the
    tunnel's outer packets only from the home agent.  ``forward``: what it lets the
    machine forward (to its guests): the same but the replies to the helper's
    sockets (the kernel has no socket lookup there)."""
    probe = [f"iifname {_q(home_probe)} ip saddr {policy.home_agent} ip daddr "
             f"{policy.home_address} udp sport {MIP_PORT} {REPLY_PAYLOAD} "
             f"socket mark {HELPER_MARK:#x} accept"] if home_probe and not forward else []
    if path is None:
        return probe
    i = _q(path.iface)
    ha = policy.home_agent
    if path.mode is Mode.VPN:
        # Mode mc: what the tunnel device delivers, and its outer packets only from
        # the home agent to the TIA through IPsec: out of charon's TUN, or decrypted
        # by kernel ESP (a secpath).  Nothing in clear on the link.
        tia = path.tunnel_inner_address
        return [*probe, *lan_in_rules(path, lan, forward),
                f"iifname {_q(policy.tunnel)} accept",
                f"iifname {_q(policy.vpn_device)} ip saddr {ha} ip daddr {tia} accept",
                f"iifname {i} meta ipsec exists ip saddr {ha} ip daddr {tia} accept"]
    if path.mode is Mode.COLOCATED:
        # The tunnel device, and on the link only the home agent to the care-of
        # address (IP-in-IP, RFC 3519 UDP, registration replies).
        rules = [f"iifname {_q(policy.tunnel)} accept",
                 f"iifname {i} ip saddr {ha} ip daddr {path.link_address} accept",
                 *lan_in_rules(path, lan, forward)]
    else:
        # h and f: the proven link is the path (IPv4: nothing IPv6 is decided on).
        rules = [f"iifname {i} meta nfproto ipv4 accept"]
    if path.foreign_agent is not None and not forward:
        # The FA relays its reply to the home address on the link (RFC 5944 3.7.3).
        rules.append(f"iifname {i} ip saddr {path.foreign_agent} udp sport {MIP_PORT} "
                     f"socket mark {HELPER_MARK:#x} accept")
    return [*probe, *rules]


def local_rules(managed: frozenset[str] = frozenset(), way: str = "oifname",
                verdict: str = "accept") -> list[str]:
    """Loopback and the container/VM bridges pass, unless one of them is an interface
    the helper manages (a bridge named like Docker's carrying the uplink): that one
    is judged like any access link.  ``way``: ``iifname`` for what comes in."""
    rules = []
    for n in LOCAL_INTERFACES:
        rule = f"{way} {_q(n)}"
        if managed and n != "lo":
            rule += f" {way} != {{ " + ", ".join(_q(m) for m in sorted(managed)) + " }"
        rules.append(f"{rule} {verdict}")
    return rules


_TO_GUESTS = f"counter name {COUNTER_IN} drop"


def _local_chains(managed: frozenset[str]) -> dict[str, list[str]]:
    """The chains that name the local interfaces: what leaves to them and what comes
    from them passes; what the machine would forward to them (its guests) from
    anywhere else is judged here, by where it came from (the gate at postrouting
    lets everything to a local interface pass)."""
    return {"local": local_rules(managed), "local_in": local_rules(managed, "iifname"),
            "to_guests": local_rules(managed, verdict=_TO_GUESTS)}


def render_local(managed: frozenset[str]) -> str:
    """The local chains again, in one transaction, when the helper manages a new link."""
    script = []
    for chain, rules in _local_chains(managed).items():
        script.append(f"flush chain inet {TABLE} {chain}")
        script += [f"add rule inet {TABLE} {chain} {r}" for r in rules]
    return "\n".join(script) + "\n"


def _chain(name: str, rules: list[str]) -> str:
    body = "".join(f"    {r}\n" for r in rules)
    return f"  chain {name} {{\n{body}  }}\n"


def render(policy: GatePolicy, path: ProvenPath | None, home_probe: str | None = None,
           managed: frozenset[str] = frozenset(), lan: IPv4Network | None = None) -> str:
    """Both tables for one decision (None: undecided), replacing older ones, in one
    transaction; ``lan``: the local network opened with the path (see
    :func:`lan_subnet`)."""
    return (
        removal()
        + f"table inet {TABLE} {{\n"
        f"  counter {COUNTER} {{ }}\n"
        f"  counter {COUNTER_IN} {{ }}\n"
        + "".join(_chain(c, rules) for c, rules in _local_chains(managed).items())
        + _chain("undecided", undecided_rules(policy))
        + _chain("proven", proven_rules(policy, path, home_probe, lan))
        # The captive-portal chains (app.net.portal_gate fills them): empty until the
        # helper probes for a portal or opens a sign-in.
        + _chain("portal", []) + _chain("portal_in", [])
        + _chain("portal_out", ["type filter hook output priority 0; policy accept;"])
        # After source NAT (srcnat is 100): what leaves, with the address it leaves from.
        + _chain("gate", [f"type filter hook postrouting priority {PRIORITY}; policy accept;",
                          "jump local", "jump undecided", "jump proven", "jump portal",
                          f"counter name {COUNTER} drop"])
        + _chain("dns_refuse", dns_refusal_rules(path))
        # reject is not allowed at postrouting: DNS is refused where it is sent.
        + _chain("refuse", [f"type filter hook output priority {PRIORITY}; policy accept;",
                            "jump local", "jump dns_refuse"])
        + _chain("undecided_in", undecided_in_rules(policy))
        + _chain("proven_in", proven_in_rules(policy, path, home_probe, lan=lan))
        # What comes in for the machine itself, and what it would forward (to guests).
        + _chain("input", ["type filter hook input priority 0; policy accept;",
                           "jump local_in", "jump proven_in", "jump undecided_in",
                           "jump portal_in", f"counter name {COUNTER_IN} drop"])
        + _chain("proven_fwd", proven_in_rules(policy, path, home_probe, forward=True,
                                               lan=lan))
        # Forwarded to the guests: from a local interface or by the proven path only.
        + _chain("forward", ["type filter hook forward priority 0; policy accept;",
                             "jump local_in", "jump proven_fwd", "jump to_guests"])
        + "}\n"
        + f"table arp {TABLE} {{\n"
        f"  counter {COUNTER} {{ }}\n"
        + _chain("output", ["type filter hook output priority 0; policy accept;",
                            *arp_rules(policy, path, home_probe)])
        + "}\n"
    )


def render_decision(policy: GatePolicy, path: ProvenPath | None,
                    home_probe: str | None = None, lan: IPv4Network | None = None) -> str:
    """Only the decision's chains, refilled in one transaction (the counters keep
    counting).  Fails if the tables are gone (or predate a chain): then
    :func:`render` installs them again."""
    script = [f"flush chain inet {TABLE} {c}"
              for c in ("proven", "proven_in", "proven_fwd", "dns_refuse")]
    script.append(f"flush chain arp {TABLE} output")
    script += [f"add rule inet {TABLE} proven {r}"
               for r in proven_rules(policy, path, home_probe, lan)]
    script += [f"add rule inet {TABLE} proven_in {r}"
               for r in proven_in_rules(policy, path, home_probe, lan=lan)]
    script += [f"add rule inet {TABLE} proven_fwd {r}"
               for r in proven_in_rules(policy, path, home_probe, forward=True, lan=lan)]
    script += [f"add rule inet {TABLE} dns_refuse {r}" for r in dns_refusal_rules(path)]
    script += [f"add rule arp {TABLE} output {r}"
               for r in arp_rules(policy, path, home_probe)]
    return "\n".join(script) + "\n"


def removal() -> str:
    """Delete both tables whether or not they exist (one transaction)."""
    return (f"table inet {TABLE}\ndelete table inet {TABLE}\n"
            f"table arp {TABLE}\ndelete table arp {TABLE}\n")
