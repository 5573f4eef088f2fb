"""One owner per resource (issue 18, code review R3): the helper creates the gate, the
routes, charon, the driver and the link source; it starts them in that order and
closes each once, in reverse order.  The real driver runs here on fakes of the rest:
it uses what it is handed and stops none of it."""

from __future__ import annotations

import asyncio

import pytest

from app.mn.driver import MobileNodeDriver
from app.net.mn_routes import Backend
from app.service import helper as helper_mod
from app.service.helper import Helper
from app.service.secrets import SecretSource
from tests.support.identities import ALICE_KEY_HEX as KEY
from tests.support.identities import ALICE_PROFILE as PROFILE

VPN = '\n[vpn]\ngateways = ["172.16.0.11"]\nidentity = "alice@corp.example"\n'


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    calls: list[str] = []

    class Gate:
        def __init__(self, policy):
            self.policy = policy

        async def install(self):
            calls.append("gate.install")

        async def decide(self, path, home_probe=None):
            calls.append("gate.decide")

        async def manage(self, iface):
            pass

        async def remove(self):
            calls.append("gate.remove")

    class Arp:
        permit = None

        def cancel_all(self):
            pass

    class Routes:
        def __init__(self, *a, **kw):
            self.arp = Arp()

        async def start(self):
            calls.append("routes.start")

        async def vpn_gateway(self, gw):
            calls.append("routes.vpn_gateway")

        async def vpn_source(self, tia):
            pass

        async def clear(self):
            calls.append("routes.clear")

        def close(self):
            calls.append("routes.close")

    class Charon:
        unreachable_message = "VPN service not reachable at /x"
        reachable = False
        gateway = None

        def __init__(self, socket_path, on_event=None, **kw):
            self.on_event = on_event

        async def start(self):
            calls.append("charon.start")
            return False

        async def terminate(self, *, wait=True):
            pass

        async def close(self):
            calls.append("charon.close")

    class Driver(MobileNodeDriver):
        async def start(self):
            calls.append("driver.start")
            await super().start()

        async def stop(self, **kw):
            calls.append("driver.stop")
            await super().stop(**kw)

    class Links:
        def __init__(self, iface, sink, ignore_address):
            pass

        async def start(self):
            calls.append("links.start")

        async def close(self):
            calls.append("links.close")

    monkeypatch.setattr(helper_mod, "TrafficGate", Gate)
    monkeypatch.setattr(helper_mod, "MobileNodeRoutes", Routes)
    monkeypatch.setattr(helper_mod, "Charon", Charon)
    monkeypatch.setattr(helper_mod, "MobileNodeDriver", Driver)
    monkeypatch.setattr(helper_mod, "RtnlLinks", Links)
    return calls


def helper(tmp_path) -> Helper:
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "corp.toml").write_text(PROFILE + VPN)
    secrets = tmp_path / "secrets.toml"
    secrets.write_text(f'[corp]\nmn_ha_key = "hex:{KEY}"\nvpn_psk = "psk"\n')
    secrets.chmod(0o600)
    return Helper(profiles_dir=d, extra_profiles=[], secrets=SecretSource(None, secrets),
                  backend=Backend.USERSPACE, links="rtnetlink")


STARTED = ["gate.install", "routes.start", "routes.vpn_gateway", "charon.start",
           "driver.start", "links.start"]
CLOSED = ["links.close", "driver.stop", "charon.close", "routes.clear", "routes.close",
          "gate.remove"]
LIFE = set(STARTED + CLOSED)


async def test_each_resource_is_closed_once_in_reverse_order_of_its_start(tmp_path, calls):
    h = helper(tmp_path)
    await h.connect("corp")
    await asyncio.sleep(0)  # the driver takes charon's "unreachable"
    await h.disconnect()
    assert [c for c in calls if c in LIFE] == STARTED + CLOSED


async def test_a_reconnect_closes_the_old_charon_once_and_keeps_the_gate(tmp_path, calls):
    """The next profile's gate replaces the old one; the old connection closes the
    rest once (charon was closed twice: by the driver, then by the helper)."""
    h = helper(tmp_path)
    await h.connect("corp")
    calls.clear()
    await h.connect("corp")
    assert [c for c in calls if c in LIFE] == [
        "gate.install", *CLOSED[:-1], "gate.install", *STARTED[1:]]
    await h.disconnect()
    assert calls.count("charon.close") == 2 and calls.count("gate.remove") == 1


async def test_a_connect_that_fails_half_way_is_closed_whole_by_the_next_disconnect(
        tmp_path, calls, monkeypatch):
    """Each resource is owned from its creation: the routes' start fails (netlink said
    no), and the Disconnect still takes back the routes, charon and the gate."""
    async def refused(self):
        calls.append("routes.start")
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(helper_mod.MobileNodeRoutes, "start", refused)
    h = helper(tmp_path)
    with pytest.raises(OSError):
        await h.connect("corp")
    await h.disconnect()
    assert [c for c in calls if c in LIFE] == [
        "gate.install", "routes.start", "driver.stop", "charon.close", "routes.clear",
        "routes.close", "gate.remove"]
