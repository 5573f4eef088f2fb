"""The charon adapter against a fake VICI server: off-loop calls with timeouts, a clear
"not reachable" naming the socket, reconnect with reload, secrets kept out of errors."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
import threading
from collections.abc import AsyncIterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from app.vpn.charon import Charon, VpnCommandError, VpnConfigError, VpnUnreachableError
from app.vpn.events import (
    CHILD_CLOSED,
    DownKind,
    VpnDown,
    VpnEvent,
    VpnServiceUp,
    VpnUnreachable,
    VpnUp,
)
from app.vpn.profile import AuthMethod, VpnConfig
from tests.fake_vici import FakeVici
from tests.requirements import require
from tests.unit import vici_events as ev

CFG = VpnConfig(gateways=("172.16.0.11", "172.16.0.12"), identity="mn@lab",
                intranet=(IPv4Network("10.0.0.0/8"),))
SECRET = "correct-horse-battery"


class Ticker:
    """Counts loop iterations of a 10 ms timer: a blocked loop stops counting."""

    def __init__(self) -> None:
        self.ticks = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.ticks += 1


class Events:
    def __init__(self) -> None:
        self.seen: list[VpnEvent] = []
        self.queue: asyncio.Queue[VpnEvent] = asyncio.Queue()

    def __call__(self, e: VpnEvent) -> None:
        self.seen.append(e)
        self.queue.put_nowait(e)

    async def next(self, kind: type, timeout: float = 5.0) -> VpnEvent:
        async with asyncio.timeout(timeout):
            while True:
                e = await self.queue.get()
                if isinstance(e, kind):
                    return e


@pytest.fixture
async def ticker() -> AsyncIterator[Ticker]:
    t = Ticker()
    yield t
    t.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await t.task


def adapter(path: object, events: Events, **kw: float) -> Charon:
    opts: dict[str, float] = {"call_timeout": 2.0, "backoff_min": 0.05, "backoff_max": 0.2}
    opts.update(kw)
    return Charon(str(path), events, **opts)


async def test_absent_charon_is_named_and_fails_fast(tmp_path, ticker):
    events = Events()
    sock = tmp_path / "charon.vici"
    a = adapter(sock, events)
    try:
        assert await a.start() is False
        gone = await events.next(VpnUnreachable)
        assert gone.message == f"VPN service not reachable at {sock}"  # type: ignore[attr-defined]
        with pytest.raises(VpnUnreachableError, match=f"VPN service not reachable at {sock}"):
            await a.load(CFG, {"vpn_psk": SECRET})
        with pytest.raises(VpnUnreachableError):
            await a.tia()
        # Retries back off: reported once, not once per attempt.
        await asyncio.sleep(0.5)
        assert sum(isinstance(e, VpnUnreachable) for e in events.seen) == 1
        # The profile given while charon was away goes in as soon as it starts.
        fake = FakeVici(sock)
        try:
            await events.next(VpnServiceUp)
            assert fake.names() == ["load-shared", "load-conn"]
        finally:
            fake.close()
    finally:
        await a.close()


async def test_a_hung_charon_never_blocks_the_loop(tmp_path, ticker):
    """Accepts, never answers: each call ends after its timeout with the socket named,
    and the loop's 10 ms timer keeps firing meanwhile."""
    fake = FakeVici(tmp_path / "charon.vici", silent=True)
    events = Events()
    a = adapter(fake.path, events, call_timeout=1.0)
    try:
        await a.start()
        before = ticker.ticks
        with pytest.raises(VpnUnreachableError, match="no answer to list-sas within 1 s"):
            await a.tia()
        assert ticker.ticks - before >= 20, "the event loop was blocked during the call"
        assert isinstance(await events.next(VpnUnreachable), VpnUnreachable)
    finally:
        await a.close()
        fake.close()


