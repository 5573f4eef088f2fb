"""allow_lan (issue 19) and the DNS refusal while undecided, as rule text: pure.

Which local network a link may open is decided from the link's own address and
prefix only (never a route), and only for private or link-local space that holds
nothing of the tunnel's; the rules name that subnet, the link and its address,
in modes c and mc.  While undecided, DNS out of a non-local interface is
rejected (ICMP port unreachable, TCP reset) in the output hook.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from app.api import Mode
from app.config import ConfigError
from app.mn import profile as mn_profile
from app.net.gate_rules import (
    GatePolicy,
    ProvenPath,
    dns_refusal_rules,
    lan_subnet,
    proven_in_rules,
    proven_rules,
    render,
    render_decision,
)

A = IPv4Address
POLICY = GatePolicy(A("10.20.1.1"), A("10.20.1.10"), "trmn0", (A("172.16.0.11"),),
                    allow_lan=True, home_network=IPv4Network("10.20.1.0/24"))
LINK = A("192.168.50.100")
LAN = IPv4Network("192.168.50.0/24")
C = ProvenPath("eth0", LINK, Mode.COLOCATED)
MC = ProvenPath("eth0", LINK, Mode.VPN, None, A("10.99.1.1"))


@pytest.mark.parametrize("link,subnet", [
    ("192.168.50.100/24", "192.168.50.0/24"),
    ("10.30.1.100/24", "10.30.1.0/24"),
    ("172.20.5.9/16", "172.20.0.0/16"),
    ("169.254.7.1/16", "169.254.0.0/16"),
    ("10.1.2.3/30", "10.1.2.0/30"),
])
def test_allow_lan_opens_the_links_own_on_link_subnet(link, subnet):
    assert lan_subnet(IPv4Interface(link), POLICY).subnet == IPv4Network(subnet)


@pytest.mark.parametrize("link,why", [
    ("203.0.113.100/24", "not private"),  # a public network (the lab's pub)
    ("100.64.1.2/24", "not private"),  # carrier-grade NAT space is not a LAN
    ("172.15.255.1/24", "not private"),  # just below 172.16.0.0/12
    ("192.168.50.100/15", "not private"),  # wider than 192.168.0.0/16: partly public
    ("10.9.9.9/32", "no local network"),  # point to point: nobody else on the link
    ("10.9.9.9/31", "no local network"),
    ("10.20.7.7/16", "overlaps the home network"),  # home 10.20.1.0/24 inside it
    ("172.16.0.50/24", "the VPN gateway 172.16.0.11"),
])
def test_allow_lan_refuses_a_public_routed_or_tunnelled_subnet(link, why):
    d = lan_subnet(IPv4Interface(link), POLICY)
    assert d.subnet is None and why in d.refusal, d


@pytest.mark.parametrize("link,why", [
    ("10.30.1.100/8", "wider than a /16"),  # a hotel claiming 10.0.0.0/8
    ("172.20.5.9/15", "wider than a /16"),
    ("10.40.1.100/24", "the VPN's intranet 10.40.0.0/16"),
    ("192.168.7.100/24", "the [dns] server 192.168.7.53"),
])
def test_allow_lan_refuses_a_wide_subnet_the_vpns_intranet_and_the_dns_servers(link, why):
    # Review-portal finding 8: intranet traffic would leave in clear.
    policy = GatePolicy(A("10.20.1.1"), A("10.20.1.10"), "trmn0", allow_lan=True,
                        home_network=IPv4Network("10.20.1.0/24"),
                        intranet=(IPv4Network("10.20.1.0/24"), IPv4Network("10.40.0.0/16")),
                        dns_servers=(A("192.168.7.53"),))
    d = lan_subnet(IPv4Interface(link), policy)  # mode mc: an untrusted network
    assert d.subnet is None and why in d.refusal, d
    assert lan_subnet(IPv4Interface("10.30.1.100/24"), policy).subnet is not None
    # A trusted network (mode c) is inside the corporate address plan: the intranet
    # prefixes do not shut it, the rest still does.
    c = lan_subnet(IPv4Interface(link), policy, Mode.COLOCATED)
    assert (c.subnet is None) == ("intranet" not in why), c


async def test_the_gate_policy_carries_the_profiles_intranet_and_dns_servers():
    from app.service.profiles import gate_policy

    prof = mn_profile.loads(
        BASE + '[features]\nallow_lan = true\n[vpn]\ngateways = ["172.16.0.11"]\n'
        'identity = "a@b.c"\nintranet = ["10.40.0.0/16"]\n[dns]\nservers = ["10.20.0.53"]\n')
    policy = await gate_policy(prof)
    assert policy.intranet == (IPv4Network("10.40.0.0/16"),)
    assert policy.dns_servers == (A("10.20.0.53"),)


def test_allow_lan_refuses_a_subnet_holding_the_home_agent_without_a_home_network():
    policy = GatePolicy(A("10.20.1.1"), A("10.20.1.10"), "trmn0", allow_lan=True)
    d = lan_subnet(IPv4Interface("10.20.0.5/16"), policy)
    assert d.subnet is None and "home agent 10.20.1.1" in d.refusal


def test_allow_lan_rules_name_the_link_its_address_and_the_subnet_in_modes_c_and_mc():
    for path in (C, MC):
        out = proven_rules(POLICY, path, lan=LAN)
        assert f'oifname "eth0" ip saddr {LINK} ip daddr {LAN} accept' in out
        inn = proven_in_rules(POLICY, path, lan=LAN)
        # Only answers come in: the machine's services stay closed to the LAN.
        assert (f'iifname "eth0" ip saddr {LAN} ip daddr {LINK} '
                "ct state established,related accept") in inn
        # Forwarded: the answers to the guests' flows (de-NATed: to the guest).
        assert (f'iifname "eth0" ip saddr {LAN} ct state established,related accept'
                in proven_in_rules(POLICY, path, forward=True, lan=LAN))
        assert str(LAN) in render_decision(POLICY, path, lan=LAN)
        assert str(LAN) in render(POLICY, path, lan=LAN)


def test_allow_lan_never_opens_dns_to_the_visited_networks_resolver():
    # Review-portal finding 2: the hotel's resolver is inside the opened subnet; the
    # issue says the visited resolver is never used while a mode is open.
    for path in (C, MC):
        out = proven_rules(POLICY, path, lan=LAN)
        to = f'oifname "eth0" ip saddr {LINK} ip daddr {LAN}'
        drop = (f"{to} meta l4proto {{ tcp, udp }} th dport {{ 53, 853, 5353, 5355 }} "
                "counter name blocked drop")
        assert drop in out and out.index(drop) < out.index(f"{to} accept")


def test_allow_lan_off_or_undecided_opens_no_subnet():
    for path in (C, MC):
        assert not [r for r in proven_rules(POLICY, path) + proven_in_rules(POLICY, path)
                    if str(LAN) in r]
    assert str(LAN) not in render_decision(POLICY, None, lan=LAN)
    for mode in (Mode.HOME, Mode.FOREIGN_AGENT):  # they send all on the link already
        path = ProvenPath("eth0", LINK, mode)
        assert not [r for r in proven_rules(POLICY, path, lan=LAN) if str(LAN) in r]


def test_dns_is_refused_at_once_while_undecided_and_only_then():
    assert dns_refusal_rules(None)[1:] == ["udp dport 53 reject",
                                           "tcp dport 53 reject with tcp reset"]
    assert dns_refusal_rules(C) == []
    undecided = render(POLICY, None)
    # reject is only valid in the output hook: a chain of its own there, after the
    # local interfaces (loopback's stub resolver, container bridges) are let through.
    assert ("type filter hook output priority 110; policy accept;\n"
            "    jump local\n    jump dns_refuse\n") in undecided
    assert "    udp dport 53 reject\n" in undecided
    assert "add rule inet trustroam_gate dns_refuse udp dport 53 reject" in render_decision(
        POLICY, None)
    opened = render_decision(POLICY, C)
    assert "flush chain inet trustroam_gate dns_refuse" in opened
    assert "reject" not in opened


def test_the_portal_probes_and_the_signin_windows_dns_is_not_refused_while_undecided():
    # Review-portal finding 3: the refusal came first, so a probe URL given by name
    # (the default, nmcheck.gnome.org) never resolved and no portal was ever found.
    from app.net.portal_gate import SIGNIN_MARK
    from app.net.portal_probe import PORTAL_MARK

    rules = dns_refusal_rules(None)
    assert rules[0] == f"meta mark {{ {PORTAL_MARK:#x}, {SIGNIN_MARK:#x} }} return"
    assert "udp dport 53 reject" in rules[1:]
    assert f"dns_refuse meta mark {{ {PORTAL_MARK:#x}, {SIGNIN_MARK:#x} }} return" in (
        render_decision(POLICY, None))


BASE = ('name = "x"\nhome_address = "10.20.1.10"\nhome_network = "10.20.1.0/24"\n'
        'home_agent = "10.20.1.1"\nspi = 300\n')


def test_profile_allow_lan_defaults_off_is_validated_and_round_trips():
    assert mn_profile.loads(BASE).allow_lan is False
    on = mn_profile.loads(BASE + "[features]\nallow_lan = true\n")
    assert on.allow_lan is True and mn_profile.loads(mn_profile.dumps(on)) == on
    with pytest.raises(ConfigError, match=r"features\.allow_lan: must be true or false"):
        mn_profile.loads(BASE + '[features]\nallow_lan = "yes"\n')
