"""The tray against the real ``trustroamd`` on the private system bus, without the lab.

Only what needs no network: properties, the policy radio through the real SetPolicy
and polkit (python-dbusmock's polkitd template), SaveProfile with the helper's own
validation, the profile list and the history.  Connect changes routes, so it stays
with the lab tests (tests/lab), which the lead engineer wires to the tray.

The tray here is root's and polkit a double: what a desktop user meets as
installed (the policy from the menu with no password, SaveProfile through a
real polkit agent's administrator prompt) is tests/ui/test_tray_as_user.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.requirements import require_root
from tests.ui.conftest import run
from tests.ui.procs import ROOT, Procs, _name_has_owner, _read_line, base_env, wait_for
from tests.ui.shell import Shell

AUTHORITY = "org.freedesktop.PolicyKit1"


class RealHelper:
    def __init__(self, procs: Procs, system: str, profiles: Path) -> None:
        self.system = system
        self.profiles = profiles
        env = base_env(DBUS_SYSTEM_BUS_ADDRESS=system)
        procs.add("polkitd-mock", subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--system", "--template", "polkitd"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, text=True))
        wait_for(lambda: _name_has_owner(system, AUTHORITY), 20, "polkitd (dbusmock)")
        self.allow(["org.trustroam.connect", "org.trustroam.configure"])
        self.proc = procs.add("trustroamd", subprocess.Popen(
            [sys.executable, "-m", "app.service.daemon", "--profiles-dir", str(profiles),
             "--dataplane", "userspace", "--links", "rtnetlink", "--log-level", "info"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, cwd=ROOT))
        line = _read_line(self.proc, "trustroamd")
        assert line.startswith("trustroamd: serving org.trustroam.Helper1"), line

    def allow(self, actions: list[str]) -> None:
        arg = "array:string:" + ",".join(actions) if actions else "array:string:"
        subprocess.run(["dbus-send", f"--bus={self.system}", "--print-reply",
                        f"--dest={AUTHORITY}", "/org/freedesktop/PolicyKit1/Authority",
                        "org.freedesktop.DBus.Mock.SetAllowed", arg],
                       check=True, capture_output=True)


@pytest.fixture
def helperd(desktop: dict[str, str], tmp_path: Path) -> Iterator[RealHelper]:
    require_root("trustroamd runs as root")
    procs = Procs(tmp_path)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "corp.toml").write_text('home_address = "10.20.1.10"\n'
                                        'home_network = "10.20.1.0/24"\n'
                                        'home_agent = "10.20.1.1"\nspi = 256\n')
    try:
        yield RealHelper(procs, desktop["DBUS_SYSTEM_BUS_ADDRESS"], profiles)
    finally:
        procs.stop()




def test_tray_with_the_real_helper_policy_profiles_history(
        helperd: RealHelper, tray: Any, shell: Shell, qloop: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))

    async def radios() -> dict[str, int]:
        return {e["label"]: e.get("toggle-state", -1) for e in await shell.layout()
                if e.get("toggle-type") == "radio"}

    async def checked(label: str) -> bool:
        st = await radios()
        return st.get(label) == 1 and sum(v == 1 for v in st.values()) == 1

    async def go() -> None:
        await shell.find_item()

        async def offline_with_corp() -> bool:
            labels = [e.get("label", "") for e in await shell.layout()]
            return "Offline" in await shell.tooltip() and "Connect “corp”" in labels

        await shell.until(offline_with_corp, what="Offline and the corp profile")
        await shell.click("Always use VPN")
        await shell.until(lambda: checked("Always use VPN"), what="Always use VPN")
        # polkit says no: the radio goes back to what the helper really has.
        helperd.allow([])
        tray.last_problem = ""
        await shell.click("Never use VPN")

        async def refused() -> bool:
            return bool(tray.last_problem) and await checked("Always use VPN")

        await shell.until(refused, what="refusal shown, radio back")
        assert tray.last_problem.startswith("Change policy: "), tray.last_problem
        helperd.allow(["org.trustroam.connect", "org.trustroam.configure"])

    run(qloop, go())

    # The editor saves through the real SaveProfile: the helper writes the file.
    tray.show_profiles()
    ed = tray.profile_dialog
    for k, v in (("name", "corp2"), ("home_address", "10.20.2.10"),
                 ("home_network", "10.20.2.0/24"), ("home_agent", "10.20.2.1"),
                 ("spi", "300"), ("nai", "bob@corp.example")):
        ed.widgets[k].setText(v)
    assert run(qloop, ed.save()), ed.message.text()
    saved = (helperd.profiles / "corp2.toml").read_text()
    assert 'nai = "bob@corp.example"' in saved and "spi = 300" in saved

    async def listed() -> None:
        async def has() -> bool:
            return "Connect “corp2”" in [e.get("label", "") for e in await shell.layout()]

        await shell.until(has, what="corp2 in the menu")

    run(qloop, listed())
    helperd.allow([])
    assert not run(qloop, ed.save())
    assert ed.message.text().startswith("Not saved: "), ed.message.text()

    # The history window reads the real GetHistoryPage.
    tray.show_status()
    w = tray.status_window
    run(qloop, w.reload_history())
    kinds = {w.model.index(r, 1).data() for r in range(w.model.rowCount())}
    assert {"policy", "profile-saved"} <= kinds, kinds
