"""The tray against the REAL helper in mode mc (RFC 5266 3.3), in the lab (root, CI).

trustroamd runs in the lab's MN namespace with a profile that has a ``[vpn]``
table for gw1 and the MN's charon over VICI; the gateways answer only from
outside (``gw_inside=False``).  The tray runs in this process on the tests'
private desktop and is read and clicked as a desktop shell does
(tests/ui/shell.py): on pub its StatusNotifierItem must say mc, the TIA and the
gateway; "Never use VPN" clicked there must give the blocked state with the
helper's own reason, and "Automatic" must bring mc back.

Run it under the lab's lock:
    flock /tmp/trustroam-lab.lock python3 -m pytest tests/ui/test_tray_lab_mc.py -q
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from tests.requirements import require_root
from tests.ui.conftest import run
from tests.ui.shell import Shell
from tests.ui.test_tray_lab import HelperWatch, which_icon

GW1 = "172.16.0.11"
MC = "TrustRoam: Untrusted network, protected by the VPN (mode mc)"


@pytest.fixture(scope="module")
def mc_world(desktop: dict[str, str], tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[dict[str, Any]]:
    require_root()
    from app.lab.configs import write_helper_files
    from tests.lab.conftest import a_lab
    from tests.lab.procs import helper_world

    d = tmp_path_factory.mktemp("tray-mc")
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1,))
    for lab in a_lab(gw_inside=False):  # torn down when this fixture ends
        with helper_world(lab.nm_bus(), d, profiles, secrets) as w:
            yield {**w, "lab": lab}


@pytest.fixture
def mc_tray(mc_world: dict[str, Any], qloop: asyncio.AbstractEventLoop, qapp: Any,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from ui.tray import Tray

    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", str(mc_world["bus"]))
    t = Tray(ask_secrets=False)  # the helper has its secrets file: nothing to ask
    run(qloop, t.start())
    try:
        yield t
    finally:
        t.close()
        qapp.processEvents()




def test_rfc5266_3_3_tray_shows_mc_tia_gateway_on_pub_and_never_vpn_blocks_with_the_reason(
        mc_world: dict[str, Any], mc_tray: Any, shell: Shell, qloop: Any) -> None:
    from app.mn.access_mode import NEVER_VPN_REASON

    lab = mc_world["lab"]
    helper = mc_world["helper"]
    watch = HelperWatch(str(mc_world["bus"]))

    async def tip_until(what: str, *parts: str, icon: str) -> str:
        async def ok() -> bool:
            tip = await shell.tooltip()
            return all(p in tip for p in parts) and \
                which_icon(await shell.icon_pixmaps()) == icon

        try:
            await shell.until(ok, timeout=40, what=what)
        except TimeoutError:
            raise AssertionError(
                f"{what}: tooltip {await shell.tooltip()!r}, icon "
                f"{which_icon(await shell.icon_pixmaps())}; helper log:\n"
                + "".join(helper.out.seen[-30:])) from None
        return str(await shell.tooltip())

    async def radio_checked(label: str) -> bool:
        st = {e["label"]: e.get("toggle-state", -1) for e in await shell.layout()
              if e.get("toggle-type") == "radio"}
        return st.get(label) == 1 and sum(v == 1 for v in st.values()) == 1

    async def set_policy(label: str, policy: str) -> None:
        # Through dbusmenu as a shell clicks; the helper's SetPolicy goes through
        # the lab's polkit (root: allowed).
        since = len(watch.kinds)
        await shell.click(label)
        await watch.wait_kind("policy", since)
        assert await watch.prop("Policy") == policy
        await shell.until(lambda: radio_checked(label), what=f"{label} checked")

    async def go() -> None:
        await watch.start()
        await shell.find_item()
        await tip_until("mode h at home", "Trusted network, at home (mode h)",
                        icon="trustroam-trusted-home")
        await shell.until(lambda: radio_checked("Automatic"), what="Automatic checked")

        await asyncio.to_thread(lab.move, "pub")  # the tray's loop keeps running
        tip = await tip_until("mc on pub", MC, "Tunnel inner address: 10.99.1.",
                              f"VPN gateway {GW1}: reachable", icon="trustroam-vpn")
        # The tray says what the helper says.
        assert await watch.prop("Mode") == "mc"
        tia = await watch.prop("TunnelInnerAddress")
        assert f"Tunnel inner address: {tia}\n" in tip + "\n", (tia, tip)
        assert await watch.prop("VpnGateway") == GW1
        assert "Care-of address" not in tip, tip  # in mc the HA knows us by the TIA
        assert str(await shell.prop("Status")) == "Active"

        await set_policy("Never use VPN", "never-vpn")
        tip = await tip_until(
            "blocked on pub under never-vpn",
            f"TrustRoam: Untrusted network, NOT protected: {NEVER_VPN_REASON}",
            "Policy: Never use VPN", icon="trustroam-untrusted")
        assert await watch.prop("Mode") == "none"
        assert await watch.prop("Error") == NEVER_VPN_REASON
        assert "Tunnel inner address" not in tip, tip

        await set_policy("Automatic", "auto")
        tip = await tip_until("mc again on pub", MC, f"VPN gateway {GW1}",
                              icon="trustroam-vpn")
        assert "Policy:" not in tip, tip
        assert await watch.prop("Mode") == "mc"
        watch.bus.disconnect()

    run(qloop, go(), timeout=240)
