"""The lab's names, as on a desktop (issue 19): resolvers and the MN's systemd-resolved.

- The intranet's resolver (a dnsmasq in ``tr-ir`` on the backbone) serves
  ``corp.example`` and answers public names too, as a corporate resolver does.
- Each visited network's DHCP announces its own resolver (a dnsmasq on the DHCP
  server's port of that link), which knows public names only and answers them
  with *another* address than the intranet's: a lookup's answer tells which
  resolver gave it.  The home link's DHCP announces the intranet's resolver.
- The MN runs the real systemd-resolved on its private system bus, in a mount
  namespace of its own (a tmpfs /run, the lab's resolved.conf), and its
  ``/etc/resolv.conf`` (``/etc/netns/tr-mn``) points at resolved's stub, as
  Debian's desktop does; NetworkManager hands resolved each link's DHCP
  resolvers (``dns=systemd-resolved``).

Pure text and data, except :func:`resolved_command`'s paths.
"""

from __future__ import annotations

from pathlib import Path

from app.lab.topology import AccessNet, Topology

INTRANET_NODE = "tr-ir"
INTRANET_RESOLVER = "10.0.0.1"
"""tr-ir's backbone address: reached from the home link and through the home agent."""
CORP_DOMAIN = "corp.example"
CORP_NAMES = {"cn.corp.example": "10.20.1.99", "ha.corp.example": "10.20.1.1"}
PROBE_ZONE = "probe.corp.example"
"""Every name under it answers (the correspondent's address): a benchmark asks a new
name each time, so no lookup waits on another's transaction in resolved."""
PUBLIC_NAME = "www.example.net"
PUBLIC_BY_INTRANET = "198.51.100.80"
"""What the intranet's resolver answers for PUBLIC_NAME."""
PUBLIC_BY_VISITED = "192.0.2.80"
"""What every visited network's resolver answers for PUBLIC_NAME."""
VISITED_DOMAINS = ("hotel.example", "wiki.corp.example")
"""The search domains every visited network's DHCP announces: its own, and a longer
suffix of the intranet's (resolved makes both routing domains of that link)."""
VISITED_NAMES = {"www.hotel.example": "192.0.2.81", "docs.wiki.corp.example": "192.0.2.82"}
"""What every visited network's resolver answers under those domains; the intranet's
says NXDOMAIN to both (its own zone, and a hotel's names it does not know)."""
RESOLVED = Path("/lib/systemd/systemd-resolved")
STUB_RESOLV_CONF = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
"""What systemd-resolved's stub-resolv.conf says (Debian's /etc/resolv.conf with it)."""
# Debian's defaults, but no fallback servers (names would leave to public resolvers
# when no link has one) and no LLMNR/mDNS probes on the links (the captures judge
# every packet; a desktop's probes are multicast on the link, not DNS to a server).
RESOLVED_CONF = "[Resolve]\nFallbackDNS=\nLLMNR=no\nMulticastDNS=no\nDNSSEC=no\n"


PORTAL_PROBE_NAME = "portal-check.visited.example"
PORTAL_PROBE_ADDRESS = "198.51.100.77"
"""A probe URL's host that every visited network's resolver answers (the lab's portal
answers HTTP to any address): the captive-portal probe given by name."""


def available() -> bool:
    return RESOLVED.exists()


def resolver_of(topo: Topology, net: AccessNet) -> str:
    """The resolver ``net``'s DHCP announces: its own, or the intranet's at home."""
    if net.home:
        return INTRANET_RESOLVER
    return str(topo.port(net.dhcp_server, net.link).address.ip)


def dhcp_domain_options(net: AccessNet) -> str:
    """dnsmasq DHCP options: a visited network's search domains (none at home)."""
    if net.home:
        return ""
    return (f"dhcp-option=option:domain-name,{VISITED_DOMAINS[0]}\n"
            f"dhcp-option=option:domain-search,{','.join(VISITED_DOMAINS)}\n")


def dnsmasq_conf(listen: str, log: Path, *, intranet: bool) -> str:
    """A DNS-only dnsmasq on ``listen``: the intranet's names, or a visited network's."""
    lines = [f"port=53\nlisten-address={listen}\nbind-interfaces\nno-resolv\nno-hosts\n"
             f"user=root\nlog-queries\nlog-facility={log}\n"]
    if intranet:
        lines += [f"host-record={n},{a}\n" for n, a in CORP_NAMES.items()]
        lines.append(f"host-record={PUBLIC_NAME},{PUBLIC_BY_INTRANET}\n")
        lines.append(f"address=/{PROBE_ZONE}/{CORP_NAMES['cn.corp.example']}\n")
        lines.append(f"local=/{CORP_DOMAIN}/\n")
        lines.append(f"local=/{VISITED_DOMAINS[0]}/\n")
    else:
        lines.append(f"host-record={PUBLIC_NAME},{PUBLIC_BY_VISITED}\n")
        lines += [f"host-record={n},{a}\n" for n, a in VISITED_NAMES.items()]
        lines += [f"local=/{d}/\n" for d in VISITED_DOMAINS]
        lines.append(f"host-record={PORTAL_PROBE_NAME},{PORTAL_PROBE_ADDRESS}\n")
        lines.append(f"local=/{PORTAL_PROBE_NAME.split('.', 1)[1]}/\n")
    # Authoritative for the public name's zone: its AAAA is "no data", not REFUSED
    # (which makes resolved try the next server, slowly).
    lines.append(f"local=/{PUBLIC_NAME.split('.', 1)[1]}/\n")
    return "".join(lines)


def resolved_command(conf: Path) -> list[str]:
    """systemd-resolved in a private mount namespace: its own /run (resolved makes
    /run/systemd/resolve there) and the lab's resolved.conf."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c",
            "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd && "
            f"mount --bind {conf} /etc/systemd/resolved.conf && exec {RESOLVED}"]
