"""Another local user on the tray's system bus: a forked child that drops to an
unprivileged uid (tests.dbus_client.NOBODY) and sends what any uid may send there:
signals with any path, interface and member, to anyone, and method calls.

``as_uid`` runs in a worker thread, so the test's event loop (the tray's, in this
process) keeps serving while the child talks to it.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable, Coroutine
from typing import Any

from dbus_fast import Message, MessageType, Variant

from app.api import BUS_NAME, INTERFACE, OBJECT_PATH
from app.dbus import MessageBus  # EAGAIN waits (app/dbus.py): a burst must not drop the bus

DBUS = "org.freedesktop.DBus"
PROPS = "org.freedesktop.DBus.Properties"


def _run_as(uid: int | None, address: str,
            fn: Callable[[MessageBus], Coroutine[Any, Any, Any]]) -> Any:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()

    def body() -> None:
        try:
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)

            async def go() -> Any:
                bus = await MessageBus(bus_address=address).connect()
                try:
                    return await fn(bus)
                finally:
                    bus.disconnect()

            child.send(("ok", asyncio.run(go())))
        except BaseException as exc:
            child.send(("error", repr(exc)))

    p = ctx.Process(target=body)
    p.start()
    try:
        if not parent.poll(30):
            p.kill()
            raise TimeoutError("the attacker's child did not answer in 30 s")
        status, value = parent.recv()
    finally:
        p.join(5)
    if status != "ok":
        raise RuntimeError(f"the attacker's child failed: {value}")
    return value


async def as_uid(uid: int | None, address: str,
                 fn: Callable[[MessageBus], Coroutine[Any, Any, Any]]) -> Any:
    """``fn(bus)`` on a fresh connection of a child running as ``uid``; its result."""
    return await asyncio.get_running_loop().run_in_executor(None, _run_as, uid, address, fn)


def signal(dest: str | None, path: str, iface: str, member: str, sig: str,
           body: list[Any]) -> Message:
    return Message(message_type=MessageType.SIGNAL, destination=dest, path=path,
                   interface=iface, member=member, signature=sig, body=body)


def owner_changed(dest: str | None, name: str, old: str, new: str) -> Message:
    """NameOwnerChanged as the bus sends it, but from whoever sends this one."""
    return signal(dest, "/org/freedesktop/DBus", DBUS, "NameOwnerChanged", "sss",
                  [name, old, new])


def helper_event(dest: str | None, kind: str, details: dict[str, str]) -> Message:
    return signal(dest, OBJECT_PATH, INTERFACE, "Event", "sa{ss}", [kind, details])


def helper_changed(dest: str | None, changed: dict[str, Variant]) -> Message:
    return signal(dest, OBJECT_PATH, PROPS, "PropertiesChanged", "sa{sv}as",
                  [INTERFACE, changed, []])


async def flush(bus: MessageBus) -> None:
    """One round trip to the bus: everything sent before it has been routed."""
    reply = await bus.call(Message(destination=DBUS, path="/org/freedesktop/DBus",
                                   interface=DBUS, member="GetId"))
    assert reply is not None and reply.message_type is MessageType.METHOD_RETURN


async def send_all(bus: MessageBus, msgs: list[Message]) -> None:
    for m in msgs:
        await bus.send(m)
    await flush(bus)


async def peers(bus: MessageBus) -> list[str]:
    """Every other connection's unique name (ListNames is open to everyone)."""
    reply = await bus.call(Message(destination=DBUS, path="/org/freedesktop/DBus",
                                   interface=DBUS, member="ListNames"))
    assert reply is not None
    return [n for n in reply.body[0] if n.startswith(":") and n != bus.unique_name]


__all__ = ["BUS_NAME", "as_uid", "flush", "helper_changed", "helper_event", "owner_changed",
           "peers", "send_all", "signal"]
