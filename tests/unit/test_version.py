"""One version number: app/__init__.py's, which the wheel's metadata
(pyproject.toml), debian/changelog, trustroamctl --version and the helper's
D-Bus Version property all repeat (issue 21)."""

from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import app
from app import ctl
from app.service.dbus_api import HelperInterface

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_takes_its_version_from_app():
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in doc["project"]
    assert "version" in doc["project"]["dynamic"]
    assert doc["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "app.__version__"}


def test_debian_changelog_names_the_same_version():
    first = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    m = re.fullmatch(r"trustroam \(([^)]+)\) \S+; urgency=\w+", first)
    assert m, first
    assert m.group(1) == app.__version__


def test_changelog_md_has_an_entry_for_the_version():
    assert f"## {app.__version__}" in (ROOT / "CHANGELOG.md").read_text()


def test_trustroamctl_version_prints_the_version(capsys):
    with pytest.raises(SystemExit) as exc:
        ctl.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"trustroamctl {app.__version__}"


def test_dbus_version_property_is_the_version_and_in_the_contract():
    assert HelperInterface.Version.fget(None) == app.__version__
    xml = ET.parse(ROOT / "resources" / "dbus" / "org.trustroam.Helper1.xml")
    props = {p.get("name"): (p.get("type"), p.get("access")) for p in xml.iter("property")}
    assert props["Version"] == ("s", "read")
