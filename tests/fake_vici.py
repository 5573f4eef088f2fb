"""A small VICI server on a unix socket, speaking charon's wire format (the ``vici``
package's own Packet/Message codec), for the adapter's tests without charon.

It records every command with its message, answers ``success = yes`` (or what
``replies`` says), confirms event registrations and can push events to every
registered session.  ``silent = True`` accepts connections and never answers: a
hung charon.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path
from typing import Any

from vici.protocol import FiniteStream, Message, Packet


class FakeVici:
    def __init__(self, path: Path, *, silent: bool = False) -> None:
        self.path = path
        self.silent = silent
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.replies: dict[str, dict[str, Any]] = {}
        self.raw_replies: dict[str, bytes] = {}
        """Commands answered with these bytes as the packet (garbage, say)."""
        self.hold: dict[str, threading.Event] = {}
        """Commands whose answer waits until the event is set (a slow gateway)."""
        self.streams: dict[str, list[dict[str, Any]]] = {}
        self.registered: list[tuple[socket.socket, str]] = []
        self.registered_total: dict[str, int] = {}
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(str(path))
        self.srv.listen(8)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def names(self) -> list[str]:
        with self.lock:
            return [c for c, _ in self.commands]

    def push(self, event: str, message: dict[str, Any]) -> None:
        """Send an event to every session registered for it."""
        payload = (struct.pack("!BB", Packet.EVENT, len(event)) + event.encode()
                   + Message.serialize(message))
        with self.lock:
            targets = [s for s, e in self.registered if e == event]
        for s in targets:
            with contextlib.suppress(OSError):
                s.sendall(struct.pack("!I", len(payload)) + payload)

    def push_raw(self, event: str, packet: bytes) -> None:
        """Send ``packet`` as is (length-prefixed) to every session registered for
        ``event``: a malformed event, or none at all."""
        with self.lock:
            targets = [s for s, e in self.registered if e == event]
        for s in targets:
            with contextlib.suppress(OSError):
                s.sendall(struct.pack("!I", len(packet)) + packet)

    def push_bytes(self, event: str, data: bytes) -> None:
        """Send ``data`` as is, no length added, to every session registered for
        ``event``: a wrong length prefix, half a packet."""
        with self.lock:
            targets = [s for s, e in self.registered if e == event]
        for s in targets:
            with contextlib.suppress(OSError):
                s.sendall(data)

    def registrations(self, event: str) -> int:
        """How many times a session registered for ``event`` (reconnects count)."""
        with self.lock:
            return self.registered_total.get(event, 0)

    def close(self) -> None:
        """Stop as a killed charon does: every connection drops, the socket file stays."""
        with contextlib.suppress(OSError):
            self.srv.shutdown(socket.SHUT_RDWR)
        self.srv.close()
        with self.lock:
            conns, self.conns = self.conns, []
            self.registered = []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        try:
            while True:
                head = _recv(c, 4)
                (length,) = struct.unpack("!I", head)
                data = _recv(c, length)
                if self.silent:
                    continue
                self._handle(c, data)
        except OSError:
            return

    def _handle(self, c: socket.socket, data: bytes) -> None:
        kind, n = data[0], data[1]
        name = data[2:2 + n].decode()
        if kind in (Packet.EVENT_REGISTER, Packet.EVENT_UNREGISTER):
            with self.lock:
                if kind == Packet.EVENT_REGISTER:
                    self.registered.append((c, name))
                    self.registered_total[name] = self.registered_total.get(name, 0) + 1
                else:
                    with contextlib.suppress(ValueError):
                        self.registered.remove((c, name))
            _send(c, struct.pack("!B", Packet.EVENT_CONFIRM))
            return
        message = dict(Message.deserialize(FiniteStream(data[2 + n:])))
        with self.lock:
            self.commands.append((name, message))
        stream_event = {"list-sas": "list-sa", "initiate": "control-log",
                        "terminate": "control-log"}.get(name)
        for item in self.streams.get(name, []):
            payload = (struct.pack("!BB", Packet.EVENT, len(stream_event or ""))
                       + (stream_event or "").encode() + Message.serialize(item))
            _send(c, payload)
        if name in self.hold:
            self.hold[name].wait(10)
        if name in self.raw_replies:
            _send(c, self.raw_replies[name])
            return
        reply = self.replies.get(name, {"success": "yes"})
        _send(c, struct.pack("!B", Packet.CMD_RESPONSE) + Message.serialize(reply))


def _recv(c: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _send(c: socket.socket, payload: bytes) -> None:
    c.sendall(struct.pack("!I", len(payload)) + payload)
