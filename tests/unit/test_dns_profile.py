"""A profile's ``[dns]`` table (issue 19): optional, every bad value named by its key,
and read back as written by SaveProfile's ``dumps``."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from app.config import ConfigError
from app.mn import profile as profiles
from app.net.dns_profile import DnsConfig

BASE = """home_address = "10.20.1.10"
home_network = "10.20.1.0/24"
home_agent = "10.20.1.1"
spi = 256
name = "corp"
"""


def test_dns_table_is_optional():
    assert profiles.loads(BASE).dns is None


def test_dns_servers_and_domains_are_read():
    p = profiles.loads(BASE + '[dns]\nservers = ["10.0.0.1", "10.0.0.2"]\n'
                              'domains = ["corp.example", "Lab.Corp.Example."]\n')
    assert p.dns == DnsConfig((IPv4Address("10.0.0.1"), IPv4Address("10.0.0.2")),
                              ("corp.example", "lab.corp.example"))


@pytest.mark.parametrize(("table", "key", "words"), [
    ('servers = "10.0.0.1"', "dns.servers", "array of strings"),
    ('servers = ["10.0.0.300"]', "dns.servers", "not an IPv4 address"),
    ('servers = ["127.0.0.53"]', "dns.servers", "loopback"),
    ('servers = ["0.0.0.0"]', "dns.servers", "unspecified"),
    ('servers = ["10.0.0.1", "10.0.0.1"]', "dns.servers", "listed twice"),
    ('servers = [1]', "dns.servers", "array of strings"),
    ('domains = ["corp..example"]', "dns.domains", "not a domain name"),
    ('domains = ["-corp.example"]', "dns.domains", "not a domain name"),
    ('domains = ["corp example"]', "dns.domains", "not a domain name"),
    ('domains = [""]', "dns.domains", "empty"),
    ('domain = ["corp.example"]', "dns.domain", "not a known setting"),
])
def test_a_bad_dns_value_is_refused_naming_its_key(table, key, words):
    with pytest.raises(ConfigError) as err:
        profiles.loads(BASE + "[dns]\n" + table + "\n")
    assert err.value.key == key
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_dns_table_reads_back_as_saved():
    p = profiles.loads(BASE + '[dns]\nservers = ["10.0.0.1"]\ndomains = ["corp.example"]\n')
    assert profiles.loads(profiles.dumps(p)) == p
    empty = profiles.loads(BASE + "[dns]\n")
    assert empty.dns == DnsConfig()
    assert profiles.loads(profiles.dumps(empty)) == empty
