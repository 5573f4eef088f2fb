"""The tray as a desktop shell sees it: a StatusNotifierItem on the session bus.

The helper is the test double (tests/ui/helper_double.py) on a private system
bus, driven through every state; the shell reads ToolTip, IconPixmap, Status
and the dbusmenu layout, and clicks entries with Event(id, "clicked").
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.ui.conftest import run
from tests.ui.shell import Shell

pytestmark = pytest.mark.usefixtures("desktop")




async def _tooltip_has(shell: Shell, *parts: str) -> None:
    async def ok() -> bool:
        tip = await shell.tooltip()
        return all(p in tip for p in parts)

    try:
        await shell.until(ok, what=f"tooltip with {parts}")
    except TimeoutError:
        raise AssertionError(f"tooltip is {await shell.tooltip()!r}, wanted {parts}") from None


def test_item_registers_and_shows_helper_state(double: Any, tray: Any, shell: Shell,
                                               qloop: Any) -> None:
    async def go() -> None:
        await shell.find_item()
        assert await shell.prop("Status") in ("Active", "Passive", "NeedsAttention")
        await _tooltip_has(shell, "Offline")
        pix = await shell.icon_pixmaps()
        assert pix and all(w > 0 and len(d) == w * h * 4 for w, h, d in pix)

    run(qloop, go())


# Every state the helper can publish, with what the tooltip must then say.
STATES = [
    ({"state": "probing"}, ["Checking the network"]),
    ({"state": "trusted", "mode": "h", "profile": "corp", "home_address": "10.20.1.10",
      "home_agent_probe": [True, 1.25, 1700000000.0], "binding_expires": time.time() + 600},
     ["Trusted network, at home (mode h)", "Home address: 10.20.1.10",
      "Home agent: reachable, last RTT 1.2 ms", "Binding: until", "Profile: corp"]),
    ({"state": "trusted", "mode": "c", "care_of_address": "192.168.7.20"},
     ["own care-of address (mode c)", "Care-of address: 192.168.7.20"]),
    ({"state": "trusted", "mode": "f", "care_of_address": "10.30.0.1"},
     ["through a foreign agent (mode f)", "Care-of address: 10.30.0.1"]),
    ({"state": "untrusted", "mode": "none", "care_of_address": "203.0.113.9"},
     ["Untrusted network, NOT protected"]),
    ({"state": "untrusted", "mode": "mc", "tunnel_inner_address": "10.99.0.5",
      "vpn_gateway": "vpn1.corp.example", "vpn_probe": [True, 23.5, 1700000000.0],
      "nat_detected": True},
     ["protected by the VPN (mode mc)", "Tunnel inner address: 10.99.0.5",
      "VPN gateway vpn1.corp.example: reachable, last RTT 23.5 ms", "NAT detected"]),
    # Never use VPN on an untrusted network: the helper refuses, the gate stays shut.
    ({"state": "untrusted", "mode": "none", "tunnel_inner_address": "", "vpn_gateway": "",
      "policy": "never-vpn", "error": "untrusted network and policy never-vpn"},
     ["Untrusted network, NOT protected: untrusted network and policy never-vpn",
      "Policy: Never use VPN"]),
    ({"state": "error", "mode": "none",
      "error": "denied by home agent: mobile node failed authentication (131)"},
     ["The home agent refused the key (131): check the profile's key"]),
    ({"state": "offline", "mode": "none", "profile": "", "care_of_address": "",
      "binding_expires": 0.0, "error": "", "policy": "auto"}, ["Offline"]),
]


def test_every_helper_state_reaches_tooltip_and_icon(double: Any, tray: Any, shell: Shell,
                                                     qloop: Any) -> None:
    async def go() -> None:
        await shell.find_item()
        seen_icons: dict[str, bytes] = {}
        for changes, parts in STATES:
            await double.set(**changes)
            await _tooltip_has(shell, *parts)
            pix = await shell.icon_pixmaps()
            seen_icons[changes["state"] + "/" + changes.get("mode", "")] = pix[0][2]
        # Each state drew its own icon: the pixels differ from state to state.
        assert len(set(seen_icons.values())) == len(seen_icons), list(seen_icons)

    run(qloop, go())


def test_helper_not_running_then_restarting(double: Any, tray: Any, shell: Shell,
                                            qloop: Any) -> None:
    async def go() -> None:
        await shell.find_item()
        await double.set(state="trusted", mode="h")
        await _tooltip_has(shell, "mode h")
        double.kill()
        await _tooltip_has(shell, "TrustRoam service not running")
        assert (await shell.entry("Check network again")).get("enabled") is False
        double.bus.disconnect()
        double.bus = None
        double.start()  # a restarted helper: new unique name, fresh state
        await _tooltip_has(shell, "Offline")
        await double.set(state="trusted", mode="c")
        await _tooltip_has(shell, "mode c")
        # The secret agent was registered again with the new helper.
        assert any(c.startswith("RegisterSecretAgent") for c in await double.calls())

    run(qloop, go())


def test_helper_absent_at_start(desktop: dict[str, str], qloop: Any, qapp: Any,
                                shell: Shell) -> None:
    from ui.tray import Tray

    t = Tray(ask_secrets=False)
    try:
        run(qloop, t.start())

        async def go() -> None:
            await shell.find_item()
            await _tooltip_has(shell, "TrustRoam service not running")

        run(qloop, go())
    finally:
        t.close()


def test_menu_policy_radio_follows_helper(double: Any, tray: Any, shell: Shell,
                                          qloop: Any) -> None:
    async def radio_state() -> dict[str, int]:
        return {e["label"]: e.get("toggle-state", -1) for e in await shell.layout()
                if e.get("toggle-type") == "radio"}

    async def go() -> None:
        await shell.find_item()

        async def synced(want: str) -> bool:
            st = await radio_state()
            return st.get(want) == 1 and sum(v == 1 for v in st.values()) == 1

        await shell.until(lambda: synced("Automatic"), what="Automatic checked")
        await shell.click("Always use VPN")
        await shell.until(lambda: synced("Always use VPN"), what="Always use VPN checked")
        assert "SetPolicy always-vpn" in await double.calls()
        # The helper refuses: the click checked the entry, the helper's property wins.
        await double.call("Fail", "ss", ["SetPolicy", "Not authorized"])
        await shell.click("Never use VPN")

        async def refused() -> bool:
            return "SetPolicy never-vpn" in await double.calls() and await synced(
                "Always use VPN")

        await shell.until(refused, what="radio back on Always use VPN")
        # The helper changes policy by itself (trustroamctl policy ...): the radio follows.
        await double.set(policy="never-vpn")
        await shell.until(lambda: synced("Never use VPN"), what="Never use VPN checked")

    run(qloop, go())


def test_menu_connect_disconnect_and_check_again(double: Any, tray: Any, shell: Shell,
                                                 qloop: Any) -> None:
    tray.store.set("corp", "mn_ha_key", "hex:" + "ab" * 16)

    async def go() -> None:
        await shell.find_item()

        async def has_profiles() -> bool:
            labels = [e.get("label", "") for e in await shell.layout()]
            return "Connect “corp”" in labels and "Connect “lab”" in labels

        await shell.until(has_profiles, what="profile entries")
        await shell.click("Connect “corp”")
        await _tooltip_has(shell, "Trusted network, at home (mode h)", "Profile: corp")
        assert "Connect corp" in await double.calls()
        assert (await shell.entry("Connect “corp”")).get("toggle-state") == 1
        await shell.click("Check network again")

        async def reprobed() -> bool:
            return "Reprobe" in await double.calls()

        await shell.until(reprobed, what="Reprobe called")
        await shell.click("Disconnect")
        await _tooltip_has(shell, "Offline")
        assert "Disconnect" in await double.calls()

    run(qloop, go())
