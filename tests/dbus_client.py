"""D-Bus calls from tests, as root or as another user (a forked child that drops to
that uid, so the bus daemon and polkit see a real unprivileged caller)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Callable, Coroutine
from typing import Any

from app.api import BUS_NAME, INTERFACE, OBJECT_PATH
from app.service.bus import BusType, Message, MessageBus, MessageType, Variant

NOBODY = 65534


async def call(bus: MessageBus, member: str, signature: str = "", body: list[Any] | None = None,
               interface: str = INTERFACE) -> tuple[bool, Any]:
    """(ok, body or error text)."""
    reply = await bus.call(Message(destination=BUS_NAME, path=OBJECT_PATH, interface=interface,
                                   member=member, signature=signature, body=body or []))
    assert reply is not None
    if reply.message_type is MessageType.ERROR:
        return False, f"{reply.error_name}: {reply.body[0] if reply.body else ''}"
    return True, reply.body


async def properties(bus: MessageBus) -> dict[str, Any]:
    ok, body = await call(bus, "GetAll", "s", [INTERFACE], "org.freedesktop.DBus.Properties")
    assert ok, body
    return {k: (v.value if isinstance(v, Variant) else v) for k, v in body[0].items()}


async def introspect(bus: MessageBus) -> str:
    ok, body = await call(bus, "Introspect", interface="org.freedesktop.DBus.Introspectable")
    assert ok, body
    return str(body[0])


def run_as(uid: int | None, bus_address: str,
           fn: Callable[[MessageBus], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``fn(bus)`` on a fresh system-bus connection in a child that runs as ``uid``."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()

    def body() -> None:
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus_address

        async def go() -> Any:
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            try:
                return await fn(bus)
            finally:
                bus.disconnect()

        try:
            child.send(("ok", asyncio.run(go())))
        except BaseException as exc:
            child.send(("error", repr(exc)))

    p = ctx.Process(target=body)
    p.start()
    if not parent.poll(30):
        p.kill()
        raise TimeoutError("D-Bus client child did not answer in 30 s")
    status, value = parent.recv()
    p.join(5)
    if status != "ok":
        raise RuntimeError(f"D-Bus client failed: {value}")
    return value


class Held:
    """A client child that keeps its bus connection (and what it exported) until
    ``stop()``, so a test can act while it is there."""

    def __init__(self, proc: Any, pipe: Any) -> None:
        self.proc, self.pipe = proc, pipe

    def stop(self) -> Any:
        """Close the child's connection; returns its report (``setup``'s callable)."""
        if not self.pipe.poll(0):  # else the child has already ended, with an error
            self.pipe.send("stop")
        if not self.pipe.poll(30):
            self.proc.kill()
            raise TimeoutError("held D-Bus client did not stop in 30 s")
        status, value = self.pipe.recv()
        self.proc.join(5)
        if status != "ok":
            raise RuntimeError(f"held D-Bus client failed: {value}")
        return value


def hold_as(uid: int | None, bus_address: str,
            setup: Callable[[MessageBus], Coroutine[Any, Any, Callable[[], Any]]]) -> Held:
    """Run ``setup(bus)`` in a child as ``uid``, keep the connection open, and return
    once setup is done; ``Held.stop()`` ends it and returns ``report()``."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()

    def body() -> None:
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = bus_address

        async def go() -> Any:
            bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
            try:
                report = await setup(bus)
                child.send(("ready", None))
                loop = asyncio.get_running_loop()
                stop = loop.create_future()  # the parent's "stop" (no thread: as nobody,
                loop.add_reader(child.fileno(), stop.set_result, None)  # imports may fail)
                await stop
                loop.remove_reader(child.fileno())
                child.recv()
                return report()
            finally:
                bus.disconnect()

        try:
            child.send(("ok", asyncio.run(go())))
        except BaseException as exc:
            child.send(("error", repr(exc)))

    p = ctx.Process(target=body)
    p.start()
    if not parent.poll(30):
        p.kill()
        raise TimeoutError("D-Bus client child did not get ready in 30 s")
    status, value = parent.recv()
    if status != "ready":
        p.join(5)
        raise RuntimeError(f"D-Bus client failed: {value}")
    return Held(p, parent)
