"""Run in a namespace: set the gate to a decision, then try packets one by one.

    python -m tests.gate_probe '{"decision": null | {...}, "tries": [...]}'

Each try is ``{"src": addr|null, "sport": n|null, "dst": addr, "dport": n,
"proto": "udp"|"icmp"|"esp", "icmp_type": n, "iface": name|null, "helper": bool,
"charon": bool, "uid": n}`` (``helper``, ``charon``: the socket carries the
helper's or charon's mark; ``uid``: sent by a process of that uid, unmarked).  Prints one JSON
list: for each try "sent" or "refused" (a netfilter drop of a local packet is
EPERM for the sender: the kernel's own verdict, not ours).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import struct
import sys
from ipaddress import IPv4Address
from typing import Any

from app.api import Mode
from app.net.gate import TrafficGate
from app.net.gate_rules import CHARON_MARK, HELPER_MARK, GatePolicy, ProvenPath

POLICY = GatePolicy(IPv4Address("10.20.1.1"), IPv4Address("10.20.1.10"), "trmn0",
                    (IPv4Address("172.16.0.10"),))


def _checksum(data: bytes) -> int:
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def try_one(t: dict[str, Any]) -> str:
    uid = t.get("uid")
    if uid is None:
        return _try(t)
    # Another user's process: the verdict comes back as the child's exit status.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            code = {"sent": 0, "refused": 3}.get(_try(t), 4)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "sent", 3: "refused"}.get(os.waitstatus_to_exitcode(status), "error")


def _try(t: dict[str, Any]) -> str:
    if t["proto"] == "esp":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP)
        payload = bytes(16)  # an SPI, a sequence number, something encrypted
    elif t["proto"] == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        payload = b"normal traffic"
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        head = struct.pack("!BBHI", t["icmp_type"], 0, 0, 0)
        payload = struct.pack("!BBHI", t["icmp_type"], 0, _checksum(head), 0)
    if t.get("helper"):  # the helper's own sockets carry its mark
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, HELPER_MARK)
    if t.get("charon"):  # charon's, with socket-default.fwmark (or XFRM's set_mark_out)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, CHARON_MARK)
    if t.get("iface"):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, t["iface"].encode())
    if t.get("src") or t.get("sport"):
        s.bind((t.get("src") or "0.0.0.0", t.get("sport") or 0))
    try:
        s.sendto(payload, (t["dst"], t.get("dport", 0)))
    except PermissionError:
        return "refused"
    except OSError as exc:
        return f"error {errno.errorcode.get(exc.errno or 0, exc.errno)}"
    finally:
        s.close()
    return "sent"


async def main() -> None:
    spec = json.loads(sys.argv[1])
    gate = TrafficGate(POLICY)
    d = spec.get("decision")
    if spec.get("install", True):
        await gate.install()
    else:
        gate.installed = True
    path = None if d is None else ProvenPath(
        d["iface"], IPv4Address(d["address"]), Mode(d["mode"]),
        IPv4Address(d["fa"]) if d.get("fa") else None,
        IPv4Address(d["tia"]) if d.get("tia") else None)
    for iface in spec.get("managed", []):
        await gate.manage(iface)
    gate.path = object()  # type: ignore[assignment]  # force a refill
    await gate.decide(path, spec.get("home_probe"))
    print(json.dumps([try_one(t) for t in spec.get("tries", [])]), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
