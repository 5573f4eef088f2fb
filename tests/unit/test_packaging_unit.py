"""The helper's systemd unit as a fresh install runs it (security review 2026-12-07,
finding 11): no path that may not exist yet without systemd's "-", a state
directory for what survives restarts, a restart after any failure, and the gate
shut after every stop.  Read as systemd reads it (the lab has no systemd)."""

from __future__ import annotations

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "trustroamd.service"
ACTIVATION = ROOT / "packaging" / "dbus" / "org.trustroam.Helper1.service"


def service() -> configparser.SectionProxy:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    return cp["Service"]


def test_every_read_write_path_exists_on_a_fresh_install_or_is_optional():
    s = service()
    made = {"/etc/" + d for d in s.get("ConfigurationDirectory", "").split()}
    made |= {"/var/lib/" + d for d in s.get("StateDirectory", "").split()}
    for path in s["ReadWritePaths"].split():
        assert path.startswith("-") or path in made, path  # else 226/NAMESPACE


def test_state_survives_restarts_in_a_root_only_state_directory():
    s = service()
    assert s["StateDirectory"] == "trustroam" and s["StateDirectoryMode"] == "0700"
    assert "--state-dir /var/lib/trustroam" in s["ExecStart"]
    assert "--state-dir /var/lib/trustroam" in ACTIVATION.read_text()


def test_a_failure_restarts_the_helper_and_every_stop_shuts_the_gate():
    s = service()
    assert s["Restart"] == "on-failure"  # the helper's unexpected ends exit non-zero
    assert s["ExecStopPost"].endswith("trustroamd --shut-gate")
    assert s["PrivateTmp"] == "yes"


def test_lockdown_shuts_the_gate_before_any_network_is_configured():
    """Issue 19: with lockdown = true the gate is loaded at boot before
    network-pre.target (NetworkManager, networkd and ifupdown come after it),
    without waiting for D-Bus, and trustroamd starts after it (and adopts it)."""
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string((UNIT.parent / "trustroam-lockdown.service").read_text())
    unit, svc = cp["Unit"], cp["Service"]
    assert "network-pre.target" in unit["Before"].split()
    assert "network-pre.target" in unit["Wants"].split()
    assert unit["DefaultDependencies"] == "no" and "dbus" not in unit.get("After", "")
    assert svc["Type"] == "oneshot" and svc["ExecStart"].endswith("trustroamd --lockdown-only")
    assert cp["Install"]["WantedBy"] == "sysinit.target"
    main = configparser.ConfigParser(strict=False, interpolation=None)
    main.read_string(UNIT.read_text())
    assert "trustroam-lockdown.service" in main["Unit"]["After"].split()


def test_lockdown_can_fail_closed_network_managers_need_the_lockdown_unit():
    """Review finding 9: Before= only orders; if trustroam-lockdown.service fails,
    NetworkManager and networkd would start with no gate.  The optional drop-in makes
    them require it (Requires= and After=), and the packaging README says where it goes."""
    drop_in = ROOT / "packaging" / "systemd" / "lockdown-required.conf"
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(drop_in.read_text())
    assert cp["Unit"]["Requires"] == "trustroam-lockdown.service"
    assert cp["Unit"]["After"] == "trustroam-lockdown.service"
    readme = (ROOT / "packaging" / "README.md").read_text()
    for unit in ("NetworkManager.service.d", "systemd-networkd.service.d"):
        assert f"/etc/systemd/system/{unit}/trustroam-lockdown.conf" in readme
