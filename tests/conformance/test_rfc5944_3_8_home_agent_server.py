"""RFC 5944 3.8.3.1 through the real asyncio server on loopback."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from app.agents.binding_store import BindingStore
from app.agents.dataplane import ControlPlaneOnly
from app.agents.ha_config import HomeAgentConfig, MobileNodeConfig
from app.agents.ha_core import HomeAgent
from app.agents.ha_server import HomeAgentServer
from app.mip.auth import Algorithm
from tests.mipclient import KEY_A, Mn

HA = IPv4Address("127.0.0.1")
HOME = IPv4Address("127.0.0.10")


def test_rfc5944_3_8_3_1_home_link_reply_sent_through_the_server(tmp_path: Path):
    cfg = HomeAgentConfig(HA, IPv4Network("127.0.0.0/8"),
                          (MobileNodeConfig(HOME, 256, Algorithm.HMAC_MD5, KEY_A),),
                          state_dir=tmp_path)

    async def main() -> tuple[int, int | None]:
        server = HomeAgentServer(HomeAgent(cfg), BindingStore(tmp_path), ControlPlaneOnly())
        host, port = server.start("127.0.0.1", 0)
        mn = Mn(HOME, HA, KEY_A)
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((str(HOME), 0))  # the node at home sends from its home address
            s.setblocking(False)
            s.sendto(mn.request(str(HOME), lifetime=0), (host, port))
            data = await asyncio.wait_for(loop.sock_recv(s, 4096), 5)
        index = server._home_ifindex
        server.close()
        return mn.check_reply(data).code, index

    code, index = asyncio.run(main())
    # The reply left through the home link's interface (sendmsg with IP_PKTINFO).
    assert code == 1 and index == socket.if_nametoindex("lo")
