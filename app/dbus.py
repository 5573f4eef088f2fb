"""The D-Bus library, in one place, and outgoing calls bounded in time.

Every module of the helper and of the clients takes the library's names from
here (``Message``, ``MessageBus``, ``Variant``...): a later swap of the library
changes this file.  The library is dbus-fast (the maintained fork of dbus-next,
same API).

:class:`MessageBus` survives a flood.  dbus-fast 5.2.0, like dbus-next 0.2.3
(altdesktop/python-dbus-next#153), treats EAGAIN on its socket as fatal: its
writer calls ``sock.send`` and hands any exception, ``BlockingIOError``
included, to ``_finalize``, which drops the connection.  A burst of calls whose
replies the bus daemon cannot take at once then ended the helper.  Here a full
socket buffer means "wait until it is writable", as it should.

Outgoing calls are each bounded in time and name their peer: the helper waits
on other programs (polkitd, logind, the users' secret agents); none of them may
hold a request forever, and when one does not answer the message says which.
"""

from __future__ import annotations

import array
import asyncio
import logging
import socket
from typing import Any

from dbus_fast import (
    BusType,
    DBusError,
    ErrorType,
    MessageFlag,
    MessageType,
    PropertyAccess,
    RequestNameReply,
    Variant,
)
from dbus_fast.aio import message_bus as _aio
from dbus_fast.message import Message
from dbus_fast.service import ServiceInterface, dbus_property, method, signal

__all__ = [
    "BUS_DAEMON", "BUS_TIMEOUT", "LOGIND", "NAME_GONE", "BusType", "DBusError", "ErrorType",
    "Message", "MessageBus", "MessageFlag", "MessageType", "PeerError", "PropertyAccess",
    "RequestNameReply", "ServiceInterface", "Variant", "call", "dbus_property", "method",
    "signal",
]


log = logging.getLogger("trustroam.dbus")


class _PatientWriter(_aio._MessageWriter):
    """dbus-fast's writer, except that a full socket buffer (EAGAIN) or an
    interrupted send waits for the socket to be writable instead of ending the
    connection.  The rest is the library's loop, unchanged."""

    def write_callback(self, remove_writer: bool = True) -> None:
        sock, fd = self.sock, self.fd
        assert sock is not None and fd is not None  # made by connect(), with both
        try:
            while True:
                if self.buf is None:
                    if not self.messages:
                        if remove_writer:
                            self.loop.remove_writer(fd)
                        return
                    buf, unix_fds, fut = self.messages.popleft()
                    self.unix_fds = unix_fds
                    self.buf = memoryview(buf)
                    self.offset = 0
                    self.fut = fut
                if self.unix_fds and self.negotiate_unix_fd:
                    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                array.array("i", self.unix_fds))]
                    self.offset += sock.sendmsg([self.buf[self.offset:]], ancdata)
                    self.unix_fds = None
                else:
                    self.offset += sock.send(self.buf[self.offset:])
                if self.offset < len(self.buf):
                    self._wait_writable()
                    return
                self.buf = None
                if self.fut is not None:
                    _aio._future_set_result(self.fut, None)
        except (BlockingIOError, InterruptedError):
            self._wait_writable()  # the bus daemon reads it later: not an error
        except Exception as exc:
            if self.fut is not None:
                if self.bus._user_disconnect:
                    _aio._future_set_result(self.fut, None)
                else:
                    _aio._future_set_exception(self.fut, exc)
            self.bus._finalize(exc)

    def _wait_writable(self) -> None:
        if self.fd is not None:
            self.loop.add_writer(self.fd, self.write_callback)


class MessageBus(_aio.MessageBus):
    """dbus-fast's asyncio bus with :class:`_PatientWriter` (see the module's text)."""

    async def connect(self) -> MessageBus:
        await super().connect()
        return self

    async def _authenticate(self) -> None:
        # connect() makes the writer just before authenticating, and nothing is
        # written through it before: the class is swapped for ours here.
        writer = self._writer
        if writer is not None and type(writer) is _aio._MessageWriter:
            writer.__class__ = _PatientWriter
        elif type(writer) is not _PatientWriter:  # a dbus-fast that builds it otherwise
            log.warning("dbus-fast's writer is %s: a full socket may drop the bus "
                        "connection (app/dbus.py cannot replace it)", type(writer).__name__)
        await super()._authenticate()


BUS_DAEMON = "org.freedesktop.DBus"
BUS_TIMEOUT = 5.0
"""Seconds for the bus daemon itself (it answers at once unless overloaded)."""
LOGIND = "org.freedesktop.login1"
NAME_GONE = frozenset({
    "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.NoReply", "org.freedesktop.DBus.Error.Disconnected",
    "org.freedesktop.DBus.Error.UnknownObject", "org.freedesktop.DBus.Error.UnknownMethod",
})


class PeerError(Exception):
    """A peer did not answer in time, or answered with an error; names the peer."""

    def __init__(self, message: str, error_name: str = "") -> None:
        super().__init__(message)
        self.error_name = error_name


async def call(bus: MessageBus, msg: Message, timeout: float | None, peer: str) -> Message:
    """``bus.call(msg)`` bounded by ``timeout`` (None: the caller bounds it, e.g. with
    ``asyncio.timeout``); an error reply raises PeerError."""
    try:
        async with asyncio.timeout(timeout):
            reply = await bus.call(msg)
    except TimeoutError:
        raise PeerError(f"{peer} did not answer within {timeout:g} s") from None
    finally:
        # dbus-next keeps a reply handler per serial until a reply comes; one that
        # never comes must not stay in its table (a slow leak per unanswered call).
        handlers: dict[int, Any] = getattr(bus, "_method_return_handlers", {})
        handlers.pop(msg.serial, None)
    if reply is None:
        raise PeerError(f"{peer} sent no reply")
    if reply.message_type is MessageType.ERROR:
        raise PeerError(f"{peer} answered {reply.error_name}", reply.error_name or "")
    return reply
