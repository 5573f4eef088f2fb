"""A reply that came through the VPN never counts as direct (RFC 5266 3.4), fake clock.

The real access-mode machine with the driver's two registration clients and the
real home agent core: the home agent's authenticated reply to the direct request
is handed to the machine as arriving on the TIA's socket (through the VPN): the
network stays undecided; the same reply arriving on the link's socket decides
trusted (the control).  And the TIA's registration is taken only from the VPN's.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from app.agents.ha_core import HomeAgent
from app.api import Mode, State
from app.mip.auth import Algorithm
from app.mn.access_mode import AccessModeMachine, LinkUp, Send, VpnReady
from app.mn.registration import RegistrationConfig, ReplayMode
from app.mn.reply_path import Path, PathClient
from tests.mipclient import KEY_A
from tests.support.identities import ALICE, HA, T0, config

NAT = LinkUp("eth0", IPv4Interface("192.168.50.120/24"), IPv4Address("192.168.50.1"))
TIA = IPv4Address("10.99.1.7")


def world() -> tuple[AccessModeMachine, HomeAgent, list[Path | None]]:
    cfg = RegistrationConfig(ALICE, HA, 256, Algorithm.HMAC_MD5, KEY_A, lifetime=60,
                             replay=ReplayMode.TIMESTAMP, initial_timeout=1.0, retries=2)
    arrival: list[Path | None] = [None]
    direct = PathClient(cfg, Path.LINK, lambda: arrival[0])
    tunnel = PathClient(cfg, Path.VPN, lambda: arrival[0], replay=direct.replay)
    m = AccessModeMachine(IPv4Network("10.20.1.0/24"), direct, use_foreign_agents=False,
                          vpn_client=tunnel)
    return m, HomeAgent(config()), arrival


def answer(ha: HomeAgent, actions: list[object], through_vpn: bool, now: float) -> bytes:
    send = next(a for a in actions if isinstance(a, Send) and a.through_vpn is through_vpn)
    source = TIA if through_vpn else send.datagram.source
    out = ha.handle_request(send.datagram.data, (source, 434), now)
    assert out.reply is not None
    return out.reply


def test_rfc5266_3_4_a_reply_to_the_direct_request_through_the_vpn_is_not_direct() -> None:
    m, ha, arrival = world()
    reply = answer(ha, m.handle(NAT, T0), through_vpn=False, now=T0 + 0.01)
    arrival[0] = Path.VPN  # came in on the TIA's socket: charon decrypted it
    m.receive(reply, T0 + 0.02)
    assert m.phase is not State.TRUSTED and m.mode is Mode.NONE
    arrival[0] = Path.LINK  # the same reply on the link: the control
    m.receive(reply, T0 + 0.03)
    assert m.phase is State.TRUSTED and m.mode is Mode.COLOCATED


def test_the_tias_registration_is_taken_only_from_the_vpn() -> None:
    m, ha, arrival = world()
    m.handle(NAT, T0)
    reply = answer(ha, m.handle(VpnReady(TIA, "gw1"), T0 + 0.3), through_vpn=True,
                   now=T0 + 0.31)
    arrival[0] = Path.LINK  # in clear on the link: not the VPN's answer
    m.receive(reply, T0 + 0.32)
    assert m.mode is not Mode.VPN
    arrival[0] = Path.VPN
    m.receive(reply, T0 + 0.33)
    assert m.mode is Mode.VPN and m.phase is State.UNTRUSTED
