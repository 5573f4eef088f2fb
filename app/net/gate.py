"""The traffic gate: an nftables table of the helper's own that drops normal traffic.

While the helper probes a new link, and in its error state, nothing but what
the decision needs may leave: Mobile IP registration (UDP 434), DHCP, agent
solicitation (ICMP 10), IKE and NAT-T for the VPN side, and loopback.  The
table is ``inet trustroam_gate``; removing it is all it takes to put the host
back, and no other program's rules are touched.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

log = logging.getLogger("trustroam.net.gate")
TABLE = "trustroam_gate"

_BLOCK = f"""
table inet {TABLE} {{
  chain output {{
    type filter hook output priority 0; policy accept;
    oifname "lo" accept
    udp dport {{ 67, 68, 434 }} accept
    udp sport {{ 68, 434 }} accept
    udp dport {{ 500, 4500 }} accept
    icmp type {{ router-solicitation }} accept
    counter name blocked drop
  }}
  counter blocked {{ }}
}}
"""


class GateError(Exception):
    pass


class TrafficGate:
    """Block or open; every change replaces the whole table in one nft transaction."""

    def __init__(self, nft: str | None = None) -> None:
        found = nft or shutil.which("nft")
        if found is None:
            raise GateError("nft (nftables) is not installed; the traffic gate needs it "
                            "(or set gate = false in the profile's [features])")
        self.nft = found
        self.blocked: bool | None = None

    async def set(self, block: bool) -> None:
        if block == self.blocked:
            return
        # Delete-then-add in one batch: atomic, and works whether or not it exists.
        script = f"table inet {TABLE}\ndelete table inet {TABLE}\n"
        script += _BLOCK if block else ""
        await self._run(script)
        self.blocked = block
        log.info("gate %s", "closed: only registration, DHCP and IKE leave" if block
                 else "open")

    async def remove(self) -> None:
        await self._run(f"table inet {TABLE}\ndelete table inet {TABLE}\n")
        self.blocked = None

    async def blocked_packets(self) -> int:
        """Packets the gate has dropped since it last closed (0 when open)."""
        proc = await asyncio.create_subprocess_exec(
            self.nft, "list", "counter", "inet", TABLE, "blocked",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        for word, value in zip(out.split(), out.split()[1:], strict=False):
            if word == b"packets":
                return int(value)
        return 0

    async def _run(self, script: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            self.nft, "-f", "-", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate(script.encode())
        if proc.returncode != 0:
            raise GateError(f"nft refused the gate table: {err.decode().strip()}")
