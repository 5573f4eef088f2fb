"""RFC 3024 4.2.1 over a real socket: the FA's server learns each request's IP TTL."""

from __future__ import annotations

import asyncio
import socket
from ipaddress import IPv4Address

from app.agents.fa_config import ForeignAgentConfig
from app.agents.fa_core import ForeignAgent
from app.agents.fa_server import ForeignAgentServer
from app.mip.messages import RegFlags, RegistrationReply
from tests.mipclient import KEY_A, Mn
from tests.requirements import require_root
from tests.support.identities import ALICE, HA

LOOP = IPv4Address("127.0.0.1")


def test_rfc3024_4_2_1_ttl_of_a_real_request_decides_76():
    require_root("the foreign agent's raw ICMP socket needs root")

    async def main() -> list[int]:
        fa = ForeignAgentServer(ForeignAgent(ForeignAgentConfig(LOOP, "lo", port=0,
                                                                advert_interval=600)), None)
        fa.start()
        assert fa._udp is not None
        port = fa._udp.getsockname()[1]
        loop = asyncio.get_running_loop()
        codes: list[int] = []
        mn = Mn(ALICE, HA, KEY_A)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            for ttl in (3, 64):
                s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
                s.sendto(mn.request(str(LOOP), lifetime=100, flags=RegFlags.T),
                         ("127.0.0.1", port))
                data = await asyncio.wait_for(loop.sock_recv(s, 4096), 5)
                codes.append(RegistrationReply.decode(data).code)
                fa.core._denied_at.clear()  # the one-a-second limit is not under test here
        fa.close()
        return codes

    assert asyncio.run(main()) == [76, 76]
