"""charon's VICI events, read one packet at a time, a bad one skipped (issue 20, faults).

``vici.Session.listen`` ends the whole stream when one event does not decode (and
a packet too short to parse escapes as ``struct.error``, which killed the
adapter's event thread): one malformed event then read as "charon not
reachable", which shuts mode mc.  VICI packets are length-prefixed, so the
stream is still in step after a bad one: it is logged (one line naming the
socket) and skipped; only the socket failing ends the stream.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Generator, Iterable
from typing import Any

import vici
import vici.exception
from vici.protocol import Message, Packet

log = logging.getLogger("trustroam.vpn")

_UNDECODABLE = (vici.exception.DeserializationException, struct.error, ValueError,
                IndexError)
"""What a packet that is not VICI raises while it is decoded (UnicodeDecodeError is
a ValueError)."""


def register(v: vici.Session, names: Iterable[str]) -> None:
    """Register for ``names`` (as ``vici.Session.listen`` does; events that come in
    between are skipped); a refusal or a reply of another kind ends the session."""
    for name in names:
        v.transport.send(Packet.register_event(name))
        while True:
            kind = _kind(v.transport.receive())
            if kind != Packet.EVENT:
                break
        if kind != Packet.EVENT_CONFIRM:
            raise vici.exception.SessionException(
                f"charon did not confirm the {name} event registration (packet type {kind})")


def _kind(raw: bytes) -> int:
    return raw[0] if raw else -1


def events(v: vici.Session, timeout: float, peer: str
           ) -> Generator[tuple[bytes | None, dict[str, Any] | None], None, None]:
    """(event name, message) as they come; (None, None) after ``timeout`` s of quiet.
    ``peer``: charon's socket, named in the line a bad packet earns."""
    while True:
        try:
            raw = v.transport.receive(timeout)
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
            what = f"{name.decode('utf-8', 'replace')!r} event" if name else "packet"
            log.warning("charon at %s sent a malformed %s (%d bytes: %s); ignored", peer,
                        what, len(raw), exc or type(exc).__name__)
            continue
        yield name, message

