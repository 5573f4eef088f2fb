"""The tray against the REAL helper in the lab (root, CI).

trustroamd runs in the lab's MN namespace on the lab's private system bus (the
distribution's system policy plus packaging/dbus/org.trustroam.Helper1.conf, real
polkitd), with the reference home agent on the home link and a foreign agent on
fa1.  The helper has NO secrets file: the MN-HA key reaches it only through the
tray's secret agent, from gnome-keyring.  The tray runs in this process (root, the
uid whose agent the helper asks, since the tray calls Connect), on the tests'
private desktop (Xvfb, session bus, StatusNotifierWatcher, keyring), and is read
and clicked as a desktop shell does (tests/ui/shell.py).

Run it under the lab's lock:
    flock /tmp/trustroam-lab.lock python3 -m pytest tests/ui/test_tray_lab.py -q

Fixture order: ``desktop`` (session) is set up before ``lab_world`` (module),
which depends on it; the tray (function) is closed first, then the helper and the
lab go, and the desktop last.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.requirements import require_root
from tests.ui.conftest import run
from tests.ui.shell import Shell

PROFILE = "corp"


@pytest.fixture(scope="module")
def lab_world(desktop: dict[str, str], tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[dict[str, Any]]:
    require_root()
    from app.lab.configs import PROFILE_TOML, fa_toml, ha_toml
    from app.lab.world import Lab
    from tests.lab.procs import Proc

    d = tmp_path_factory.mktemp("tray-lab")
    (d / "ha.toml").write_text(ha_toml(d / "ha-state"))
    (d / "fa.toml").write_text(fa_toml("fa1"))
    profiles = d / "profiles"
    profiles.mkdir()
    (profiles / f"{PROFILE}.toml").write_text(PROFILE_TOML)  # no secrets file at all
    lab = Lab()
    lab.down()  # a crashed earlier run must not block this one
    procs: list[Proc] = []
    try:
        lab.up()
        bus = lab.nm_bus()
        ha = Proc("tr-ha", sys.executable, "-m", "app.agents.ha_cli", "--config",
                  str(d / "ha.toml"))
        procs.append(ha)
        fa = Proc("tr-fa1", sys.executable, "-m", "app.agents.fa_cli", "--config",
                  str(d / "fa.toml"))
        procs.append(fa)
        ha.wait("serving registrations")
        fa.wait("foreign agent on fa")
        helper = Proc("tr-mn", sys.executable, "-m", "app.service.daemon", "--profiles-dir",
                      str(profiles), "--links", "rtnetlink", "--log-level", "info",
                      extra_env={"DBUS_SYSTEM_BUS_ADDRESS": bus})
        procs.append(helper)
        helper.wait("serving org.trustroam.Helper1")
        yield {"lab": lab, "bus": bus, "helper": helper}
    finally:
        for p in reversed(procs):
            p.stop()
        lab.down()


@pytest.fixture
def lab_tray(lab_world: dict[str, Any], qloop: asyncio.AbstractEventLoop, qapp: Any,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The tray on the lab's system bus, its agent answering from the keyring only."""
    from app.api import SECRET_MN_HA_KEY
    from app.lab.configs import MN_HA_KEY
    from ui.tray import Tray

    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", lab_world["bus"])
    t = Tray(ask_secrets=False)
    t.store.set(PROFILE, SECRET_MN_HA_KEY, f"hex:{MN_HA_KEY}")
    run(qloop, t.start())
    try:
        yield t
    finally:
        t.close()
        qapp.processEvents()
        t.store.delete(PROFILE, SECRET_MN_HA_KEY)




def _argb_be(name: str, w: int, h: int) -> bytes:
    """The icon ``name`` as a StatusNotifierItem carries it: ARGB32, network byte order."""
    from PySide6.QtCore import QSize
    from PySide6.QtGui import QImage

    from ui.icons import icon

    img = icon(name).pixmap(QSize(w, h)).toImage().convertToFormat(
        QImage.Format.Format_ARGB32).scaled(w, h)
    raw = bytes(img.constBits())[: w * h * 4]
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return raw


def which_icon(pix: list[tuple[int, int, bytes]]) -> str:
    """The state icon nearest to the shell's IconPixmap (smallest pixel difference)."""
    from ui.icons import icons_dir

    w, h, data = min(pix, key=lambda p: p[0])
    names = [p.stem for p in icons_dir().glob("trustroam-*.svg")]

    def distance(name: str) -> int:
        return sum(abs(a - b) for a, b in zip(_argb_be(name, w, h), data, strict=False))

    return min(names, key=distance)


