"""The clients' side of the system bus (``trustroamctl`` and the tray), on dbus-fast.

The clients take the D-Bus library's names from here (the library itself is
:mod:`app.dbus`, shared with the helper: its bus survives a full socket buffer).
It also holds the two rules every client follows:

- Anyone on the bus may send any signal, to anyone (the system policy allows it),
  with any path, interface and member.  Only the sender name cannot be forged: the
  bus writes it.  So a ``NameOwnerChanged`` counts only from the bus itself
  (``owner_change``), and a service's signals only from that service's unique name
  as the bus last said (``GetNameOwner``, then the bus's own ``NameOwnerChanged``).
- Text that came over the bus is shown through ``shown``: no control characters
  (a terminal escape or a newline becomes visible ``\\x1b``, ``\\n``), bounded length.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Any

from app.dbus import (
    BusType,
    DBusError,
    ErrorType,
    Message,
    MessageBus,
    MessageFlag,
    MessageType,
    Variant,
)

__all__ = ["BUS_DRIVER", "NAME_GONE", "BusType", "DBusError", "ErrorType", "Message", "MessageBus",
           "MessageFlag", "MessageType", "Variant", "add_match", "finite", "get_name_owner",
           "owner_change", "owner_rule", "shown", "unix_user", "unwrap"]

BUS_DRIVER = "org.freedesktop.DBus"
BUS_PATH = "/org/freedesktop/DBus"
NAME_GONE = ("org.freedesktop.DBus.Error.ServiceUnknown",
             "org.freedesktop.DBus.Error.NameHasNoOwner")


def unwrap(v: Any) -> Any:
    """A D-Bus value with its variants taken off, at every depth."""
    if isinstance(v, Variant):
        return unwrap(v.value)
    if isinstance(v, list):
        return [unwrap(x) for x in v]
    if isinstance(v, dict):
        return {k: unwrap(x) for k, x in v.items()}
    return v


# -- following a name's owner -----------------------------------------------------------

def owner_rule(name: str) -> str:
    """The match rule for the bus's own NameOwnerChanged about ``name``."""
    return (f"type='signal',sender='{BUS_DRIVER}',path='{BUS_PATH}',interface='{BUS_DRIVER}',"
            f"member='NameOwnerChanged',arg0='{name}'")


def owner_change(msg: Message, name: str) -> str | None:
    """``name``'s new unique owner ("" when it has none now) when ``msg`` is the bus's
    NameOwnerChanged about it; None for anything else, the same signal sent by any
    other connection included (a match rule does not stop a unicast signal)."""
    if (msg.message_type is MessageType.SIGNAL and msg.sender == BUS_DRIVER
            and msg.path == BUS_PATH and msg.interface == BUS_DRIVER
            and msg.member == "NameOwnerChanged" and msg.signature == "sss"
            and msg.body[0] == name):
        return str(msg.body[2])
    return None


async def _driver(bus: MessageBus, member: str, arg: str) -> Message | None:
    return await bus.call(Message(destination=BUS_DRIVER, path=BUS_PATH, interface=BUS_DRIVER,
                                  member=member, signature="s", body=[arg]))


async def add_match(bus: MessageBus, rule: str) -> None:
    reply = await _driver(bus, "AddMatch", rule)
    if reply is None or reply.message_type is MessageType.ERROR:
        text = reply.body[0] if reply is not None and reply.body else "no reply"
        raise DBusError(reply.error_name if reply is not None and reply.error_name
                        else ErrorType.FAILED, f"the bus refused a match rule: {text}")


async def get_name_owner(bus: MessageBus, name: str) -> str | None:
    """``name``'s unique owner now, None when it has none."""
    reply = await _driver(bus, "GetNameOwner", name)
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        return None
    return str(reply.body[0])


async def unix_user(bus: MessageBus, unique: str) -> int | None:
    """The uid the bus knows the connection ``unique`` by (None: gone or unknown)."""
    reply = await _driver(bus, "GetConnectionUnixUser", unique)
    if reply is None or reply.message_type is not MessageType.METHOD_RETURN:
        return None
    return int(reply.body[0])


# -- showing what came over the bus ----------------------------------------------------------

def _visible(c: str) -> bool:
    cat = unicodedata.category(c)
    return cat[0] in "LMNPS" or cat == "Zs"  # not Cc, Cf, Zl, Zp, unassigned...


_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(c: str) -> str:
    if c in _SHORT:
        return _SHORT[c]
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def shown(value: object, limit: int = 200) -> str:
    """``value`` as text that is safe on a terminal or a label: every control, format
    or separator character (ESC, CR, LF, bidi overrides...) written as an escape,
    and at most ``limit`` characters with a count of what was cut."""
    text = value if isinstance(value, str) else str(value)
    out = "".join(c if _visible(c) else _escaped(c) for c in text[:limit])
    if len(text) > limit:
        out += f"…(+{len(text) - limit} chars)"
    return out


def finite(value: object) -> float | None:
    """A number from untrusted text (a time, a round-trip time): None unless it is
    one and finite."""
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None
