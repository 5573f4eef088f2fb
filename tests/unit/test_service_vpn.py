"""The helper's VPN plumbing (issue 12): a profile's [vpn] secrets fetched with the
MN-HA key, charon's adapter on the configured socket handed to the driver and
closed with it, the user's policy applied at once, and the gateways in the gate."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
from ipaddress import IPv4Address
from typing import Any, ClassVar

import pytest

from app.api import Policy
from app.net.mn_routes import Backend
from app.service import helper as helper_mod
from app.service.helper import Helper, HelperError
from app.service.profiles import gate_policy, resolve_gateways, vpn_secret_names
from app.service.secrets import SecretError, SecretSource
from app.vpn.charon import VpnConfigError
from app.vpn.profile import VpnConfig
from tests.unit.test_service_helper import KEY, PROFILE, fakes

PSK = "corp-psk-value"
VPN = """
[vpn]
gateways = ["172.16.0.11", "vpn2.corp.example"]
identity = "alice@corp.example"
"""


class FakeCharon:
    made: ClassVar[list[FakeCharon]] = []

    reachable = False
    unreachable_message = "VPN service not reachable"

    def __init__(self, socket_path, on_event=None, **kw):
        self.path, self.closed = str(socket_path), 0
        FakeCharon.made.append(self)

    async def start(self):
        return self.reachable

    async def close(self):
        self.closed += 1


class Gate:
    policies: ClassVar[list[Any]] = []

    def __init__(self, policy):
        Gate.policies.append(policy)

    async def install(self):
        pass

    async def remove(self):
        pass


@pytest.fixture
def world(monkeypatch, tmp_path):
    live = fakes(monkeypatch, random.Random(0))
    FakeCharon.made, Gate.policies = [], []
    monkeypatch.setattr(helper_mod, "Charon", FakeCharon)
    monkeypatch.setattr(helper_mod, "TrafficGate", Gate)
    names = {"vpn2.corp.example": ["172.16.0.12"]}

    async def getaddrinfo(loop, host, port, *, family=0, type=0, **kw):
        assert family == socket.AF_INET
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, type, 17, "", (a, 0)) for a in names[host]]

    # Every loop's resolver: no test here may depend on the machine's DNS.
    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "corp.toml").write_text(PROFILE + VPN)
    (d / "plain.toml").write_text(PROFILE)
    (d / "nopsk.toml").write_text(PROFILE + VPN)
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'[corp]\nmn_ha_key = "hex:{KEY}"\nvpn_psk = "{PSK}"\n'
                       f'[plain]\nmn_ha_key = "hex:{KEY}"\n'
                       f'[nopsk]\nmn_ha_key = "hex:{KEY}"\n')
    secrets.chmod(0o600)
    h = Helper(profiles_dir=d, extra_profiles=[], secrets=SecretSource(None, secrets),
               backend=Backend.USERSPACE, links="rtnetlink", vici_socket="/tmp/x/charon.vici")
    return h, live, names


async def test_a_vpn_profile_gets_charon_on_the_socket_and_its_secrets(world):
    h, live, _ = world
    h.set_policy("always-vpn")
    await h.connect("corp")
    driver = live.made[-1]
    assert isinstance(driver.charon, FakeCharon) and driver.charon.path == "/tmp/x/charon.vici"
    assert dict(driver.vpn_secrets) == {"vpn_psk": PSK}
    assert driver.policy is Policy.ALWAYS_VPN
    assert PSK not in repr(driver.vpn_secrets)


async def test_a_profile_without_vpn_gets_no_charon_and_no_vpn_secret(world):
    h, live, _ = world
    await h.connect("plain")
    driver = live.made[-1]
    assert driver.charon is None and dict(driver.vpn_secrets) == {}
    assert FakeCharon.made == []
    assert Gate.policies[-1].gateways == ()


async def test_a_missing_vpn_secret_refuses_connect_naming_key_and_profile(world):
    h, live, _ = world
    with pytest.raises(SecretError) as exc:
        await h.connect("nopsk")
    text = str(exc.value)
    assert text.startswith("no vpn_psk for profile 'nopsk': ") and "\n" not in text
    assert PSK not in text and KEY not in text
    assert live.made == [] and FakeCharon.made == []  # nothing started


async def test_charon_is_closed_with_its_driver(world):
    h, _, _ = world
    await h.connect("corp")
    first = FakeCharon.made[-1]
    await h.connect("corp")  # replaced
    assert first.closed == 1
    second = FakeCharon.made[-1]
    await h.connect("plain")  # replaced by a profile without VPN
    assert second.closed == 1
    await h.connect("corp")
    await h.disconnect()
    assert [c.closed for c in FakeCharon.made] == [1, 1, 1]


async def test_policy_reaches_the_running_driver_at_once(world):
    h, live, _ = world
    await h.connect("corp")
    h.set_policy("never-vpn")
    h.set_policy("auto")
    assert live.made[-1].policies == [Policy.NEVER_VPN, Policy.AUTO]
    assert h.snapshot.policy is Policy.AUTO


async def test_rfc5266_3_4_gate_passes_ike_to_every_gateway_name_resolved(world):
    h, _, names = world
    names["vpn2.corp.example"] = ["172.16.0.12", "172.16.0.11"]
    await h.connect("corp")
    assert Gate.policies[-1].gateways == (IPv4Address("172.16.0.11"),
                                          IPv4Address("172.16.0.12"))


async def test_a_gateway_name_that_does_not_resolve_is_history_not_failure(world, caplog):
    h, live, names = world
    del names["vpn2.corp.example"]
    await h.connect("corp")
    assert live.made and Gate.policies[-1].gateways == (IPv4Address("172.16.0.11"),)
    entry = next(e for e in h.history if e.kind == "vpn-gateway-unresolved")
    assert entry.details["gateway"] == "vpn2.corp.example"
    assert entry.details["profile"] == "corp"
    assert "does not resolve" in entry.details["reason"]
    assert "vpn2.corp.example" in caplog.text


async def test_a_resolver_that_hangs_is_bounded(monkeypatch):
    async def never(*a, **kw):
        await asyncio.Event().wait()

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", never)
    seen = []
    got = await resolve_gateways(["slow.example", "192.0.2.7", "2001:db8::1"],
                                 on_unresolved=lambda n, why: seen.append((n, why)),
                                 timeout=0.05)
    assert got == (IPv4Address("192.0.2.7"),)
    why = dict(seen)
    assert sorted(why) == ["2001:db8::1", "slow.example"]
    assert "within 0.05 s" in why["slow.example"] and "IPv4 only" in why["2001:db8::1"]


async def test_gate_policy_without_vpn_has_no_gateways(world):
    h, _, _ = world
    policy = await gate_policy(h.profile("plain"))
    assert policy.gateways == () and policy.home_agent == IPv4Address("10.20.1.1")


async def test_an_encrypted_private_key_asks_for_its_passphrase(tmp_path):
    plain, enc = tmp_path / "plain.key", tmp_path / "enc.key"
    plain.write_bytes(b"-----BEGIN PRIVATE KEY-----\nMC4=\n-----END PRIVATE KEY-----\n")
    enc.write_bytes(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMC4=\n"
                    b"-----END ENCRYPTED PRIVATE KEY-----\n")
    plain.chmod(0o600)
    enc.chmod(0o600)
    (tmp_path / "c.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nMA==\n"
                                     b"-----END CERTIFICATE-----\n")
    from app.vpn.profile import AuthMethod

    def cfg(key):
        return VpnConfig(("192.0.2.7",), "alice", AuthMethod.PUBKEY,
                         cert_file=tmp_path / "c.pem", key_file=key)

    assert await vpn_secret_names(cfg(plain)) == ()
    assert await vpn_secret_names(cfg(enc)) == ("vpn_key_passphrase",)
    with pytest.raises(VpnConfigError, match=r"^vpn\.key_file: .*missing\.key does not exist"):
        await vpn_secret_names(cfg(tmp_path / "missing.key"))
    assert await vpn_secret_names(VpnConfig(("192.0.2.7",), "alice",
                                            AuthMethod.EAP_MSCHAPV2)) == ("vpn_password",)
    assert await vpn_secret_names(None) == ()


def test_trustroamd_takes_the_vici_socket_default_the_systems_charon():
    from app.service.daemon import parse_args
    assert parse_args([]).vici_socket == "/run/charon.vici"
    assert parse_args(["--vici-socket", "/x/charon.vici"]).vici_socket == "/x/charon.vici"


async def test_the_start_up_gate_of_a_vpn_profile_passes_its_gateways(monkeypatch, tmp_path):
    from app.service import daemon
    installed = []

    class StartGate:
        def __init__(self, policy):
            self.policy = policy

        async def install(self):
            installed.append(self.policy)

    monkeypatch.setattr(daemon, "TrafficGate", StartGate)
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "corp.toml").write_text(PROFILE + VPN.replace('"vpn2.corp.example"', '"192.0.2.9"'))
    args = daemon.parse_args(["--profiles-dir", str(d)])
    assert await daemon._gate_first(args, "corp")
    assert installed[0].gateways == (IPv4Address("172.16.0.11"), IPv4Address("192.0.2.9"))


async def test_the_lab_vpn_profile_loads_and_its_psk_comes_from_the_secrets_file(tmp_path):
    from app.lab import configs
    from app.lab.charon import GATEWAYS, LAB_PSK
    from app.mn import profile as profiles
    d, secrets = configs.write_helper_files(tmp_path, "corp", vpn_gateways=("172.16.0.11",),
                                            keep_alive_inside=True)
    p = profiles.load(d / "corp.toml")
    assert p.vpn is not None and p.vpn.gateways == (GATEWAYS[0].address,)
    assert p.vpn.keep_alive_inside and p.vpn.remote_id("172.16.0.11") == "172.16.0.11"
    got = await SecretSource(None, secrets).fetch("corp", None, p.vpn.secrets_needed)
    assert got.extra["vpn_psk"] == LAB_PSK
    # The default stays the trusted-side profile every earlier lab test uses.
    assert "[vpn]" not in configs.PROFILE_TOML
    assert profiles.loads('name = "x"\n' + configs.vpn_profile_toml()).vpn is not None


async def test_a_charon_whose_driver_never_came_to_be_is_closed_too(world, monkeypatch):
    h, _, _ = world

    def broken(*a, **kw):
        raise ValueError("driver refused")

    monkeypatch.setattr(helper_mod, "MobileNodeDriver", broken)
    with pytest.raises(ValueError):
        await h.connect("corp")
    await h.disconnect(quiet=True)
    assert [c.closed for c in FakeCharon.made] == [1]


def test_save_profile_keeps_the_vpn_table(world):
    h, _, _ = world
    sent = 'name = "roam"\n' + PROFILE + VPN + 'auth = "eap-mschapv2"\nkeep_alive_inside = true\n'
    assert h.save_profile(sent) == "roam"
    stored = h.profile("roam")
    assert stored.vpn is not None and stored.vpn.keep_alive_inside
    assert stored.vpn.gateways == ("172.16.0.11", "vpn2.corp.example")


async def test_connect_refuses_a_fifo_named_by_the_profile_before_the_lock(world, tmp_path):
    """Security review 2026-12-07, finding 6: a FIFO as ca_file held the helper's lock
    (and every later Disconnect) for ever; now Connect answers at once, naming the key."""
    h, live, _ = world
    fifo = tmp_path / "ca.fifo"
    os.mkfifo(fifo, 0o644)
    (h.profiles_dir / "fifo.toml").write_text(
        PROFILE + VPN + f'auth = "eap-mschapv2"\nca_file = "{fifo}"\n')
    try:
        with pytest.raises(VpnConfigError) as exc:
            await asyncio.wait_for(h.connect("fifo"), 10)
        assert str(exc.value) == f"vpn.ca_file: {fifo} is not a regular file"
        assert not h._lock.locked() and live.made == [] and FakeCharon.made == []
    finally:
        with contextlib.suppress(OSError):  # release a reader that did block
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_save_profile_refuses_any_identity_and_weak_proposals_naming_the_key(world):
    h, _, _ = world
    for extra, key in (('remote_identity = "%any"\n', "vpn.remote_identity"),
                       ('esp_proposals = ["null-sha1"]\n', "vpn.esp_proposals[0]"),
                       ('ike_proposals = ["3des-md5-modp768"]\n', "vpn.ike_proposals[0]"),
                       ('auth = "eap-md5"\n', "vpn.auth")):
        with pytest.raises(HelperError) as exc:
            h.save_profile('name = "weak"\n' + PROFILE + VPN + extra)
        assert str(exc.value).startswith(f"SaveProfile: {key}: "), str(exc.value)
    assert not (h.profiles_dir / "weak.toml").exists()
