"""Resume from suspend, as logind announces it: ``PrepareForSleep(false)``.

After a resume the binding may be stale (the lifetime ran out while asleep, or
the laptop woke up elsewhere), so the helper re-probes at once.  A forged
signal can only cause a re-probe, so the match need not pin logind's name.
"""

from __future__ import annotations

from collections.abc import Callable

from dbus_next.aio.message_bus import MessageBus
from dbus_next.constants import MessageType
from dbus_next.message import Message

LOGIN1_PATH = "/org/freedesktop/login1"
LOGIN1_MANAGER = "org.freedesktop.login1.Manager"
MATCH = (f"type='signal',interface='{LOGIN1_MANAGER}',member='PrepareForSleep',"
         f"path='{LOGIN1_PATH}'")


class ResumeWatcher:
    def __init__(self, bus: MessageBus, on_resume: Callable[[], None]) -> None:
        self.bus = bus
        self.on_resume = on_resume

    async def start(self) -> None:
        await self.bus.call(Message(destination="org.freedesktop.DBus",
                                    path="/org/freedesktop/DBus",
                                    interface="org.freedesktop.DBus", member="AddMatch",
                                    signature="s", body=[MATCH]))
        self.bus.add_message_handler(self._on_message)

    def close(self) -> None:
        self.bus.remove_message_handler(self._on_message)

    def _on_message(self, msg: Message) -> None:
        if (msg.message_type is MessageType.SIGNAL and msg.interface == LOGIN1_MANAGER
                and msg.member == "PrepareForSleep" and msg.signature == "b"
                and msg.body == [False]):
            self.on_resume()
