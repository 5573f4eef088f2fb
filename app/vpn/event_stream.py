"""charon's VICI events, read one packet at a time, a bad one skipped (issue 20, faults).

``vici.Session.listen`` ends the whole stream when one event does not decode (and
a packet too short to parse escapes as ``struct.error``, which killed the
adapter's event thread): one malformed event then read as "charon not
reachable", which shuts mode mc.  A well-framed bad packet is logged (one line
naming the socket) and skipped.  The framing is read here, not by vici (whose
``Transport`` blocks for good on a length larger than what follows and never
enforces its own 512 KiB limit): a length over that limit, a body that does not
come whole within ``body_timeout`` s, or bad packets in a row (a wrong length
put the stream out of step) raise ``FramingError``: the caller reconnects.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Generator, Iterable
from typing import Any

import vici
import vici.exception
from vici.protocol import Message, Packet, Transport

log = logging.getLogger("trustroam.vpn")

_UNDECODABLE = (vici.exception.DeserializationException, struct.error, ValueError,
                IndexError)
"""What a packet that is not VICI raises while it is decoded (UnicodeDecodeError is
a ValueError)."""

MAX_PACKET = Transport.MAX_SEGMENT
"""vici's (and charon's) own limit for one packet: 512 KiB."""
BODY_TIMEOUT = 5.0
"""charon writes a packet whole: a body not in after this is not coming."""
BAD_IN_A_ROW = 3
"""Malformed packets in a row that say the stream is out of step (a wrong length)."""


class FramingError(vici.exception.SessionException):  # type: ignore[misc]  # untyped
    """The event stream is out of step: the connection must be dropped."""


def receive(sock: socket.socket, timeout: float | None,
            body_timeout: float = BODY_TIMEOUT) -> bytes:
    """One VICI packet.  ``TimeoutError`` if nothing at all came in ``timeout`` s;
    ``FramingError`` for a length over ``MAX_PACKET`` or a packet not whole within
    ``body_timeout`` s of its first byte; ``ConnectionError`` if the socket closed."""
    sock.settimeout(timeout)
    first = sock.recv(Transport.HEADER_LENGTH)
    if not first:
        raise ConnectionError("charon closed the event connection")
    deadline = time.monotonic() + body_timeout
    head = first + _read(sock, Transport.HEADER_LENGTH - len(first), deadline, "length")
    (length,) = struct.unpack("!I", head)
    if length > MAX_PACKET:
        raise FramingError(f"a packet length of {length} bytes (limit {MAX_PACKET})")
    return _read(sock, length, deadline, f"{length}-byte packet")


def _read(sock: socket.socket, count: int, deadline: float, what: str) -> bytes:
    parts: list[bytes] = []
    got = 0
    while got < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise FramingError(f"a {what} cut short ({got} of {count} bytes)")
        sock.settimeout(left)
        try:
            buf = sock.recv(count - got)
        except TimeoutError:
            raise FramingError(f"a {what} cut short ({got} of {count} bytes)") from None
        if not buf:
            raise ConnectionError("charon closed the event connection")
        parts.append(buf)
        got += len(buf)
    return b"".join(parts)


def register(v: vici.Session, names: Iterable[str], timeout: float | None = None) -> None:
    """Register for ``names`` (as ``vici.Session.listen`` does; events that come in
    between are skipped); a refusal or a reply of another kind ends the session."""
    sock = v.transport.socket
    for name in names:
        v.transport.send(Packet.register_event(name))
        while True:
            kind = _kind(receive(sock, timeout))
            if kind != Packet.EVENT:
                break
            log.debug("a charon event before the registration of %s was confirmed; "
                      "skipped", name)
        if kind != Packet.EVENT_CONFIRM:
            raise vici.exception.SessionException(
                f"charon did not confirm the {name} event registration (packet type {kind})")


def _kind(raw: bytes) -> int:
    return raw[0] if raw else -1


def events(v: vici.Session, timeout: float, peer: str, body_timeout: float = BODY_TIMEOUT
           ) -> Generator[tuple[bytes | None, dict[str, Any] | None], None, None]:
    """(event name, message) as they come; (None, None) after ``timeout`` s of quiet.
    ``peer``: charon's socket, named in the line a bad packet earns."""
    bad = 0
    while True:
        try:
            raw = receive(v.transport.socket, timeout, body_timeout)
        except TimeoutError:  # socket.timeout
            yield None, None
            continue
        name: bytes | None = None
        try:
            packet = Packet.parse(raw)
            if packet.response_type != Packet.EVENT:
                log.warning("charon at %s sent a packet of type %d on the event session; "
                            "ignored", peer, packet.response_type)
                continue
            name = packet.event_type
            message = dict(Message.deserialize(packet.payload))
        except _UNDECODABLE as exc:
            bad += 1
            if bad >= BAD_IN_A_ROW:
                raise FramingError(f"{bad} malformed packets in a row") from None
            what = f"{name.decode('utf-8', 'replace')!r} event" if name else "packet"
            log.warning("charon at %s sent a malformed %s (%d bytes: %s); ignored", peer,
                        what, len(raw), exc or type(exc).__name__)
            continue
        bad = 0
        yield name, message

