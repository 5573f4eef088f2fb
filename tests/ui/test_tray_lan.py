"""The tray's "Allow local network" item (issue 19), against the D-Bus helper double:
off unless the user turns it on; offered in modes c and mc only; it shows what the
helper answers."""

from __future__ import annotations

from typing import Any

from tests.ui.conftest import run


def test_allow_local_network_is_off_until_turned_on_and_only_in_c_and_mc(
        double: Any, tray: Any, qloop: Any, qtbot: Any) -> None:
    a = tray.lan_action
    run(qloop, double.set(state="untrusted", mode="mc", tunnel_inner_address="10.99.0.5"))
    qtbot.waitUntil(a.isEnabled)
    assert a.isCheckable() and not a.isChecked()
    a.trigger()  # the user's click: checks it and asks the helper for this network
    qtbot.waitUntil(lambda: "SetAllowLan True" in run(qloop, double.calls()))
    qtbot.waitUntil(lambda: a.toolTip() == "192.168.1.0/24 on eth0")
    assert a.isChecked()
    a.trigger()
    qtbot.waitUntil(lambda: "SetAllowLan False" in run(qloop, double.calls()))
    qtbot.waitUntil(lambda: a.toolTip() == "not allowed on this network")
    assert not a.isChecked()
    run(qloop, double.set(state="untrusted", mode="none"))
    qtbot.waitUntil(lambda: not a.isEnabled())
    assert not a.isChecked()