class HelperWatch:
    """The helper's own Event signals on the lab bus, to see what a click reached."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.kinds: list[str] = []
        self._got = asyncio.Event()
        self.bus: Any = None

    async def start(self) -> None:
        from dbus_fast.aio import MessageBus
        from dbus_fast.constants import MessageType
        from dbus_fast.message import Message

        from app.api import BUS_NAME, INTERFACE

        self.bus = await MessageBus(bus_address=self.address).connect()

        def on(msg: Any) -> bool:
            if msg.interface == INTERFACE and msg.member == "Event":
                self.kinds.append(str(msg.body[0]))
                self._got.set()
            return False

        self.bus.add_message_handler(on)
        reply = await self.bus.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="AddMatch", signature="s",
            body=[f"type='signal',sender='{BUS_NAME}',member='Event'"]))
        assert reply.message_type is MessageType.METHOD_RETURN, reply.body

    async def wait_kind(self, kind: str, since: int, timeout: float = 15) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while kind not in self.kinds[since:]:
            self._got.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"the helper sent no {kind!r} event; saw "
                                     f"{self.kinds[since:]}")
            try:
                await asyncio.wait_for(self._got.wait(), left)
            except TimeoutError:
                continue

    async def _call(self, member: str, sig: str = "", body: list[Any] | None = None,
                    interface: str = "org.trustroam.Helper1") -> list[Any]:
        from dbus_fast.constants import MessageType
        from dbus_fast.message import Message

        from app.api import BUS_NAME, OBJECT_PATH

        reply = await self.bus.call(Message(destination=BUS_NAME, path=OBJECT_PATH,
                                            interface=interface, member=member,
                                            signature=sig, body=body or []))
        assert reply.message_type is MessageType.METHOD_RETURN, (member, reply.body)
        return list(reply.body)

    async def prop(self, name: str) -> Any:
        from app.client_bus import unwrap

        body = await self._call("GetAll", "s", ["org.trustroam.Helper1"],
                                "org.freedesktop.DBus.Properties")
        return unwrap(body[0])[name]

    async def history_kinds(self) -> list[str]:
        body = await self._call("GetHistory", "u", [1000])
        return [str(k) for _t, k, _d in body[0]]


MODE_TEXT = {"h": "Trusted network, at home (mode h)",
             "c": "Trusted network, away, own care-of address (mode c)",
             "f": "Trusted network, away, through a foreign agent (mode f)"}
MODE_ICON = {"h": "trustroam-trusted-home", "c": "trustroam-trusted-colocated",
             "f": "trustroam-trusted-fa"}


def test_tray_follows_the_real_helper_home_t1_fa1_t2_home(
        lab_world: dict[str, Any], lab_tray: Any, shell: Shell, qloop: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trustroam.tray.secrets")
    lab = lab_world["lab"]
    helper = lab_world["helper"]
    watch = HelperWatch(lab_world["bus"])
    seen: list[tuple[str, str, str]] = []

    async def shows(mode: str, net: str) -> None:
        async def ok() -> bool:
            tip = await shell.tooltip()
            return MODE_TEXT[mode] in tip and which_icon(await shell.icon_pixmaps()) == \
                MODE_ICON[mode]

        try:
            await shell.until(ok, timeout=30, what=f"mode {mode} on {net}")
        except TimeoutError:
            raise AssertionError(
                f"on {net}: tooltip {await shell.tooltip()!r}, icon "
                f"{which_icon(await shell.icon_pixmaps())}; helper log:\n"
                + "".join(helper.out.seen[-30:])) from None
        tip = await shell.tooltip()
        assert f"Profile: {PROFILE}" in tip and "Home address: 10.20.1.10" in tip, tip
        if mode == "f":
            assert "Care-of address: 10.40.1.1" in tip, tip
        if mode == "c":
            assert "Care-of address: 10.30." in tip, tip
        assert await watch.prop("Mode") == mode  # the helper says the same
        seen.append((net, mode, str(await shell.prop("Status"))))

    async def go() -> None:
        await watch.start()
        await shell.find_item()

        async def offline_with_profile() -> bool:
            labels = [e.get("label", "") for e in await shell.layout()]
            return "Offline" in await shell.tooltip() and f"Connect “{PROFILE}”" in labels

        await shell.until(offline_with_profile, what="Offline with the corp profile")
        assert which_icon(await shell.icon_pixmaps()) == "trustroam-offline"
        # Connect from the menu: the helper (no secrets file) asks the tray's agent.
        await shell.click(f"Connect “{PROFILE}”")
        await shows("h", "home")
        for net, mode in (("t1", "c"), ("fa1", "f"), ("t2", "c"), ("home", "h")):
            await asyncio.to_thread(lab.move, net)  # the tray's loop keeps running
            await shows(mode, net)

        # The policy radio reaches the real SetPolicy (root: polkit allows it).
        async def radio(label: str) -> bool:
            st = {e["label"]: e.get("toggle-state", -1) for e in await shell.layout()
                  if e.get("toggle-type") == "radio"}
            return st.get(label) == 1 and sum(v == 1 for v in st.values()) == 1

        await shell.until(lambda: radio("Automatic"), what="Automatic checked")
        for label, policy in (("Never use VPN", "never-vpn"), ("Automatic", "auto")):
            since = len(watch.kinds)
            await shell.click(label)
            await watch.wait_kind("policy", since)  # the helper's own event
            assert await watch.prop("Policy") == policy
            await shell.until(lambda label=label: radio(label), what=f"{label} checked")

        # "Check network again" reaches the real Reprobe: the helper probes again.
        since = len(watch.kinds)
        await shell.click("Check network again")
        await watch.wait_kind("reprobe", since)
        await watch.wait_kind("handover", watch.kinds.index("reprobe", since))
        await shows("h", "home (after Check network again)")
        kinds = await watch.history_kinds()
        assert "reprobe" in kinds and "policy" in kinds, kinds
        watch.bus.disconnect()

    run(qloop, go(), timeout=240)
    for net, _mode, status in seen:
        # The item stays Active in every state (Passive would let a host hide it).
        assert status == "Active", (net, status)
    assert [m for _n, m, _s in seen] == ["h", "c", "f", "c", "h", "h"], seen
    # The key came from the keyring through the tray's agent (the helper has no file).
    asked = [r.getMessage() for r in caplog.records if r.name == "trustroam.tray.secrets"]
    assert f"secret request for profile {PROFILE}: answered 1 of 1 key(s)" in asked, asked
