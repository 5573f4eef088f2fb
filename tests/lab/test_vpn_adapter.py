"""The VPN adapter (app/vpn) against the lab's REAL charon in the MN namespace:
load + initiate from pub gives a TIA from gateway 1's pool; the move pub -> nat is
MOBIKE only (same IKE SA, same TIA) in the adapter's event stream; terminate gives
VpnDown; a killed charon is reported (naming its socket) without blocking the loop,
and the adapter reconnects and reloads when charon is started again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from app.lab import charon as lab_charon
from app.lab.topology import MN
from app.lab.world import CHARON_DIR, Lab
from app.vpn.charon import Charon, VpnUnreachableError
from app.vpn.events import (
    ChildRekeyed,
    DownKind,
    MobikeUpdate,
    VpnDown,
    VpnEvent,
    VpnServiceUp,
    VpnUnreachable,
    VpnUp,
)
from app.vpn.profile import parse_table
from tests.lab.conftest import mn_address, ns_exec

SOCKET = lab_charon.directory(CHARON_DIR, MN) / "charon.vici"
POOL1 = IPv4Network("10.99.1.0/24")
POOL2 = IPv4Network("10.99.2.0/24")
PROFILE = f"""
[vpn]
gateways = ["172.16.0.11", "172.16.0.12"]
identity = "mn@lab"
auth = "psk"
dpd_delay = 2
intranet = ["{lab_charon.INTRANET_TS}"]
ike_proposals = ["aes128-sha256-x25519"]
esp_proposals = ["aes128gcm16-x25519"]
"""


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[float, VpnEvent]] = []
        self.queue: asyncio.Queue[VpnEvent] = asyncio.Queue()

    def __call__(self, e: VpnEvent) -> None:
        self.seen.append((time.monotonic(), e))
        self.queue.put_nowait(e)

    async def next(self, kind: type, timeout: float = 15.0) -> VpnEvent:
        async with asyncio.timeout(timeout):
            while True:
                e = await self.queue.get()
                if isinstance(e, kind):
                    return e


class Ticker:
    """A 10 ms loop timer; ``max_gap`` is the longest the loop went without running it."""

    def __init__(self) -> None:
        self.ticks = 0
        self.max_gap = 0.0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            last = now
            self.ticks += 1


@pytest.fixture
async def ticker() -> AsyncIterator[Ticker]:
    t = Ticker()
    yield t
    t.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await t.task


def ping_intranet(tia: IPv4Address) -> bool:
    out = ns_exec(MN, "ping", "-c2", "-i0.2", "-W3", "-I", str(tia), "10.20.1.99")
    return out.returncode == 0


async def test_vpn_adapter_on_real_charon(lab: Lab, ticker: Ticker) -> None:
    import tomllib
    cfg = parse_table(tomllib.loads(PROFILE)["vpn"], "lab.toml",
                      IPv4Network("10.20.1.0/24"))
    await asyncio.to_thread(lab.move, "pub")
    await asyncio.to_thread(mn_address, 10.0, "203.0.113.")
    events = Events()
    a = Charon(SOCKET, events, call_timeout=2.0, ike_timeout=10.0, backoff_min=0.1,
               backoff_max=0.5)
    try:
        assert await a.start() is True
        await a.load(cfg, {"vpn_psk": lab_charon.LAB_PSK})

        # Up from the public network: a TIA from gateway 1's pool, through the events too.
        sa = await a.initiate()
        up = await events.next(VpnUp)
        assert isinstance(up, VpnUp)
        assert up.tia is not None and up.tia in POOL1 and up.tia == sa.tia
        assert str(up.gateway.host) == "172.16.0.11" and a.gateway == "172.16.0.11"
        assert str(up.local.host).startswith("203.0.113.") and not up.nat_detected
        assert await a.tia() == up.tia
        assert await asyncio.to_thread(ping_intranet, up.tia)

        # pub -> nat: MOBIKE moves the same IKE SA; the TIA stays (RFC 5266 3.3).
        await asyncio.to_thread(lab.move, "nat")
        await asyncio.to_thread(mn_address, 10.0, "192.168.50.")
        moved = await events.next(MobikeUpdate)
        assert isinstance(moved, MobikeUpdate)
        assert moved.ike_id == up.ike_id
        assert str(moved.local.host).startswith("192.168.50.")
        assert str(moved.remote.host) == "172.16.0.11"
        # ike-update fires when charon switches addresses, before the MOBIKE exchange
        # (with its NAT detection) completes; with kernel-libipsec charon then rekeys
        # the CHILD SA (new SPIs, same TIA): by that event the exchange is done.
        await events.next(ChildRekeyed)
        assert not any(isinstance(e, VpnDown | VpnUp) for _, e in events.seen[1:])
        after = await a.sa()
        assert after is not None and after.up and after.ike_id == up.ike_id
        assert after.tia == up.tia and after.nat_detected, "behind the lab's NAT now"
        assert await asyncio.to_thread(ping_intranet, up.tia)

        # terminate: VpnDown, no tunnel left.
        await a.terminate()
        down = await events.next(VpnDown)
        assert down == VpnDown("terminated", up.ike_id, DownKind.TERMINATED)
        assert await a.tia() is None

        # Up again, then charon dies under the adapter.
        await a.initiate()
        up2 = await events.next(VpnUp)
        assert isinstance(up2, VpnUp)
        ticks = ticker.ticks
        killed = time.monotonic()
        await asyncio.to_thread(lab.kill_charon, MN)
        lost = await events.next(VpnDown, timeout=5.0)
        gone = await events.next(VpnUnreachable, timeout=5.0)
        reported = time.monotonic() - killed
        assert lost == VpnDown("VPN service stopped", up2.ike_id, DownKind.SERVICE)
        assert gone == VpnUnreachable(f"VPN service not reachable at {SOCKET}")
        assert not a.reachable
        with pytest.raises(VpnUnreachableError, match=f"not reachable at {SOCKET}"):
            await a.initiate()
        # The loop kept running the whole time (a 10 ms timer kept firing).
        assert ticker.ticks > ticks
        assert ticker.max_gap < 0.5, f"event loop stalled {ticker.max_gap:.3f} s"

        # charon back (started as the lab starts it): the adapter reconnects, reloads
        # the profile by itself, and the tunnel can come up again.
        await asyncio.to_thread(lab.start_charon, MN)
        await events.next(VpnServiceUp, timeout=10.0)
        assert a.reachable
        await a.initiate()
        up3 = await events.next(VpnUp)
        assert isinstance(up3, VpnUp) and up3.tia is not None and up3.tia in POOL1
        await a.terminate()
        await events.next(VpnDown)

        # Gateways in order: a silent first gateway costs one initiate timeout, is
        # not left retrying, and the second one gives a TIA from its own pool.
        silent_first = replace(cfg, gateways=("172.16.0.99", "172.16.0.12"))
        a.ike_timeout = 2.0
        await a.load(silent_first, {"vpn_psk": lab_charon.LAB_PSK})
        sa2 = await a.initiate()
        assert a.gateway == "172.16.0.12"
        assert sa2.tia is not None and sa2.tia in POOL2
        listing = await a._call("list-sas", lambda s: list(s.list_sas()), 5.0)
        assert [str(ike[name]["remote-host"], "ascii") for ike in listing for name in ike
                ] == ["172.16.0.12"], "the silent gateway's IKE SA was left behind"
        print(f"unreachable reported {reported * 1000:.0f} ms after the kill; "
              f"longest loop gap {ticker.max_gap * 1000:.0f} ms")
        await a.terminate()
    finally:
        await a.close()


def charon_holds() -> dict[str, str]:
    """What the MN's charon holds, asked as an administrator would (swanctl), and the
    shared-secret ids it holds over VICI (swanctl has no listing of those)."""
    import socket

    import vici
    conns = ns_exec(MN, *lab_charon.swanctl(SOCKET.parent, "--list-conns"), timeout=30)
    sas = ns_exec(MN, *lab_charon.swanctl(SOCKET.parent, "--list-sas"), timeout=30)
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as raw:
        raw.connect(str(SOCKET))
        s = vici.Session(raw)
        shared = b" ".join(s.get_shared().get("keys", [])).decode()
        keys = b" ".join(s.get_keys().get("keys", [])).decode()
    return {"conns": conns.stdout, "sas": sas.stdout, "shared": shared, "keys": keys}


async def test_disconnect_leaves_no_connection_or_secret_in_charon(lab: Lab) -> None:
    """Security review 2026-12-07, finding 8: the driver's stop (terminate, then close)
    unloads our connection and the PSK from the real charon."""
    import tomllib
    cfg = parse_table(tomllib.loads(PROFILE)["vpn"], "lab.toml",
                      IPv4Network("10.20.1.0/24"))
    await asyncio.to_thread(lab.move, "pub")
    await asyncio.to_thread(mn_address, 10.0, "203.0.113.")
    events = Events()
    a = Charon(SOCKET, events, call_timeout=2.0, ike_timeout=10.0)
    try:
        assert await a.start() is True
        await a.load(cfg, {"vpn_psk": lab_charon.LAB_PSK})
        await a.initiate()
        await events.next(VpnUp)
        held = await asyncio.to_thread(charon_holds)
        assert "trustroam:" in held["conns"] and "trustroam-psk" in held["shared"]
        # What Disconnect or the helper's stop does: the driver terminates, the helper closes.
        await a.terminate()
        await a.close()
        held = await asyncio.to_thread(charon_holds)
        assert "trustroam" not in held["conns"], held["conns"]
        assert "trustroam" not in held["sas"], held["sas"]
        assert held["shared"] == "" and held["keys"] == "", held
    finally:
        await a.close()