async def test_load_events_and_reconnect_with_reload(tmp_path, ticker):
    sock = tmp_path / "charon.vici"
    fake = FakeVici(sock)
    events = Events()
    a = adapter(sock, events)
    try:
        assert await a.start() is True
        await a.load(CFG, {"vpn_psk": SECRET})
        assert fake.names() == ["load-shared", "load-conn"]
        assert fake.commands[1][1]["trustroam"]["remote_addrs"] == [b"172.16.0.11"]
        fake.push("child-updown", ev.CHILD_UP[1])
        up = await events.next(VpnUp)
        assert up.tia is not None and str(up.tia) == "10.99.1.1"  # type: ignore[attr-defined]

        fake.close()  # charon killed: the listener sees the connection drop
        # The SA in use is reported down as a service loss (nothing of its gateway).
        assert await events.next(VpnDown) == VpnDown("VPN service stopped", 1,
                                                     DownKind.SERVICE)
        await events.next(VpnUnreachable)
        assert not a.reachable
        sock.unlink()
        fake = FakeVici(sock)  # charon restarted: empty, as after a crash
        back = await events.next(VpnServiceUp)
        assert back == VpnServiceUp(str(sock))
        # The profile went back into the new charon before VpnServiceUp.
        assert fake.names()[:2] == ["load-shared", "load-conn"]
        assert a.reachable
    finally:
        await a.close()
        fake.close()


async def test_initiate_tries_the_next_gateway(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    fake.replies["initiate"] = {"success": "no", "errmsg": "establishing CHILD_SA failed"}
    a = adapter(fake.path, Events())
    try:
        await a.start()
        await a.load(CFG, {"vpn_psk": SECRET})
        with pytest.raises(VpnCommandError, match="every VPN gateway is down") as exc:
            await a.initiate()
        loads = [m["trustroam"]["remote_addrs"] for c, m in fake.commands if c == "load-conn"]
        assert loads == [[b"172.16.0.11"], [b"172.16.0.12"]]
        assert "172.16.0.11: charon refused initiate" in str(exc.value)
        assert fake.names().count("terminate") == 2, "a failed gateway is not left retrying"
    finally:
        await a.close()
        fake.close()


async def test_terminate_aborts_a_pending_initiate_without_queueing_behind_it(tmp_path):
    """A direct reply (trusted) while the VPN is still connecting: terminate returns
    while initiate is pending, and the initiate stops instead of trying gateway 2."""
    fake = FakeVici(tmp_path / "charon.vici")
    fake.hold["initiate"] = threading.Event()
    fake.replies["initiate"] = {"success": "no", "errmsg": "establishing CHILD_SA failed"}
    a = adapter(fake.path, Events(), ike_timeout=5.0)
    try:
        await a.start()
        await a.load(CFG, {"vpn_psk": SECRET})
        pending = asyncio.get_running_loop().create_task(a.initiate())
        while "initiate" not in fake.names():
            await asyncio.sleep(0.01)  # the fake records commands; nothing to await
        assert await a.tia() is None  # status reads do not wait behind it either
        await a.terminate()
        assert not pending.done() and fake.names()[-1] == "terminate"
        fake.hold["initiate"].set()  # charon answers: initiation aborted
        with pytest.raises(VpnCommandError, match="terminated while connecting"):
            await pending
        loads = [m["trustroam"]["remote_addrs"] for c, m in fake.commands if c == "load-conn"]
        assert loads == [[b"172.16.0.11"]], "no second gateway after terminate"
    finally:
        await a.close()
        fake.close()


async def test_secrets_stay_out_of_errors_and_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    fake = FakeVici(tmp_path / "charon.vici")
    fake.replies["load-shared"] = {"success": "no", "errmsg": f"bad secret {SECRET}"}
    a = adapter(fake.path, Events())
    try:
        await a.start()
        with pytest.raises(VpnCommandError) as exc:
            await a.load(CFG, {"vpn_psk": SECRET})
        assert SECRET not in str(exc.value) and "***" in str(exc.value)
        with pytest.raises(VpnConfigError, match="vpn_psk: missing") as missing:
            await a.load(CFG, {"vpn_password": SECRET})
        assert SECRET not in str(missing.value)
        fake.replies.clear()
        await a.load(CFG, {"vpn_psk": SECRET})
        assert ("load-shared", {"id": b"trustroam-psk", "type": b"IKE",
                                "data": SECRET.encode(),
                                "owners": [b"mn@lab", b"172.16.0.11", b"172.16.0.12"]}
                ) in fake.commands
        assert SECRET not in caplog.text
    finally:
        await a.close()
        fake.close()


async def test_terminate_without_a_tunnel_is_no_error(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    fake.replies["terminate"] = {"success": "no", "errmsg": "no matching SAs to terminate found"}
    a = adapter(fake.path, Events())
    try:
        await a.start()
        await a.terminate()
        assert fake.commands[-1] == ("terminate", {"ike": b"trustroam", "timeout": b"1000",
                                                   "force": b"yes"})
    finally:
        await a.close()
        fake.close()


def _keypair(tmp_path, passphrase: str | None) -> tuple[Path, Path]:
    key, cert = tmp_path / "mn.key", tmp_path / "mn.pem"
    enc = ["-aes256", "-pass", f"pass:{passphrase}"] if passphrase else []
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key), *enc],
                   check=True, capture_output=True)
    cert.write_text("-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n")
    return key, cert


