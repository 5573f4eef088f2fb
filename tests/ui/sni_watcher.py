# ruff: noqa: F821, F722
# No `from __future__ import annotations`: dbus-fast reads D-Bus signatures from
# the string annotations below.
"""What a desktop shell runs on the session bus, reduced to what a tray needs.

``org.kde.StatusNotifierWatcher`` (items register here, as with Plasma or GNOME's
AppIndicator extension) and ``org.freedesktop.Notifications`` (records every
Notify so tests can count notifications).  Runs as its own process
(``python3 -m tests.ui.sni_watcher``), prints ``ready``.  Test-only methods:
``org.trustroam.TestShell.Notifications() -> a(ss)``.
"""

import asyncio
import sys

from dbus_fast.constants import BusType, MessageType, PropertyAccess
from dbus_fast.message import Message
from dbus_fast.service import ServiceInterface, dbus_property, method, signal

from app.dbus import MessageBus  # EAGAIN waits (app/dbus.py): a burst must not drop the bus


class Watcher(ServiceInterface):
    def __init__(self):
        super().__init__("org.kde.StatusNotifierWatcher")
        self.items = []
        self.sender = ""

    @method()
    def RegisterStatusNotifierItem(self, service: "s"):
        # Qt passes its unique name, or a path: the item is <sender><path>.
        item = service if service.startswith(":") or "." in service.split("/")[0] else (
            self.sender + service)
        if item not in self.items:
            self.items.append(item)
        self.StatusNotifierItemRegistered(item)

    @method()
    def RegisterStatusNotifierHost(self, service: "s"):
        pass

    @dbus_property(access=PropertyAccess.READ)
    def RegisteredStatusNotifierItems(self) -> "as":
        return self.items

    @dbus_property(access=PropertyAccess.READ)
    def IsStatusNotifierHostRegistered(self) -> "b":
        return True

    @dbus_property(access=PropertyAccess.READ)
    def ProtocolVersion(self) -> "i":
        return 0

    @signal()
    def StatusNotifierItemRegistered(self, item) -> "s":
        return item

    @signal()
    def StatusNotifierItemUnregistered(self, item) -> "s":
        return item

    def owner_gone(self, name: str) -> None:
        """As a desktop's watcher does: an item whose bus name left is unregistered
        (else a shell sees the items of trays that have exited)."""
        for item in [i for i in self.items if i.split("/", 1)[0] == name]:
            self.items.remove(item)
            self.StatusNotifierItemUnregistered(item)


class Notifications(ServiceInterface):
    def __init__(self):
        super().__init__("org.freedesktop.Notifications")
        self.seen = []
        self.next_id = 1

    @method()
    def Notify(self, app: "s", replaces: "u", icon: "s", summary: "s", body: "s",
               actions: "as", hints: "a{sv}", timeout: "i") -> "u":
        self.seen.append([summary, body])
        self.next_id += 1
        return self.next_id

    @method()
    def GetCapabilities(self) -> "as":
        return ["body"]

    @method()
    def CloseNotification(self, nid: "u"):
        pass

    @method()
    def GetServerInformation(self) -> "ssss":
        return ["test-shell", "trustroam", "1", "1.2"]


class TestShell(ServiceInterface):
    def __init__(self, notes, watcher):
        super().__init__("org.trustroam.TestShell")
        self.notes = notes
        self.watcher = watcher

    @method()
    def Notifications(self) -> "a(ss)":
        return self.notes.seen

    @method()
    def Items(self) -> "as":
        return self.watcher.items


def watch_owners(bus, watcher):
    """NameOwnerChanged to the watcher: a name with no new owner is gone."""

    def on(msg):
        if (msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                and msg.sender == "org.freedesktop.DBus" and len(msg.body) == 3
                and not msg.body[2]):
            watcher.owner_gone(msg.body[0])
        return False

    bus.add_message_handler(on)


def record_senders(bus, target):
    """Sets ``target.sender`` to each method call's sender just before the method runs
    (a message handler sees the message first; an exported method is not told)."""

    def on(msg):
        if msg.message_type is MessageType.METHOD_CALL:
            target.sender = msg.sender
        return False

    bus.add_message_handler(on)


async def main():
    bus = await MessageBus(bus_type=BusType.SESSION).connect()
    watcher = Watcher()
    notes = Notifications()
    record_senders(bus, watcher)
    watch_owners(bus, watcher)
    await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                           interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                           body=["type='signal',sender='org.freedesktop.DBus',"
                                 "member='NameOwnerChanged'"]))
    bus.export("/StatusNotifierWatcher", watcher)
    bus.export("/org/freedesktop/Notifications", notes)
    bus.export("/TestShell", TestShell(notes, watcher))
    await bus.request_name("org.freedesktop.Notifications")
    await bus.request_name("org.kde.StatusNotifierWatcher")
    print("ready", flush=True)
    await bus.wait_for_disconnect()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
