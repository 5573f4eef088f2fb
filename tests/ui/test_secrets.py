"""Secrets: the keyring holds them, the agent hands them to the helper, nothing else sees them.

gnome-keyring runs unlocked on the private session bus (conftest); the helper
double asks the tray's agent exactly as trustroamd does.  dbus-monitor watches
both private buses for the canary.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.ui.conftest import run
from tests.ui.procs import Procs, base_env, wait_for

CANARY = "hex:" + "c0ffee15ca4a2d5e" * 2 + "77aa"  # 18 bytes: a valid MN-HA key
CANARY_RAW = bytes.fromhex(CANARY[4:])


def secret_tool_lookup(profile: str, key: str) -> str:
    r = subprocess.run(["secret-tool", "lookup", "service", "trustroam", "username",
                        f"{profile}/{key}"], capture_output=True, text=True, check=False,
                       env=base_env(DBUS_SESSION_BUS_ADDRESS=os.environ[
                           "DBUS_SESSION_BUS_ADDRESS"]), stdin=subprocess.DEVNULL)
    return r.stdout.strip()


def test_agent_answers_get_secrets_from_keyring(double: Any, tray: Any, qloop: Any) -> None:
    tray.store.set("corp", "mn_ha_key", CANARY)
    # It is gnome-keyring's item (secret-tool reads it through the Secret Service).
    assert secret_tool_lookup("corp", "mn_ha_key") == CANARY

    async def go() -> None:
        got = await double.call("AskSecrets", "sas", ["corp", ["mn_ha_key", "not_a_key"]])
        assert got == {"mn_ha_key": CANARY}  # unknown key names get nothing
        assert await double.call("AskSecrets", "sas", ["lab", ["mn_ha_key"]]) == {}

    run(qloop, go())
    tray.store.delete("corp", "mn_ha_key")


class Shown(list):  # type: ignore[type-arg]
    appeared: asyncio.Event


@pytest.fixture
def dialogs(monkeypatch: pytest.MonkeyPatch) -> Shown:
    """Every SecretDialog shown, with an event set when one appears."""
    from ui import secret_dialog

    shown = Shown()
    appeared = asyncio.Event()
    original = secret_dialog.SecretDialog.show

    def show(self: Any) -> None:
        original(self)
        shown.append(self)
        appeared.set()

    monkeypatch.setattr(secret_dialog.SecretDialog, "show", show)
    shown.appeared = appeared
    return shown


def test_agent_asks_once_and_offers_to_store(double: Any, qloop: Any, qapp: Any,
                                             dialogs: Any) -> None:
    from ui.tray import Tray

    t = Tray(ask_secrets=True)
    run(qloop, t.start())
    try:
        t.store.delete("lab", "mn_ha_key")

        async def answer_dialog() -> None:
            await dialogs.appeared.wait()
            dlg = dialogs[0]
            field = dlg.fields["mn_ha_key"]
            field.setText("hex:12")  # too short: OK stays disabled, the message names it
            assert "Mobile-Home key" in dlg.message.text()
            assert not dlg.buttons.button(dlg.buttons.StandardButton.Ok).isEnabled()
            field.setText(CANARY)
            assert dlg.message.text() == ""
            dlg.remember.setChecked(True)
            dlg.buttons.button(dlg.buttons.StandardButton.Ok).click()

        async def go() -> tuple[Any, Any, None]:
            return await asyncio.gather(
                double.call("AskSecrets", "sas", ["lab", ["mn_ha_key"]]),
                double.call("AskSecrets", "sas", ["lab", ["mn_ha_key"]]),
                answer_dialog())

        a, b, _ = run(qloop, go())
        assert a == b == {"mn_ha_key": CANARY}
        assert len(dialogs) == 1  # two requests at once: one dialog
        assert t.store.get("lab", "mn_ha_key") == CANARY  # offered, accepted, stored
        # Next time the keyring answers: no dialog.
        assert run(qloop, double.call("AskSecrets", "sas", ["lab", ["mn_ha_key"]])) == {
            "mn_ha_key": CANARY}
        assert len(dialogs) == 1
    finally:
        t.store.delete("lab", "mn_ha_key")
        t.close()


ROAM = """name = "roam"
home_address = "10.20.1.10"
home_network = "10.20.1.0/24"
home_agent = "10.20.1.1"
spi = 300

