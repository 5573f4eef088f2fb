"""A burst of D-Bus method calls written in one go on a raw socket, as the security
review's proof of concept does (standard library only, no D-Bus library: the
attacker is not bound to any client's manners).  Run in a child as an
unprivileged uid; it counts the answers to every call so that a test can wait for
an event (all answered) instead of a time."""

from __future__ import annotations

import multiprocessing
import os
import socket
import struct
from collections import Counter

from app.api import BUS_NAME, INTERFACE, OBJECT_PATH

NO_REPLY_EXPECTED = 1


def _pad(b: bytes, n: int) -> bytes:
    return b + b"\0" * (-len(b) % n)


def _s(x: str) -> bytes:
    e = x.encode()
    return struct.pack("<I", len(e)) + e + b"\0"


def _field(code: int, sig: str, val: str) -> bytes:
    body = _s(val) if sig in "so" else bytes([len(val)]) + val.encode() + b"\0"
    return bytes([code, 1]) + sig.encode() + b"\0" + body


def _call(serial: int, dest: str, path: str, iface: str, member: str, sig: str = "",
          body: bytes = b"", flags: int = 0) -> bytes:
    parts = [_field(1, "o", path), _field(2, "s", iface), _field(3, "s", member),
             _field(6, "s", dest)]
    if sig:
        parts.append(_field(8, "g", sig))
    fields = b"".join(_pad(p, 8) for p in parts[:-1]) + parts[-1]
    head = struct.pack("<cBBBII", b"l", 1, flags, 1, len(body), serial) + \
        struct.pack("<I", len(fields)) + fields
    return _pad(head, 8) + body


def string_body(text: str) -> bytes:
    return _s(text)


def uint_body(n: int) -> bytes:
    return struct.pack("<I", n)


def _read_answers(sk: socket.socket, want: int) -> Counter[str]:
    """Count answers (by error name, or "ok") until ``want`` have come; signals
    and anything else are skipped."""
    got: Counter[str] = Counter()
    buf = b""
    while True:
        while len(buf) >= 16 and sum(got.values()) < want:
            body_len, _serial, fields_len = struct.unpack_from("<III", buf, 4)
            total = 16 + fields_len + (-fields_len % 8) + body_len
            if len(buf) < total:
                break
            msg, buf = buf[:total], buf[total:]
            if msg[1] == 2:
                got["ok"] += 1
            elif msg[1] == 3:
                got[_error_name(msg[16:16 + fields_len])] += 1
        if sum(got.values()) >= want:
            return got
        data = sk.recv(1 << 16)
        if not data:
            got["connection closed"] += want - sum(got.values())
            return got
        buf += data


def _error_name(fields: bytes) -> str:
    i = 0
    while i < len(fields):
        i += -i % 8
        if i >= len(fields):
            break
        code, siglen = fields[i], fields[i + 1]
        sig = fields[i + 2:i + 2 + siglen].decode()
        j = i + 3 + siglen
        if sig in ("s", "o"):
            (n,) = struct.unpack_from("<I", fields, j + (-j % 4))
            j += -j % 4
            val = fields[j + 4:j + 4 + n].decode()
            i = j + 4 + n + 1
        elif sig == "g":
            n = fields[j]
            val = fields[j + 1:j + 1 + n].decode()
            i = j + 1 + n + 1
        else:  # u (reply serial, unix fds)
            j += -j % 4
            val, i = "", j + 4
        if code == 4:
            return val
    return "error"


def burst(address: str, member: str, count: int, *, interface: str = INTERFACE,
          sig: str = "", body: bytes = b"", flags: int = 0) -> Counter[str]:
    """Connect as whoever runs this, send ``count`` calls in one write, then count
    the answers."""
    path = address.split("path=")[1].split(",")[0]
    sk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sk.connect(path)
    sk.sendall(b"\0AUTH EXTERNAL " + str(os.getuid()).encode().hex().encode() + b"\r\n")
    assert sk.recv(4096).startswith(b"OK")
    sk.sendall(b"BEGIN\r\n")
    sk.sendall(_call(1, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                     "org.freedesktop.DBus", "Hello"))
    _read_answers(sk, 1)
    blob = b"".join(_call(i + 2, BUS_NAME, OBJECT_PATH, interface, member, sig, body, flags)
                    for i in range(count))
    # Then a Ping, answered after the burst: with NO_REPLY_EXPECTED (flags 1) it is
    # the only answer, and says the burst has been read.
    blob += _call(count + 2, BUS_NAME, OBJECT_PATH, "org.freedesktop.DBus.Peer", "Ping")
    sk.sendall(blob)
    try:
        got = _read_answers(sk, (0 if flags & NO_REPLY_EXPECTED else count) + 1)
    finally:
        sk.close()
    got["ok"] -= 1  # the Ping
    return +got  # without zero counts


def burst_as(uid: int, address: str, member: str, count: int, **kw: object) -> Counter[str]:
    """:func:`burst` in a forked child running as ``uid``."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()

    def body() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        try:
            child.send(("ok", burst(address, member, count, **kw)))  # type: ignore[arg-type]
        except BaseException as exc:
            child.send(("error", repr(exc)))

    p = ctx.Process(target=body)
    p.start()
    if not parent.poll(120):
        p.kill()
        raise TimeoutError(f"the burst of {count} {member} got no answers in 120 s")
    status, value = parent.recv()
    p.join(5)
    if status != "ok":
        raise RuntimeError(f"burst failed: {value}")
    return value  # type: ignore[no-any-return]
