"""Editing stored profiles (issue 19, trustroamctl): the helper's GetProfile and
DeleteProfile underneath, and key=value edits that keep each value's type."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from app.api import Snapshot
from app.mn import profile as schema
from app.profile_edit import EditError, apply
from app.service.helper import Helper, HelperError
from app.service.secrets import SecretSource
from tests.unit.test_service_helper import PROFILE, make_helper


def test_get_profile_is_what_save_stored(tmp_path):
    h = make_helper(tmp_path)
    h.save_profile('name = "road"\n' + PROFILE)
    text = h.profile_text("road")
    assert dataclasses.replace(schema.loads(text), source="") == dataclasses.replace(
        h.profile("road"), source="")
    with pytest.raises(HelperError, match=r"no profile 'nope' \(known: corp, lab, road\)"):
        h.profile_text("nope")


def test_delete_profile_removes_its_file_only(tmp_path):
    h = make_helper(tmp_path)
    d = tmp_path / "profiles"
    outside = tmp_path / "outside.toml"
    outside.write_text('name = "linked"\n' + PROFILE)
    (d / "linked.toml").symlink_to(outside)
    seen = []
    h.event_listeners.append(lambda e: seen.append((e.kind, dict(e.details))))
    h.delete_profile("lab")
    h.delete_profile("linked")  # the link goes, never what it points at
    assert sorted(h.load_profiles()) == ["corp"]
    assert not (d / "lab.toml").exists() and not (d / "linked.toml").is_symlink()
    assert outside.exists()
    assert ("profile-deleted", {"profile": "lab"}) in seen
    with pytest.raises(HelperError, match="no profile 'lab'"):
        h.delete_profile("lab")
    with pytest.raises(HelperError, match=r"no profile '\.\./corp'"):
        h.delete_profile("../corp")
    with pytest.raises(HelperError, match="no profile ''"):  # disconnected: Profile is ""
        h.delete_profile("")


def test_the_connected_profile_and_a_command_line_profile_stay(tmp_path):
    extra = tmp_path / "given.toml"
    extra.write_text(PROFILE)
    h = make_helper(tmp_path)
    h = Helper(profiles_dir=h.profiles_dir, extra_profiles=[extra],
               secrets=SecretSource(None, None), backend=h.backend, links="rtnetlink")
    h.snapshot = Snapshot(profile="corp")
    with pytest.raises(HelperError, match="profile 'corp' is connected: disconnect it first"):
        h.delete_profile("corp")
    with pytest.raises(HelperError, match="given on trustroamd's command line"):
        h.delete_profile("given")
    assert extra.exists() and (tmp_path / "profiles" / "corp.toml").exists()


TEXT = """name = "road"
lifetime = 600
renew_fraction = 0.75

[probe]
retries = 2

[features]
gate = true

[vpn]
gateways = ["gw1.example"]
"""


def test_a_value_keeps_the_type_of_the_value_it_replaces():
    doc = tomllib.loads(apply(TEXT, ["lifetime=900", "renew_fraction=0.5", "features.gate=no",
                                     "vpn.gateways=gw1.example, gw2.example",
                                     "nai=me@corp.example", "probe.initial_timeout=2.5",
                                     "dns.domains=corp.example,lab.example"]))
    assert doc["lifetime"] == 900 and doc["renew_fraction"] == 0.5
    assert doc["features"]["gate"] is False
    assert doc["vpn"]["gateways"] == ["gw1.example", "gw2.example"]
    assert doc["nai"] == "me@corp.example"
    assert doc["probe"] == {"retries": 2, "initial_timeout": 2.5}
    assert doc["dns"] == {"domains": ["corp.example", "lab.example"]}
    doc = tomllib.loads(apply(TEXT, ["vpn.gateways=", "probe.retries=", "nothere.x="]))
    assert doc["vpn"] == {} and doc["probe"] == {} and "nothere" not in doc


@pytest.mark.parametrize(("assignment", "message"), [
    ("lifetime=soon", "lifetime: must be a whole number, got 'soon'"),
    ("features.gate=maybe", "features.gate: must be true or false"),
    ("probe=1", "probe: is a table"),
    ("lifetime.x=1", "lifetime: is a value, not a table"),
    ("a b=1", "a b: not a key"),
    ("lifetime", "write key=value"),
])
def test_a_bad_assignment_is_named(assignment, message):
    with pytest.raises(EditError, match=message):
        apply(TEXT, [assignment])


def test_strings_with_quotes_and_control_characters_read_back_exactly():
    value = 'a "b" \\ c\td'
    assert tomllib.loads(apply(TEXT, [f"nai={value}"]))["nai"] == value
