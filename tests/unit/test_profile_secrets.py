"""Profiles and secrets: clear messages naming file and key, never a secret value."""

from __future__ import annotations

import os
from ipaddress import IPv4Address

import pytest

from app.config import ConfigError
from app.mn import profile
from app.service.secrets import Peer, Secret, SecretError, SecretSource, read_secrets_file
from tests.requirements import require_root

GOOD = """
home_address = "10.20.1.10"
home_network = "10.20.1.0/24"
home_agent = "10.20.1.1"
spi = 256
[probe]
initial_timeout = 1.5
retries = 3
[features]
foreign_agents = false
"""
KEY = "00112233445566778899aabbccddeeff"


def test_a_good_profile(tmp_path):
    (tmp_path / "corp.toml").write_text(GOOD)
    p = profile.load(tmp_path / "corp.toml")
    assert p.name == "corp" and p.home_address == IPv4Address("10.20.1.10")
    assert p.retries == 3 and not p.foreign_agents and p.gate_enabled
    assert profile.loads(profile.dumps(p)) == profile.loads(profile.dumps(p))
    again = profile.loads(profile.dumps(p))
    assert again.home_agent == p.home_agent and again.name == "corp"


@pytest.mark.parametrize(("change", "key", "words"), [
    ('home_address = "10.20.2.10"', "home_address", "not a host address"),
    ('home_agent = "10.20.9.1"', "home_agent", "not inside home_network"),
    ("spi = 12", "spi", "reserved"),
    ('spi = "x"', "spi", "must be an integer"),
    ('algorithm = "sha1"', "algorithm", "must be one of"),
    ('key = "hex:00"', "key", "secrets do not belong in a profile"),
    ("lifetime = 0", "lifetime", "between 1 and 65534"),
    ("colour = 1", "colour", "not a known setting"),
])
def test_bad_values_are_named(tmp_path, change, key, words):
    name = change.split(" =")[0]
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(name + " "))
    (tmp_path / "corp.toml").write_text(change + "\n" + text)
    with pytest.raises(ConfigError) as exc:
        profile.load(tmp_path / "corp.toml")
    assert exc.value.key == key and words in str(exc.value), str(exc.value)
    assert "hex:00" not in str(exc.value)


def test_save_profile_text_needs_a_name():
    with pytest.raises(ConfigError, match="name: is required"):
        profile.loads(GOOD)
    with pytest.raises(ConfigError, match="name"):
        profile.loads('name = "../../etc/x"\n' + GOOD)


def secrets_file(tmp_path, text, mode=0o600):
    f = tmp_path / "secrets.toml"
    f.write_text(text)
    f.chmod(mode)
    return f


def test_secrets_file(tmp_path):
    f = secrets_file(tmp_path, f'[corp]\nmn_ha_key = "hex:{KEY}"\n')
    s = read_secrets_file(f, "corp")
    assert s.value == bytes.fromhex(KEY)
    assert KEY not in repr(s) and KEY not in str(s)


@pytest.mark.parametrize(("text", "mode", "words"), [
    (f'[corp]\nmn_ha_key = "hex:{KEY}"\n', 0o644, "readable by group or others"),
    ('[corp]\nmn_ha_key = "hex:zz11"\n', 0o600, "not hex digits"),
    ('[corp]\nmn_ha_key = "hex:0011"\n', 0o600, "2 bytes"),
    ('[other]\nmn_ha_key = "x"\n', 0o600, "no [corp] mn_ha_key"),
    ('[corp\nmn_ha_key = "hex:1234567890abcdef"', 0o600, "not valid TOML"),
])
def test_bad_secrets_files_are_refused_without_echoing_the_value(tmp_path, text, mode, words):
    f = secrets_file(tmp_path, text, mode)
    with pytest.raises(SecretError) as exc:
        read_secrets_file(f, "corp")
    assert words in str(exc.value)
    for secretish in (KEY, "zz11", "1234567890abcdef"):
        assert secretish not in str(exc.value)


def test_secrets_file_owned_by_someone_else_is_refused(tmp_path):
    require_root("giving the file to another owner needs root")
    f = secrets_file(tmp_path, f'[corp]\nmn_ha_key = "hex:{KEY}"\n')
    os.chown(f, 65534, 65534)
    with pytest.raises(SecretError, match="is not owned by root"):
        read_secrets_file(f, "corp")


async def test_the_callers_agent_first_then_the_file(tmp_path):
    f = secrets_file(tmp_path, f'[corp]\nmn_ha_key = "hex:{KEY}"\n')
    calls = []

    async def agent(a, prof, keys):
        calls.append(a.peer.name)
        return {"mn_ha_key": "hex:" + "ab" * 16} if prof == "corp" else {}

    src = SecretSource(agent, f)
    tray = Peer(":1.tray", 1000, 42)
    src.register_agent(tray, "/agent")
    key = await src.key("corp", tray)
    assert key == Secret(bytes.fromhex("ab" * 16))
    assert calls == [":1.tray"]
    with pytest.raises(SecretError) as exc:
        await src.key("other", tray)
    assert "secret agent :1.tray (uid 1000) has no mn_ha_key for other" in str(exc.value)
    assert "no [other] mn_ha_key" in str(exc.value)


async def test_no_source_at_all_says_what_to_do():
    with pytest.raises(SecretError, match="no secret agent is registered"):
        await SecretSource(None, None).key("corp")
