"""Every bad configuration value stops the start with the file and the key named."""

from __future__ import annotations

import pytest

from app.agents.ha_config import load
from app.config import ConfigError

GOOD_HA = '[home_agent]\naddress = "10.20.1.1"\nhome_network = "10.20.1.0/24"\n'
GOOD_MN = ('[[mobile_nodes]]\nhome_address = "10.20.1.10"\nspi = 256\n'
           'key = "hex:00112233445566778899aabbccddeeff"\n')


def write(tmp_path, text):
    p = tmp_path / "ha.toml"
    p.write_text(text)
    return p


def test_good_config_defaults(tmp_path):
    cfg = load(write(tmp_path, GOOD_HA + GOOD_MN))
    assert cfg.port == 434 and cfg.max_lifetime == 600 and cfg.replay_window == 7.0
    assert cfg.state_dir.as_posix() == "/var/lib/trustroam-ha"
    assert "00112233" not in repr(cfg)  # keys stay out of reprs (and so out of logs)
    assert cfg.gre  # GRE offered unless turned off


def test_gre_can_be_turned_off(tmp_path):
    assert not load(write(tmp_path, GOOD_HA + "gre = false\n" + GOOD_MN)).gre


@pytest.mark.parametrize(("text", "key", "words"), [
    ("", "home_agent", "is required"),
    ('[home_agent]\naddress = "10.20.1.1"\n', "home_agent.home_network", "is required"),
    (GOOD_HA.replace('"10.20.1.1"', '"10.20.1.300"'), "home_agent.address", "not an IPv4"),
    (GOOD_HA.replace('"10.20.1.1"', '"10.9.9.9"'), "home_agent.address", "not inside"),
    (GOOD_HA.replace("/24", "/33"), "home_agent.home_network", "not an IPv4 network"),
    (GOOD_HA.replace("10.20.1.0/24", "10.20.1.1/24"), "home_agent.home_network",
     "host bits"),
    (GOOD_HA + "port = 70000\n", "home_agent.port", "between 1 and 65535"),
    (GOOD_HA + 'port = "434"\n', "home_agent.port", "must be an integer"),
    (GOOD_HA + "max_lifetime = 0\n", "home_agent.max_lifetime", "between 1"),
    (GOOD_HA + 'dataplane = "magic"\n', "home_agent.dataplane", "must be one of"),
    (GOOD_HA + "max_liftime = 5\n", "home_agent.max_liftime", "not a known setting"),
    (GOOD_HA + "udp_tunnelling = 1\n", "home_agent.udp_tunnelling", "true or false"),
    (GOOD_HA + 'gre = "off"\n', "home_agent.gre", "true or false"),
    (GOOD_HA, "mobile_nodes", "no [[mobile_nodes]]"),
    (GOOD_HA + GOOD_MN.replace("spi = 256", "spi = 7"), "mobile_nodes[0].spi", "reserved"),
    (GOOD_HA + GOOD_MN.replace("hex:0011", "hex:zz11"), "mobile_nodes[0].key", "not hex"),
    (GOOD_HA + GOOD_MN.replace("hex:", ""), "mobile_nodes[0].key", "must start with 'hex:'"),
    (GOOD_HA + GOOD_MN.replace("aabbccddeeff", ""), "mobile_nodes[0].key", "is 10 bytes"),
    (GOOD_HA + GOOD_MN + 'key_file = "x"\n', "mobile_nodes[0].key", "not both"),
    (GOOD_HA + GOOD_MN.replace('key = "hex:00112233445566778899aabbccddeeff"',
                               'key_file = "missing.key"'),
     "mobile_nodes[0].key_file", "cannot read"),
    (GOOD_HA + GOOD_MN + GOOD_MN, "mobile_nodes[1].home_address", "already used by"),
    (GOOD_HA + GOOD_MN.replace("10.20.1.10", "10.20.1.1"), "mobile_nodes[0].home_address",
     "home agent's own address"),
    (GOOD_HA + GOOD_MN.replace("10.20.1.10", "10.20.2.10"), "mobile_nodes[0].home_address",
     "not inside"),
    (GOOD_HA + GOOD_MN + 'algorithm = "sha1"\n', "mobile_nodes[0].algorithm", "one of"),
    (GOOD_HA + GOOD_MN + 'nai = "a@b"\n' + GOOD_MN.replace("10.20.1.10", "10.20.1.11")
     + 'nai = "a@b"\n', "mobile_nodes[1].nai", "already used"),
])
def test_errors_name_the_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.key == key
    assert words in err.value.message
    assert str(err.value).startswith(f"{path}: {key}: ")
    assert "00112233445566778899" not in str(err.value)


def test_syntax_error_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(write(tmp_path, "[home_agent\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")


def test_key_file_relative_to_config(tmp_path):
    (tmp_path / "alice.key").write_text("hex:00112233445566778899aabbccddeeff\n")
    cfg = load(write(tmp_path, GOOD_HA + GOOD_MN.replace(
        'key = "hex:00112233445566778899aabbccddeeff"', 'key_file = "alice.key"')))
    assert cfg.mobile_nodes[0].key == bytes.fromhex("00112233445566778899aabbccddeeff")