async def test_pubkey_loads_the_decrypted_key_and_the_certificate(tmp_path):
    require(shutil.which("openssl") is not None, "openssl is not installed (install-deps)")
    key, cert = _keypair(tmp_path, SECRET)
    assert b"ENCRYPTED" in key.read_bytes()
    cfg = VpnConfig(gateways=("172.16.0.11",), identity="mn@lab",
                    auth=AuthMethod.PUBKEY, cert_file=cert, key_file=key, ca_file=cert)
    fake = FakeVici(tmp_path / "charon.vici")
    a = adapter(fake.path, Events())
    try:
        await a.start()
        with pytest.raises(VpnConfigError, match="vpn_key_passphrase: missing"):
            await a.load(cfg, {})
        with pytest.raises(VpnConfigError, match=r"vpn\.key_file: cannot decrypt") as exc:
            await a.load(cfg, {"vpn_key_passphrase": "wrong-" + SECRET})
        assert SECRET not in str(exc.value)
        await a.load(cfg, {"vpn_key_passphrase": SECRET})
        assert fake.names() == ["load-key", "load-conn"]
        sent = fake.commands[0][1]
        assert sent["type"] == b"any" and b"BEGIN PRIVATE KEY" in sent["data"]
        assert b"ENCRYPTED" not in sent["data"]
        conn = fake.commands[1][1]["trustroam"]
        assert conn["local"]["certs"] == [cert.read_bytes()]
        assert conn["remote"]["cacerts"] == [cert.read_bytes()]
    finally:
        await a.close()
        fake.close()


async def test_unreadable_files_are_named(tmp_path):
    cfg = VpnConfig(gateways=("172.16.0.11",), identity="mn@lab",
                    auth=AuthMethod.EAP_MSCHAPV2, ca_file=tmp_path / "nope.pem")
    a = adapter(tmp_path / "charon.vici", Events())
    try:
        with pytest.raises(VpnConfigError, match=r"vpn.ca_file: .*nope.pem does not exist"):
            await a.load(cfg, {"vpn_password": SECRET})
    finally:
        await a.close()


# -- Disconnect and stop leave nothing of ours in charon (security review 2026-12-07, 8) --

def _sent(fake: FakeVici, name: str) -> list[dict]:
    return [m for c, m in fake.commands if c == name]


