"""The tray icon, its menu and notifications, wired to the helper and NetworkManager.

Everything here reacts to D-Bus signals; the only timer is the single-shot one
that lets a change settle before it is announced.  Quitting the tray never
touches the connection: the helper keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer
from PySide6.QtGui import QAction, QActionGroup
from PySide6.QtWidgets import QApplication, QMenu, QSystemTrayIcon

from app.api import HistoryEntry, Mode, Policy, Snapshot, State
from app.client_bus import BusType, MessageBus, shown
from ui import memory, presentation
from ui.helper_client import AGENT_PATH, HelperCallError, HelperClient
from ui.icons import icon
from ui.nm_client import NetworkName
from ui.rtt import RttSeries
from ui.secrets import SecretAgent, SecretStore
from ui.signin_launch import SignInLauncher

if TYPE_CHECKING:  # imported when first opened (memory: see ui/status_window.py)
    from ui.profile_dialog import ProfileDialog
    from ui.status_window import StatusWindow

log = logging.getLogger("trustroam.tray")
POLICY_WORDS = presentation.POLICY_WORDS
RTT_SAMPLES = 24 * 3600  # a day of one-per-second probes: 2.8 MB for both series


def connect_label(profile: str) -> str:
    return f"Connect “{shown(profile, 60)}”"  # the helper's name for it, escaped


class Tray(QObject):
    """The tray icon and its menu, following the helper (and NetworkManager for the
    network's name) over the system bus; it opens the status window and the profile
    editor on demand and answers the helper's secret requests from the keyring."""

    def __init__(self, *, ask_secrets: bool = True) -> None:
        super().__init__()
        self.snapshot: Snapshot | None = None
        self.network = ""
        self.profiles: list[str] = []
        self.bus: MessageBus | None = None
        self.helper: HelperClient | None = None
        self.nm: NetworkName | None = None
        self.store = SecretStore()
        self.agent: SecretAgent | None = None
        self.ask_secrets = ask_secrets
        self.coalescer = presentation.Coalescer()
        self.last_problem = ""
        self.status_window: StatusWindow | None = None
        self.profile_dialog: ProfileDialog | None = None
        self.history: deque[HistoryEntry] = deque(maxlen=2000)
        self.rtt = {"ha": RttSeries(RTT_SAMPLES), "vpn": RttSeries(RTT_SAMPLES)}
        self._tasks: set[asyncio.Future[Any]] = set()

        self.settle_timer = QTimer(self)
        self.settle_timer.setSingleShot(True)
        self.settle_timer.timeout.connect(self._settled)

        self.icon = QSystemTrayIcon(self)
        self._icon_name = ""
        self.menu = QMenu()
        self._build_menu()
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self._refresh()

    # -- menu --------------------------------------------------------------------------

    def _build_menu(self) -> None:
        m = self.menu
        self.signin = SignInLauncher()
        self.header = m.addAction("TrustRoam")
        self.header.setEnabled(False)
        m.addSeparator()
        self.disconnect_action = m.addAction("Disconnect")
        self.disconnect_action.triggered.connect(lambda: self.spawn(self._disconnect()))
        m.addSeparator()
        self.profile_actions: list[QAction] = []
        self.policy_group = QActionGroup(self)
        self.policy_group.setExclusive(True)
        self.policy_actions: dict[Policy, QAction] = {}
        for p, words in POLICY_WORDS.items():
            a = m.addAction(words)
            a.setCheckable(True)
            a.setData(p.value)
            self.policy_group.addAction(a)
            a.triggered.connect(lambda _c=False, p=p: self.spawn(self._set_policy(p)))
            self.policy_actions[p] = a
        m.addSeparator()
        self.reprobe_action = m.addAction("Check network again")
        self.reprobe_action.triggered.connect(lambda: self.spawn(self._reprobe()))
        # Per network (the helper keeps the choice by the network's subnet and router):
        # off unless the user turns it on here; shown as the helper answers.
        self.lan_action = m.addAction("Allow local network")
        self.lan_action.setCheckable(True)
        self.lan_action.setEnabled(False)
        self.lan_action.triggered.connect(
            lambda checked=False: self.spawn(self._allow_lan(bool(checked))))
        # Shown only while the helper reports a captive portal (issue 19).
        self.signin_action = m.addAction("Sign in to this network…")
        self.signin_action.triggered.connect(self.signin.open)
        self.signin_action.setVisible(False)
        self.status_action = m.addAction("Status…")
        self.status_action.triggered.connect(self.show_status)
        self.editor_action = m.addAction("Profiles…")
        self.editor_action.triggered.connect(self.show_profiles)
        m.addSeparator()
        self.quit_action = m.addAction("Quit")
        self.quit_action.triggered.connect(self.quit)

    def _rebuild_profiles(self) -> None:
        for a in self.profile_actions:
            self.menu.removeAction(a)
            a.deleteLater()
        self.profile_actions = []
        current = self.snapshot.profile if self.snapshot else ""
        anchor = self.policy_actions[Policy.AUTO]
        sep = QAction(self.menu)
        sep.setSeparator(True)
        for name in self.profiles:
            a = QAction(connect_label(name), self.menu)
            a.setCheckable(True)
            a.setChecked(name == current and self.snapshot is not None
                         and self.snapshot.state is not State.OFFLINE)
            a.triggered.connect(lambda _c=False, n=name: self.spawn(self._connect(n)))
            self.menu.insertAction(anchor, a)
            self.profile_actions.append(a)
        if not self.profiles:
            a = QAction("No profiles: use Profiles…", self.menu)
            a.setEnabled(False)
            self.menu.insertAction(anchor, a)
            self.profile_actions.append(a)
        self.menu.insertAction(anchor, sep)
        self.profile_actions.append(sep)

    def _resync_menu(self) -> None:
        snap = self.snapshot
        present = snap is not None
        self.header.setText(presentation.headline(snap))
        self.disconnect_action.setEnabled(present and bool(snap and snap.profile))
        self.reprobe_action.setEnabled(present)
        self.signin_action.setVisible(bool(snap is not None and snap.captive_portal))
        self.editor_action.setEnabled(True)
        for p, a in self.policy_actions.items():
            a.setEnabled(present)
            # The helper's Policy property is the truth: a click checks the entry
            # before the helper answers, so it is put back from here.
            a.setChecked(present and snap is not None and snap.policy is p)
        current = snap.profile if snap else ""
        for a in self.profile_actions:
            if a.isCheckable():
                a.setEnabled(present)
                a.setChecked(present and a.text() == connect_label(current)
                             and snap is not None and snap.state is not State.OFFLINE)

    # -- start -------------------------------------------------------------------------

    async def start(self) -> None:
        self.icon.show()
        try:
            self.bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        except Exception as exc:  # no system bus at all: stay up and say so
            log.warning("no system bus: %s", exc)
            self.problem("The system D-Bus is not available: TrustRoam service not reachable")
            return
        self.agent = SecretAgent(self.store, self._ask if self.ask_secrets else None,
                                 self.problem)
        self.agent.attach(self.bus, AGENT_PATH)
        self.helper = HelperClient(self.bus, on_snapshot=self._on_snapshot,
                                   on_event=self._on_event, on_appeared=self._helper_appeared)
        self.helper.agent_path = AGENT_PATH
        self.nm = NetworkName(self.bus, self._on_network)
        try:
            await self.helper.start()
        except Exception as exc:  # the bus refused our match rules or went away
            log.warning("cannot follow the helper: %s", exc)
            self.problem(f"Cannot follow the TrustRoam service: {exc}")
            return
        try:
            await self.nm.start()
        except Exception as exc:
            log.info("NetworkManager not usable: %s", exc)

    async def _ask(self, profile: str, keys: list[str], why: str
                   ) -> tuple[dict[str, str], bool]:
        from ui.secret_dialog import ask

        return await ask(profile, keys, why)

    def _helper_appeared(self) -> None:
        self.spawn(self._load_profiles())
        if self.status_window is not None:
            self.status_window.helper_appeared()

    async def _load_profiles(self) -> None:
        if self.helper is None:
            return
        try:
            self.profiles = await self.helper.list_profiles()
        except HelperCallError as exc:
            log.warning("cannot list profiles: %s", exc)
            return
        self._rebuild_profiles()
        self._resync_menu()

    # -- incoming ------------------------------------------------------------------------

    def _on_snapshot(self, snap: Snapshot | None) -> None:
        old = self.snapshot
        self.snapshot = snap
        if snap is not None:
            for key, probe, prev in (("ha", snap.home_agent_probe,
                                      old.home_agent_probe if old else None),
                                     ("vpn", snap.vpn_probe, old.vpn_probe if old else None)):
                self.rtt[key].observe(probe, prev, time.time())
        if snap is None:
            self.profiles = []
            self._rebuild_profiles()
        if snap is None or old is None or (snap.mode, snap.care_of_address) != (
                old.mode, old.care_of_address):
            self.spawn(self._allow_lan(None))  # another network: ask the helper again
        self._refresh()
        delay = self.coalescer.observe(snap, self.network)
        if delay is not None:
            self.settle_timer.start(int(delay * 1000))
        if self.status_window is not None:
            self.status_window.update_snapshot(snap)

    def _on_event(self, entry: HistoryEntry) -> None:
        self.history.append(entry)
        if entry.kind == "profile-saved":
            self.spawn(self._load_profiles())
        if self.status_window is not None:
            self.status_window.add_event(entry)

    def _on_network(self, name: str) -> None:
        self.network = name
        self.coalescer.network = name  # a notice still settling names the new network
        self._refresh()
        if self.status_window is not None:
            self.status_window.update_snapshot(self.snapshot)

    def _settled(self) -> None:
        notice = self.coalescer.settle()
        if notice is None:
            return
        kind = (QSystemTrayIcon.MessageIcon.Warning if notice.urgent
                else QSystemTrayIcon.MessageIcon.Information)
        log.info("notify: %s", notice.text)
        self.icon.showMessage(notice.title, notice.text, kind, 8000)

    def problem(self, text: str) -> None:
        """Something the user must act on that is not the helper's state (keyring...)."""
        text = shown(text, 400)  # it may quote the bus (a refusal's message)
        self.last_problem = text
        log.warning("%s", text)
        self.icon.showMessage("TrustRoam", text, QSystemTrayIcon.MessageIcon.Warning, 10000)

    # -- presentation ----------------------------------------------------------------------

    def tooltip_text(self) -> str:
        return presentation.tooltip(self.snapshot, self.network)

    def _refresh(self) -> None:
        name = presentation.icon_name(self.snapshot)
        if name != self._icon_name:  # a shell re-reads the icon on each NewIcon
            self._icon_name = name
            self.icon.setIcon(icon(name))
            log.info("icon %s", name)
        text = self.tooltip_text()
        if text != self.icon.toolTip():
            self.icon.setToolTip(text)
        self._resync_menu()

    # -- actions -------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` on the loop, keeping a reference until it is done."""
        t = asyncio.ensure_future(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _guard(self, what: str, coro: Coroutine[Any, Any, Any]) -> None:
        if self.helper is None:
            coro.close()
            self.problem(f"{what}: TrustRoam service not reachable")
            return
        try:
            await coro
        except HelperCallError as exc:
            self.problem(f"{what}: {exc}")
        finally:
            self._resync_menu()

    async def _connect(self, name: str) -> None:
        assert self.helper is not None
        await self._guard(f"Connect {name}", self.helper.connect(name))

    async def _disconnect(self) -> None:
        if self.helper is not None:
            await self._guard("Disconnect", self.helper.disconnect())

    async def _reprobe(self) -> None:
        if self.helper is not None:
            await self._guard("Check network again", self.helper.reprobe())

    async def _set_policy(self, p: Policy) -> None:
        if self.helper is not None:
            await self._guard("Change policy", self.helper.set_policy(p.value))

    async def _allow_lan(self, allow: bool | None) -> None:
        """Ask the helper whether the local network is open here (None), or set it
        for this network; the item shows the helper's answer and says why."""
        a = self.lan_action
        snap = self.snapshot
        if self.helper is None or snap is None or snap.mode not in (Mode.COLOCATED, Mode.VPN):
            a.setChecked(False)
            a.setEnabled(False)
            return
        a.setEnabled(True)
        try:
            body = await (self.helper.call("GetAllowLan") if allow is None else
                          self.helper.call("SetAllowLan", "b", [allow]))
            is_open, why = body[0]
        except HelperCallError as exc:
            if allow is not None:
                self.problem(f"Allow local network: {exc}")
            is_open, why = False, str(exc)
        a.setChecked(bool(is_open))
        a.setToolTip(shown(str(why), 120))
        a.setStatusTip(a.toolTip())

    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        if reason == QSystemTrayIcon.ActivationReason.Trigger:
            self.show_status()

    def show_status(self) -> None:
        if self.status_window is None:
            with memory.plain_imports():  # its imports, and Qt's lazy ones while building
                from ui.status_window import StatusWindow

                self.status_window = StatusWindow(self)
        self.status_window.present()
        log.info("status window shown")

    def status_window_closed(self, window: object) -> None:
        if self.status_window is window:
            self.status_window = None

    def show_profiles(self) -> None:
        if self.profile_dialog is None:
            with memory.plain_imports():
                from ui.profile_dialog import ProfileDialog

                self.profile_dialog = ProfileDialog(self)
        self.profile_dialog.present()

    def close(self) -> None:
        """Let go of the icon and the buses (the connection itself stays up)."""
        self.settle_timer.stop()
        self.signin.close()
        for w in (self.status_window, self.profile_dialog):
            if w is not None:
                w.close()
        self.icon.hide()
        self.icon.deleteLater()
        if self.bus is not None:
            self.bus.disconnect()
            self.bus = None

    def quit(self) -> None:
        # Never Disconnect here: the connection belongs to the helper, not the tray.
        self.close()
        QApplication.quit()
