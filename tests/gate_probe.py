"""Run in a namespace: set the gate to a decision, then try packets one by one.

    python -m tests.gate_probe '{"decision": null | {...}, "tries": [...]}'

Each try is ``{"src": addr|null, "sport": n|null, "dst": addr, "dport": n,
"proto": "udp"|"icmp"|"esp", "icmp_type": n, "iface": name|null, "helper": bool,
"charon": bool, "mark": n, "uid": n, "answer": bool, "payload": hex}``
(``mark``: UDP with ``answer`` only; ``helper``, ``charon``: the socket carries the
helper's or charon's mark; ``uid``: sent by a process of that uid, unmarked).  Prints one JSON
list: for each try "sent" or "refused" (a netfilter drop of a local packet is
EPERM for the sender: the kernel's own verdict, not ours).  With ``answer``, a
connected socket waits for what comes back: "icmp 3/3" (the ICMP error read from
the socket's error queue), "reset" (TCP), "timeout" (nothing), "answered".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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


ANSWER_WAIT = 10.0
"""Seconds a refused query waits for its ICMP error or reset: a bound for a broken
gate (a drop never answers), not a measure of speed."""
IP_RECVERR = 11


def _answer(t: dict[str, Any]) -> str:
    """A DNS-like query on a connected socket, and what comes back to it."""
    if t["proto"] == "tcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(ANSWER_WAIT)
        try:
            s.connect((t["dst"], t["dport"]))
        except ConnectionRefusedError:
            return "reset"
        except (TimeoutError, PermissionError):
            return "timeout"  # a dropped SYN: connect waits (EPERM only on a local drop)
        finally:
            s.close()
        return "answered"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    if t.get("mark"):  # another program's mark (the portal probe's, the sign-in's)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, int(t["mark"]))
    s.settimeout(ANSWER_WAIT)
    try:
        s.connect((t["dst"], t["dport"]))
        with contextlib.suppress(PermissionError):  # the local drop that follows
            s.send(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")
        try:
            s.recv(512)
        except ConnectionRefusedError:
            _, anc, _, _ = s.recvmsg(512, 512, socket.MSG_ERRQUEUE)
            for level, kind, data in anc:
                if level == socket.IPPROTO_IP and kind == IP_RECVERR:
                    # struct sock_extended_err: errno u32, origin, type, code u8
                    _, origin, icmp_type, code = struct.unpack_from("=IBBB", data)
                    if origin == 2:  # SO_EE_ORIGIN_ICMP
                        return f"icmp {icmp_type}/{code}"
            return "refused"
        except TimeoutError:
            return "timeout"
        return "answered"
    finally:
        s.close()


def _try(t: dict[str, Any]) -> str:
    if t.get("answer"):
        return _answer(t)
    if t["proto"] == "esp":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ESP)
        payload = bytes(16)  # an SPI, a sequence number, something encrypted
    elif t["proto"] == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        # ``payload``: hex, e.g. "01" (a Mobile IP Registration Request's type byte)
        # or "04" (RFC 3519 tunnel data): the gate judges UDP 434 by its first byte.
        payload = bytes.fromhex(t["payload"]) if t.get("payload") else b"normal traffic"
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
    gate = TrafficGate(dataclasses.replace(POLICY, allow_lan=True) if spec.get("allow_lan")
                       else POLICY)
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
