"""The traffic gate: an nftables table of the helper's own that drops normal traffic.

While the helper probes a new link, and in its error state, nothing but what
the decision needs may leave: Mobile IP registration (UDP 434), DHCP, agent
solicitation (ICMP 10), IKE and NAT-T for the VPN side, and loopback.  The
table is ``inet trustroam_gate``; removing it is all it takes to put the host
back, and no other program's rules are touched.

Changes go through libnftables in-process (ctypes, well under a millisecond:
the gate opens on the handover's critical path); where the library is missing,
through the ``nft`` program (~15 ms per change on a small VM).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
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


class _LibNftables:
    """The few libnftables calls the gate needs."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_error(self.ctx)
        lib.nft_ctx_buffer_output(self.ctx)

    def run(self, script: str) -> str | None:
        """None on success, else nft's error text."""
        if self.lib.nft_run_cmd_from_buffer(self.ctx, script.encode()) == 0:
            return None
        err = self.lib.nft_ctx_get_error_buffer(self.ctx)
        return err.decode(errors="replace").strip() if err else "unknown error"


def _libnftables() -> _LibNftables | None:
    path = ctypes.util.find_library("nftables")
    for candidate in (path, "libnftables.so.1"):
        if candidate:
            try:
                return _LibNftables(candidate)
            except (OSError, AttributeError):
                continue
    return None


class TrafficGate:
    """Block or open; every change replaces the whole table in one nft transaction."""

    def __init__(self, nft: str | None = None, *, use_library: bool = True) -> None:
        self.lib = _libnftables() if use_library else None
        found = nft or shutil.which("nft")
        if found is None and self.lib is None:
            raise GateError("nftables is not installed; the traffic gate needs it "
                            "(or set gate = false in the profile's [features])")
        self.nft = found or "nft"
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

    async def _run(self, script: str) -> None:
        if self.lib is not None:
            err = self.lib.run(script)
            if err is not None:
                raise GateError(f"nftables refused the gate table: {err}")
            return
        proc = await asyncio.create_subprocess_exec(
            self.nft, "-f", "-", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        _, stderr = await proc.communicate(script.encode())
        if proc.returncode != 0:
            raise GateError(f"nft refused the gate table: {stderr.decode().strip()}")