async def test_close_unloads_the_connection_and_the_shared_secret(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    a = adapter(fake.path, Events())
    try:
        await a.start()
        await a.load(CFG, {"vpn_psk": SECRET})
        # The driver's stop: terminate, then close; the helper closes it once more.
        await a.terminate()
        await a.close()
        await a.close()
        assert _sent(fake, "unload-conn") == [{"name": b"trustroam"}]
        assert _sent(fake, "unload-shared") == [{"id": b"trustroam-psk"}]
        assert fake.names()[-2:] == ["unload-conn", "unload-shared"]
    finally:
        await a.close()
        fake.close()


async def test_close_unloads_the_private_key_by_the_id_charon_gave(tmp_path):
    require(shutil.which("openssl") is not None, "openssl is not installed (install-deps)")
    key, cert = _keypair(tmp_path, None)
    cfg = VpnConfig(gateways=("172.16.0.11",), identity="mn@lab",
                    auth=AuthMethod.PUBKEY, cert_file=cert, key_file=key)
    fake = FakeVici(tmp_path / "charon.vici")
    fake.replies["load-key"] = {"success": "yes", "id": "00aabbcc"}
    a = adapter(fake.path, Events())
    try:
        await a.start()
        await a.load(cfg, {})
        await a.close()
        assert _sent(fake, "unload-key") == [{"id": b"00aabbcc"}]
        assert _sent(fake, "unload-conn") == [{"name": b"trustroam"}]
        assert _sent(fake, "unload-shared") == []  # pubkey loads no shared secret
    finally:
        await a.close()
        fake.close()


async def test_close_with_charon_gone_still_ends(tmp_path):
    fake = FakeVici(tmp_path / "charon.vici")
    a = adapter(fake.path, Events())
    await a.start()
    await a.load(CFG, {"vpn_psk": SECRET})
    fake.close()
    await a.close()  # the unload fails (not reachable); close ends all the same
    assert "unload-conn" not in fake.names()


def _child_closed(child_id: int) -> dict[str, object]:
    """child-updown (down) of CHILD SA ``child_id`` while IKE SA 1 stays ESTABLISHED."""
    ike = dict(ev.CHILD_DOWN[1]["trustroam"])  # type: ignore[arg-type]
    ike.update({"state": b"ESTABLISHED", "tasks-active": [b"CHILD_DELETE"],
                "child-sas": {f"intranet-{child_id}": {
                    "name": b"intranet", "uniqueid": str(child_id).encode(),
                    "state": b"DELETING", "local-ts": [b"10.99.1.1/32"],
                    "remote-ts": [b"10.0.0.0/8"]}}})
    return {"trustroam": ike}


def _listed_installed() -> list[dict[str, object]]:
    """list-sas: IKE SA 1 ESTABLISHED with CHILD SA 3 INSTALLED."""
    ike = dict(ev.CHILD_UP[1]["trustroam"])  # type: ignore[arg-type]
    ike["state"] = b"ESTABLISHED"
    ike["child-sas"] = {"intranet-3": {
        "name": b"intranet", "uniqueid": b"3", "state": b"INSTALLED",
        "local-ts": [b"10.99.1.1/32"], "remote-ts": [b"10.0.0.0/8"]}}
    return [{"trustroam": ike}]


async def test_after_a_child_sa_closed_the_one_charon_still_lists_is_rekeyed(tmp_path):
    """A rekey collision after a MOBIKE move (both ends rekey with kernel-libipsec)
    where charon takes the peer's DELETE of the old CHILD SA as a plain close: it
    reports child-updown (down) and never installs the outbound SA of the peer's
    replacement, which it still lists INSTALLED (the lab's mc flake: registrations
    through it went unanswered).  The next initiate rekeys it (a fresh pair both
    ways) before using it; an initiate without such a close does not."""
    fake = FakeVici(tmp_path / "charon.vici")
    fake.streams["list-sas"] = _listed_installed()
    events = Events()
    a = adapter(fake.path, events)
    try:
        await a.start()
        await a.load(CFG, {"vpn_psk": SECRET})
        await a.initiate()  # the tunnel is up: used as is
        assert "rekey" not in fake.names()
        fake.push("child-updown", ev.CHILD_UP[1])
        await events.next(VpnUp)
        fake.push("child-updown", _child_closed(2))
        assert await events.next(VpnDown) == VpnDown(CHILD_CLOSED, 1, DownKind.CHILD)
        sa = await a.initiate()
        assert sa.ike_id == 1 and sa.up
        rekeys = [m for c, m in fake.commands if c == "rekey"]
        assert rekeys == [{"child": b"intranet", "ike-id": b"1"}], fake.commands
        await a.initiate()  # once
        assert fake.names().count("rekey") == 1
    finally:
        await a.close()
        fake.close()