[vpn]
gateways = ["vpn1.corp.example"]
identity = "alice@corp.example"
auth = "eap-mschapv2"
"""


def test_vpn_secret_asked_once_with_the_key_and_stored(double: Any, qloop: Any, qapp: Any,
                                                       dialogs: Any) -> None:
    """The VPN's password ([vpn] auth eap-mschapv2) is asked with the MN-HA key in one
    GetSecrets; the keyring has the key, so the dialog asks only for the password,
    once, and stores it; the next Connect needs no dialog."""
    from ui.tray import Tray

    t = Tray(ask_secrets=True)
    run(qloop, t.start())
    try:
        assert t.helper is not None
        assert run(qloop, t.helper.save_profile(ROAM)) == "roam"
        t.store.set("roam", "mn_ha_key", CANARY)
        t.store.delete("roam", "vpn_password")

        async def answer_dialog() -> None:
            await dialogs.appeared.wait()
            dlg = dialogs[0]
            assert list(dlg.fields) == ["vpn_password"]
            ok = dlg.buttons.button(dlg.buttons.StandardButton.Ok)
            assert not ok.isEnabled() and dlg.message.text() == "VPN password: is empty"
            dlg.fields["vpn_password"].setText("pw-" + CANARY)
            dlg.remember.setChecked(True)
            ok.click()

        async def go() -> None:
            await asyncio.gather(t._connect("roam"), answer_dialog())

        run(qloop, go())
        assert run(qloop, double.call("SecretsAsked")) == ["mn_ha_key", "vpn_password"]
        assert run(qloop, double.call("SecretsGot")) == ["mn_ha_key", "vpn_password"]
        assert t.store.get("roam", "vpn_password") == "pw-" + CANARY
        run(qloop, t._connect("roam"))
        assert len(dialogs) == 1  # the keyring answers both now
        assert run(qloop, double.call("SecretsGot")) == ["mn_ha_key", "vpn_password"]
    finally:
        t.store.delete("roam", "mn_ha_key")
        t.store.delete("roam", "vpn_password")
        t.close()


def test_key_passphrase_may_stay_empty_other_secrets_not(qapp: Any) -> None:
    from ui.secret_dialog import SecretDialog

    optional = SecretDialog("p", ["vpn_key_passphrase"], "")
    assert optional.buttons.button(optional.buttons.StandardButton.Ok).isEnabled()
    required = SecretDialog("p", ["vpn_psk"], "")
    assert not required.buttons.button(required.buttons.StandardButton.Ok).isEnabled()
    assert required.message.text() == "VPN pre-shared key: is empty"
    for d in (optional, required):
        d.deleteLater()


def test_keyring_locked_or_absent_gives_a_clear_message(double: Any, tray: Any, qloop: Any,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    procs = Procs(tmp_path)
    try:
        # Absent: a session bus with no Secret Service on it.
        bare = procs.dbus("session")
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", bare)
        assert run(qloop, double.call("AskSecrets", "sas", ["corp", ["mn_ha_key"]])) == {}
        assert tray.last_problem.startswith("No keyring is available"), tray.last_problem
        # Locked: gnome-keyring running but never unlocked (no prompt can be shown).
        home = tmp_path / "locked-home"
        home.mkdir()
        env = base_env(DBUS_SESSION_BUS_ADDRESS=bare, HOME=str(home),
                       XDG_DATA_HOME=str(home), XDG_RUNTIME_DIR=str(tmp_path))
        procs.add("gnome-keyring-locked", subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--components=secrets"], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            text=True))
        from tests.ui.procs import _name_has_owner

        wait_for(lambda: _name_has_owner(bare, "org.freedesktop.secrets"), 15, "keyring")
        tray.last_problem = ""
        assert run(qloop, double.call("AskSecrets", "sas", ["corp", ["mn_ha_key"]])) == {}
        assert tray.last_problem.startswith("The keyring is locked"), tray.last_problem
        # The tray is still up and still shows the helper's state.
        run(qloop, double.set(state="trusted", mode="h"))
        assert tray.icon.isVisible()
    finally:
        procs.stop()


def _monitor(procs: Procs, address: str, out: Path) -> subprocess.Popen[str]:
    fh = out.open("w")
    p = procs.add(f"dbus-monitor {out.name}", subprocess.Popen(
        ["stdbuf", "-oL", "dbus-monitor", "--address", address], stdout=fh,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True))
    fh.close()
    # BecomeMonitor makes the daemon drop the monitor's name: from then on it sees all.
    wait_for(lambda: "NameLost" in out.read_text(), 10, f"dbus-monitor on {out.name}")
    return p


def _blocks(text: str) -> list[str]:
    blocks: list[str] = []
    for line in text.splitlines():
        if line and not line[0].isspace():
            blocks.append(line)
        elif blocks:
            blocks[-1] += "\n" + line
    return blocks


def test_canary_secret_only_in_the_get_secrets_reply(double: Any, tray: Any, qloop: Any,
                                                     desktop: dict[str, str], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    config = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    procs = Procs(tmp_path)
    sys_log, ses_log = tmp_path / "system.monitor", tmp_path / "session.monitor"
    try:
        _monitor(procs, desktop["DBUS_SYSTEM_BUS_ADDRESS"], sys_log)
        _monitor(procs, desktop["DBUS_SESSION_BUS_ADDRESS"], ses_log)
        # The editor: the key typed once, saved to the keyring, the profile to the helper.
        tray.show_profiles()
        ed = tray.profile_dialog
        for k, v in (("name", "canary"), ("home_address", "10.20.1.10"),
                     ("home_network", "10.20.1.0/24"), ("home_agent", "10.20.1.1"),
                     ("spi", "300"), ("vpn.gateways", "vpn1.corp.example"),
                     ("vpn.identity", "alice@corp.example")):
            ed.widgets[k].setText(v)
        ed.key_edit.setText(CANARY)
        ed.secret_edits["vpn_psk"].setText(CANARY + "-psk")  # [vpn] auth = "psk"
        assert run(qloop, ed.save()), ed.message.text()
        assert ed.message.text() == ("Saved canary; in the keyring: Mobile-Home key, "
                                     "VPN pre-shared key")
        assert ed.key_edit.text() == "" and ed.secret_edits["vpn_psk"].text() == ""
        assert tray.store.get("canary", "mn_ha_key") == CANARY
        exported = tmp_path / "canary.toml"
        assert ed.export_file(exported)
        # Connect through the helper: it asks the agent, the agent answers from the keyring.
        run(qloop, tray._connect("canary"))
        assert run(qloop, double.calls())[-1] != "", "double reachable"
        procs.stop()  # flush and end the monitors

        sys_text = sys_log.read_text()
        leaks = [b for b in _blocks(sys_text) if CANARY in b]
        assert leaks, "the monitor must see the one legitimate copy (else it sees nothing)"
        calls = {}
        for b in _blocks(sys_text):
            if b.startswith("method call") and "member=GetSecrets" in b:
                fields = dict(kv.split("=", 1) for kv in b.split("\n")[0].split()
                              if "=" in kv)
                calls[(fields["sender"], fields["serial"])] = b
        for b in leaks:
            head = b.split("\n")[0]
            assert head.startswith("method return"), b
            fields = dict(kv.split("=", 1) for kv in head.split() if "=" in kv)
            # The reply goes back to whoever called GetSecrets, answering that call.
            assert (head.split("-> destination=")[1].split()[0],
                    fields["reply_serial"]) in calls, b
        assert len(leaks) == 1
        assert CANARY not in ses_log.read_text()  # Secret Service traffic is encrypted
        assert CANARY[4:] not in ses_log.read_text()
        assert CANARY not in caplog.text
        assert "c0ffee15ca4a2d5e" not in caplog.text
        # Files: the exported profile, this user's copy, the keyring's own files, the
        # buses' and monitors' directories... none holds it in clear.
        for root in (tmp_path, Path(desktop["tmp"])):
            for f in root.rglob("*"):
                if f.is_file() and f not in (sys_log,):
                    data = f.read_bytes()
                    assert CANARY.encode() not in data and CANARY_RAW not in data, f
        assert "mn_ha_key" not in exported.read_text()
        assert "vpn_psk" not in exported.read_text() and "[vpn]" in exported.read_text()
        # Connect asked for the MN-HA key and the VPN's PSK together, in one request.
        assert run(qloop, double.call("SecretsAsked")) == ["mn_ha_key", "vpn_psk"]
        assert (config / "trustroam/profiles/canary.toml").is_file()
        # The VPN side asks for its PSK the same way: the agent has it too.  (After the
        # monitors: the double's test-only AskSecrets hands the answer to this test.)
        assert run(qloop, double.call("AskSecrets", "sas", ["canary", ["vpn_psk"]])) == {
            "vpn_psk": CANARY + "-psk"}
    finally:
        procs.stop()
        tray.store.delete("canary", "mn_ha_key")
        tray.store.delete("canary", "vpn_psk")
