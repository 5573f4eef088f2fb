"""Resume from suspend, as logind announces it: ``PrepareForSleep(false)``.

After a resume the binding may be stale (the lifetime ran out while asleep, or
the laptop woke up elsewhere), so the helper re-probes at once.

Any local uid may send a signal on the system bus, and a unicast signal reaches
the helper whatever its match rules say; a re-probe shuts the gate and sends a
registration request, so a forged one is an attack (security review
2026-12-07, finding 2).  Only logind's current unique name is believed: it is
learnt with GetNameOwner and kept with NameOwnerChanged, itself believed only
from the bus daemon.  And re-probes from resumes are rate-limited: even logind
cannot make more than one per ``min_interval`` (one more comes at the end of
the interval, so a real resume is never lost).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from app.dbus import (
    BUS_DAEMON,
    BUS_TIMEOUT,
    LOGIND,
    Message,
    MessageBus,
    MessageType,
    PeerError,
    call,
)

log = logging.getLogger("trustroam.net.sleep")
LOGIN1_PATH = "/org/freedesktop/login1"
LOGIN1_MANAGER = "org.freedesktop.login1.Manager"
MATCH = (f"type='signal',sender='{LOGIND}',interface='{LOGIN1_MANAGER}',"
         f"member='PrepareForSleep',path='{LOGIN1_PATH}'")
OWNER_MATCH = (f"type='signal',sender='{BUS_DAEMON}',interface='{BUS_DAEMON}',"
               f"member='NameOwnerChanged',path='/org/freedesktop/DBus',arg0='{LOGIND}'")
MIN_INTERVAL = 10.0
"""Seconds between two re-probes caused by resumes."""


class ResumeWatcher:
    def __init__(self, bus: MessageBus, on_resume: Callable[[], None], *,
                 min_interval: float = MIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.on_resume = on_resume
        self.min_interval = min_interval
        self.clock = clock
        self.owner: str | None = None
        """logind's unique name, as the bus daemon last said (None: no logind)."""
        self._last: float | None = None
        self._deferred: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        # The handler first: a change of owner between the two calls is not missed
        # (the bus daemon's reply and signals come in order, the later one wins).
        self.bus.add_message_handler(self._on_message)
        for rule in (OWNER_MATCH, MATCH):
            await call(self.bus, Message(destination=BUS_DAEMON, path="/org/freedesktop/DBus",
                                         interface=BUS_DAEMON, member="AddMatch",
                                         signature="s", body=[rule]),
                       BUS_TIMEOUT, "the bus daemon")
        try:
            reply = await call(self.bus, Message(
                destination=BUS_DAEMON, path="/org/freedesktop/DBus", interface=BUS_DAEMON,
                member="GetNameOwner", signature="s", body=[LOGIND]),
                BUS_TIMEOUT, "the bus daemon")
        except PeerError as exc:
            if exc.error_name != "org.freedesktop.DBus.Error.NameHasNoOwner":
                raise
            self.owner = None  # no logind (yet): no resume is believed until it comes
        else:
            self.owner = str(reply.body[0])

    def close(self) -> None:
        self.bus.remove_message_handler(self._on_message)
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL:
            return
        if (msg.member == "NameOwnerChanged" and msg.sender == BUS_DAEMON
                and msg.interface == BUS_DAEMON and msg.path == "/org/freedesktop/DBus"
                and msg.signature == "sss" and msg.body[0] == LOGIND):
            self.owner = str(msg.body[2]) or None
        elif (msg.interface == LOGIN1_MANAGER and msg.member == "PrepareForSleep"
                and msg.path == LOGIN1_PATH and msg.signature == "b"
                and msg.body == [False]):
            if self.owner is None or msg.sender != self.owner:
                log.debug("PrepareForSleep from %s ignored: logind is %s",
                          msg.sender, self.owner)
                return
            self._resumed()

    def _resumed(self) -> None:
        now = self.clock()
        if self._last is None or now - self._last >= self.min_interval:
            self._last = now
            self.on_resume()
        elif self._deferred is None:  # one more at the end of the interval
            delay = self._last + self.min_interval - now
            self._deferred = asyncio.get_running_loop().call_later(delay, self._late)

    def _late(self) -> None:
        self._deferred = None
        self._last = self.clock()
        self.on_resume()
