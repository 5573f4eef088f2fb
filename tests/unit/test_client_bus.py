"""The clients' two rules for what comes over the bus (app/client_bus.py): a
NameOwnerChanged counts only from the bus itself, and bus text is shown escaped
and bounded, on a terminal (trustroamctl) as in the tray."""

from __future__ import annotations

from app.client_bus import Message, MessageType, finite, owner_change, shown
from app.ctl import _event_line


def _noc(sender: str, name: str = "org.trustroam.Helper1", new: str = ":1.9") -> Message:
    return Message(message_type=MessageType.SIGNAL, sender=sender, path="/org/freedesktop/DBus",
                   interface="org.freedesktop.DBus", member="NameOwnerChanged",
                   signature="sss", body=[name, ":1.2", new])


def test_name_owner_changed_counts_only_from_the_bus_itself():
    assert owner_change(_noc("org.freedesktop.DBus"), "org.trustroam.Helper1") == ":1.9"
    assert owner_change(_noc("org.freedesktop.DBus", new=""), "org.trustroam.Helper1") == ""
    assert owner_change(_noc(":1.66"), "org.trustroam.Helper1") is None  # forged
    assert owner_change(_noc("org.freedesktop.DBus", name="x.y"), "org.trustroam.Helper1") \
        is None


def test_bus_text_is_shown_with_controls_escaped_and_bounded():
    assert shown("a\x1b[2J\nb\tc\x07\u202ed") == "a\\x1b[2J\\nb\\tc\\x07\\u202ed"
    assert shown("Café 日本 ok") == "Café 日本 ok"
    assert shown("x" * 500, 10) == "x" * 10 + "…(+490 chars)"


def test_a_number_from_the_bus_is_finite_or_none():
    assert finite("1.5") == 1.5
    assert [finite(v) for v in ("nan", "inf", "1e400", "x", None)] == [None] * 5


def test_event_line_escapes_everything_and_shows_a_time_that_is_no_time():
    line = _event_line(None, "up\x1b[2J", {"time": "not-a-number", "note": "\x1b]0;t\x07"})
    assert line.startswith("--:--:--.--- up\\x1b[2J")
    assert "time=not-a-number" in line and "note=\\x1b]0;t\\x07" in line
    assert "\x1b" not in line
    assert "time=" not in _event_line(1000.0, "up", {"time": "1000.0"})
    assert _event_line(1e300, "up", {}).startswith("--:--:--.---")  # localtime cannot
