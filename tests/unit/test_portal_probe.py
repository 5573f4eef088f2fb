"""Captive portals (issue 19): the probe's verdicts, its URL's validation, the gate's
portal chains, and when the helper probes and what it reports."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address

import pytest

from app.api import Mode, Snapshot, State
from app.config import ConfigError
from app.net import portal_gate
from app.net.portal_probe import (
    DEFAULT_PROBE_URL,
    ONLINE,
    PORTAL,
    PORTAL_MARK,
    UNKNOWN,
    Verdict,
    classify,
    dns_addresses,
    dns_query,
    link_resolvers,
    parse_response,
    validate_probe_url,
)
from app.service.portal import PortalWatch, probe_key

TARGET = validate_probe_url(DEFAULT_PROBE_URL)
HOME = IPv4Address("10.20.1.10")


def _answer(text: str) -> Verdict:
    return classify(TARGET, parse_response(text.encode()))


def test_the_expected_text_is_online():
    assert _answer("HTTP/1.1 200 OK\r\nContent-Length: 25\r\n\r\nNetworkManager is online\n"
                   ).kind == ONLINE


def test_a_redirect_is_a_portal_at_its_target():
    v = _answer("HTTP/1.1 302 Found\r\nLocation: http://203.0.113.1/portal/login\r\n\r\n")
    assert (v.kind, v.portal_url) == (PORTAL, "http://203.0.113.1/portal/login")


def test_a_relative_redirect_is_made_absolute_against_the_probe_url():
    v = _answer("HTTP/1.1 307 Temporary Redirect\r\nLocation: /login?x=1\r\n\r\n")
    assert v.portal_url == "http://nmcheck.gnome.org/login?x=1"


def test_another_page_in_place_of_the_expected_text_is_a_portal_at_the_probe_url():
    v = _answer("HTTP/1.1 200 OK\r\n\r\n<html>Welcome to the hotel</html>")
    assert (v.kind, v.portal_url) == (PORTAL, DEFAULT_PROBE_URL)
    assert _answer("HTTP/1.1 511 Network Authentication Required\r\n\r\nsign in"
                   ).kind == PORTAL


def test_a_redirect_to_another_scheme_is_not_passed_on_to_the_tray():
    v = _answer("HTTP/1.1 302 Found\r\nLocation: javascript:alert(1)\r\n\r\n")
    assert (v.kind, v.portal_url) == (PORTAL, DEFAULT_PROBE_URL)
    v = _answer("HTTP/1.1 302 Found\r\nLocation: http://a/\x1b[2J\r\n\r\n")
    assert v.portal_url == DEFAULT_PROBE_URL


@pytest.mark.parametrize("location", [
    "https://accounts.google.com@evil.example/",  # a user part: shown as another site
    "https://user:pw@portal.example/",
    "http://portal.example/\x85login",  # C1 control from the header's Latin-1
    "http://portal.example/\xa0login",  # NBSP
    "http://portal.example/\xe9",
    "http://portal.example:99999/",
])
def test_a_redirect_with_a_user_part_or_anything_but_printable_ascii_is_unusable(location):
    # Review-portal finding 10.
    v = _answer(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\n\r\n")
    assert v.kind == PORTAL and v.portal_url == TARGET.url and "unusable" in v.detail


def test_a_server_error_is_unknown_and_garbage_is_refused():
    assert _answer("HTTP/1.1 503 Unavailable\r\n\r\n").kind == UNKNOWN
    with pytest.raises(ValueError):
        parse_response(b"SSH-2.0-OpenSSH\r\n")


def test_a_chunked_online_answer_is_online():
    assert _answer("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   "18\r\nNetworkManager is online\r\n0\r\n\r\n").kind == ONLINE


@pytest.mark.parametrize(("url", "why"), [
    ("https://nmcheck.gnome.org/x", "must be an http:// URL"),
    ("http:///x", "has no host"),
    ("http://user:pw@host/x", "user name or password"),
    ("http://host/a b", "spaces or control"),
    ("http://host:99999/", "not a URL"),
    ("http://h/" + "a" * 3000, "longer than"),
])
def test_a_bad_probe_url_is_refused_with_a_message_naming_the_key(url, why):
    with pytest.raises(ConfigError) as exc:
        validate_probe_url(url, "--portal-probe-url")
    assert "--portal-probe-url" in str(exc.value) and why in str(exc.value)
    assert "Traceback" not in str(exc.value)


def test_a_good_probe_url_gives_host_port_and_path():
    t = validate_probe_url("http://198.51.100.77:8080/check?x=1")
    assert (t.host, t.port, t.path, t.address) == ("198.51.100.77", 8080, "/check?x=1",
                                                   IPv4Address("198.51.100.77"))
    assert TARGET.address is None and TARGET.port == 80


def test_dns_query_and_answer_roundtrip():
    q = dns_query("nmcheck.gnome.org", 0x1234)
    # An answer: the question echoed, one A record by a compressed name pointer.
    answer = (bytes.fromhex("1234") + bytes.fromhex("8180") + b"\x00\x01\x00\x01\x00\x00\x00\x00"
              + q[12:] + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + bytes([1, 2, 3, 4]))
    assert dns_addresses(answer, 0x1234) == [IPv4Address("1.2.3.4")]
    with pytest.raises(ValueError):
        dns_addresses(answer, 0x4321)  # not the answer to our query


def test_a_truncated_dns_answer_is_a_value_error_never_a_struct_error():
    # Review-portal finding 4: it escaped resolve() and probe() and killed the task.
    q = dns_query("nmcheck.gnome.org", 0x1234)
    head = bytes.fromhex("12348180") + b"\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:]
    for cut in (b"\xc0\x0c\x00\x01", b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x01"):
        with pytest.raises(ValueError):
            dns_addresses(head + cut, 0x1234)


async def test_a_probe_that_fails_in_any_way_is_unknown_and_the_link_is_probed_again(
        monkeypatch):
    import struct

    from app.net import portal_probe

    async def broken(host, iface, resolvers):
        raise struct.error("unpack requires a buffer of 10 bytes")

    monkeypatch.setattr(portal_probe, "resolve", broken)
    verdict = await portal_probe.probe(TARGET, "eth0", resolvers=[IPv4Address("192.0.2.53")])
    assert verdict.kind == UNKNOWN and "10 bytes" in verdict.detail

    events: list[str] = []
    done = asyncio.Event()

    async def raising(target, iface):
        raise RuntimeError("boom")

    def event(kind, details):
        events.append(kind)
        if kind.startswith("portal-") and kind != "portal-probe":
            done.set()

    w = PortalWatch(TARGET, run_probe=raising, event=event)
    w.seen(FAILED, _Gate())
    await asyncio.wait_for(done.wait(), 5)
    assert events == ["portal-probe", "portal-unknown"] and w.probed is None


def test_link_resolvers_skip_a_local_stub(tmp_path):
    stub = tmp_path / "stub.conf"
    stub.write_text("nameserver 127.0.0.53\n")
    real = tmp_path / "real.conf"
    real.write_text("# link\nnameserver 203.0.113.1\nnameserver ::1\n")
    assert link_resolvers((stub, tmp_path / "missing", real)) == [IPv4Address("203.0.113.1")]


def test_the_links_own_resolvers_are_read_from_resolveds_link_dns_property():
    # Review-portal finding 11: the resolv.conf files are the machine's, not the link's.
    import socket

    from app.net.link_dns import parse_link_dns

    value = [[socket.AF_INET, b"\xc0\x00\x02\x35"], [socket.AF_INET6, bytes(16)],
             [socket.AF_INET, b"\x7f\x00\x00\x35"], [socket.AF_INET, b"\x01"], "junk",
             [socket.AF_INET, b"\xc0\x00\x02\x35"], [socket.AF_INET, [10, 0, 0, 1]]]
    assert parse_link_dns(value) == [IPv4Address("192.0.2.53"), IPv4Address("10.0.0.1")]
    assert parse_link_dns(None) == []


async def test_the_probe_and_the_hole_use_the_links_own_resolvers(monkeypatch, tmp_path):
    import app.service.portal as portal_mod
    from app.net import signin_cgroup

    asked: list[str] = []
    seen: list[list[IPv4Address]] = []

    async def link_dns(iface):
        asked.append(iface)
        return [IPv4Address("192.0.2.53")]

    async def fake_probe(target, iface, *, resolvers=None, timeout=3.0):
        seen.append(resolvers)
        return Verdict(PORTAL, "http://203.0.113.1/portal/login")

    monkeypatch.setattr(portal_mod, "probe", fake_probe)
    monkeypatch.setattr(signin_cgroup, "create", lambda pid, uid: signin_cgroup.SignInCgroup(
        tmp_path, "unified/x"))
    changed = asyncio.Event()
    gate = _Gate()
    w = PortalWatch(TARGET, link_dns=link_dns, changed=changed.set)
    w.seen(FAILED, gate)
    await asyncio.wait_for(changed.wait(), 5)
    assert asked == ["eth0"] and seen == [[IPv4Address("192.0.2.53")]]
    await w.open_signin(4242, 1000)
    assert "ip daddr { 192.0.2.53 } meta l4proto { tcp, udp } th dport 53 accept" in (
        gate.scripts[-1])


# -- the gate's portal chains ----------------------------------------------------------


def test_the_probe_rules_pass_only_the_probes_mark_on_the_link_and_never_the_home_address():
    script = portal_gate.render(HOME, ("eth0", 80), None)
    out = [r for r in script.splitlines() if " portal " in r]
    assert out and all(f"meta mark {PORTAL_MARK:#x}" in r and 'oifname "eth0"' in r
                       and f"ip saddr != {HOME}" in r for r in out)
    assert "portal_out" in script and "cgroupv2" not in script


def test_the_signin_hole_is_keyed_to_the_cgroup_never_to_a_port_or_address_alone():
    hole = portal_gate.SignInHole("eth0", "unified/trustroam-signin-1", 1,
                                  (IPv4Address("203.0.113.1"),))
    script = portal_gate.render(HOME, None, hole)
    out = [r.split(" portal ", 1)[1] for r in script.splitlines()
           if r.startswith("add rule") and " portal " in r]
    assert out and all(f"meta mark {portal_gate.SIGNIN_MARK:#x}" in r for r in out)
    mark = [r for r in script.splitlines() if " portal_out " in r]
    assert mark == ['add rule inet trustroam_gate portal_out socket cgroupv2 level 1 '
                    f'"unified/trustroam-signin-1" meta mark set {portal_gate.SIGNIN_MARK:#x}']
    dns = [r for r in out if "53" in r]
    assert dns and all("ip daddr { 203.0.113.1 }" in r for r in dns)
    inbound = [r for r in script.splitlines() if " portal_in " in r]
    assert inbound and all("socket cgroupv2" in r for r in inbound)


def test_a_cgroup_path_that_could_break_the_rule_is_refused():
    for bad in ('a" accept #', "/abs", ""):
        with pytest.raises(ValueError):
            portal_gate.SignInHole("eth0", bad, 1)


# -- when the helper probes ------------------------------------------------------------

FAILED = Snapshot(state=State.UNTRUSTED, mode=Mode.NONE, interface="eth0",
                  care_of_address="203.0.113.150", home_address=str(HOME),
                  error="the VPN did not come up: no answer")


def test_the_probe_runs_only_when_the_vpn_could_not_come_up_on_an_untrusted_network():
    assert probe_key(FAILED) == ("eth0", "203.0.113.150")
    for snap in (Snapshot(state=State.UNTRUSTED, interface="eth0", care_of_address="x"),
                 Snapshot(state=State.UNTRUSTED, mode=Mode.VPN, interface="eth0",
                          care_of_address="x", error="e"),
                 Snapshot(state=State.TRUSTED, mode=Mode.COLOCATED, interface="eth0",
                          care_of_address="x", error="e")):
        assert probe_key(snap) is None


class _Gate:
    def __init__(self) -> None:
        self.scripts: list[str] = []

    async def portal(self, script: str) -> None:
        self.scripts.append(script)


async def test_a_portal_is_reported_once_per_link_and_cleared_when_the_vpn_comes_up():
    probes: list[str] = []

    async def fake(target, iface):
        probes.append(iface)
        return Verdict(PORTAL, "http://203.0.113.1/portal/login")

    changed = asyncio.Event()
    gate = _Gate()
    w = PortalWatch(TARGET, run_probe=fake, changed=changed.set)
    w.seen(FAILED, gate)
    w.seen(FAILED, gate)  # the same failure again: no second probe
    await asyncio.wait_for(changed.wait(), 5)
    assert w.address == "http://203.0.113.1/portal/login" and probes == ["eth0"]
    # The probe's rules were opened for it alone, then emptied.
    assert "meta mark 0x5454" in gate.scripts[0] and "add rule" not in gate.scripts[-1]
    changed.clear()
    w.seen(Snapshot(state=State.UNTRUSTED, mode=Mode.VPN, interface="eth0",
                    care_of_address="203.0.113.150", home_address=str(HOME)), gate)
    assert w.address == "" and changed.is_set()


async def test_no_signin_without_a_portal():
    w = PortalWatch(TARGET)
    with pytest.raises(Exception, match="no captive portal"):
        await w.open_signin(1, 1000)


# -- the sign-in hole's life -------------------------------------------------------------

MOUNTINFO_HYBRID = (
    "30 23 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n"
    "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"
    "32 30 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n")


def test_the_cgroup2_mount_is_found_at_or_below_sys_fs_cgroup_only():
    from app.net.signin_cgroup import cgroup2_mount

    assert str(cgroup2_mount(MOUNTINFO_HYBRID)) == "/sys/fs/cgroup/unified"
    assert str(cgroup2_mount("1 0 0:1 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n")
               ) == "/sys/fs/cgroup"
    assert cgroup2_mount("1 0 0:1 / /mnt/cg rw - cgroup2 cgroup2 rw\n") is None


@pytest.fixture
def watch_with_portal(monkeypatch, tmp_path):
    """A watch that found a portal on eth0, with the cgroup made in a temporary dir."""
    from app.net import signin_cgroup

    made = []

    def create(pid, uid):
        d = tmp_path / f"cg{len(made)}"
        d.mkdir()
        cg = signin_cgroup.SignInCgroup(d, f"unified/{d.name}")
        made.append((pid, cg))
        return cg

    monkeypatch.setattr(signin_cgroup, "create", create)
    events: list[tuple[str, dict[str, str]]] = []

    async def fake(target, iface):
        return Verdict(PORTAL, "http://203.0.113.1/portal/login")

    async def make(seconds=300.0, clock=None):
        changed = asyncio.Event()
        w = PortalWatch(TARGET, run_probe=fake, changed=changed.set, signin_seconds=seconds,
                        event=lambda k, d: events.append((k, d)), clock=clock)
        gate = _Gate()
        w.seen(FAILED, gate)
        await asyncio.wait_for(changed.wait(), 5)
        return w, gate
    return make, made, events


async def _closed(events, timeout=5.0):
    for _ in range(int(timeout / 0.01)):
        found = [d for k, d in events if k == "signin-closed"]
        if found:
            return found[0]["reason"]
        await asyncio.sleep(0.01)  # the close runs in the watch's task
    raise AssertionError(f"the sign-in never closed: {events}")


async def test_the_signin_hole_opens_for_the_callers_cgroup_and_closes_when_the_time_is_up(
        watch_with_portal):
    make, made, events = watch_with_portal
    w, gate = await make(seconds=0.05)
    assert await w.open_signin(4242, 1000) == ("http://203.0.113.1/portal/login", 0.05)
    assert made[0][0] == 4242
    assert f'"unified/{made[0][1].directory.name}"' in gate.scripts[-1]
    assert await _closed(events) == "the time is up"
    assert "add rule" not in gate.scripts[-1] and w.hole is None


async def test_the_signin_time_is_a_budget_per_network_not_per_call(watch_with_portal):
    # Review-portal finding 5: close and open again at once must not restart the
    # time, or any process of the user keeps a way out in clear open forever.
    make, _, _ = watch_with_portal
    now = [1000.0]
    w, _ = await make(seconds=300.0, clock=lambda: now[0])
    assert (await w.open_signin(4242, 1000))[1] == 300.0
    now[0] += 200
    assert await w.close_signin("the sign-in window closed")
    assert (await w.open_signin(4242, 1000))[1] == 100.0  # what is left, not 300 again
    now[0] += 100
    await w.close_signin("the sign-in window closed")
    with pytest.raises(Exception, match="used up"):
        await w.open_signin(4242, 1000)
    assert w.hole is None


async def test_portal_chain_writes_never_overlap_and_the_last_shows_the_state_now(
        watch_with_portal):
    # Review-portal finding 6: two nft runs at once can commit in either order and
    # leave a stale hole open with nothing to close it.
    make, _, _ = watch_with_portal
    w, _ = await make()
    running, overlaps = [0], []

    class SlowGate(_Gate):
        async def portal(self, script: str) -> None:
            running[0] += 1
            overlaps.append(running[0])
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            self.scripts.append(script)
            running[0] -= 1

    gate = SlowGate()
    w.gate = gate
    w.at = ("eth0", "203.0.113.150")
    opened = asyncio.ensure_future(w.open_signin(4242, 1000))
    await asyncio.sleep(0)
    closed = asyncio.ensure_future(w.close_signin("the sign-in window closed"))
    await asyncio.gather(opened, closed)
    assert max(overlaps) == 1
    assert "cgroupv2" not in gate.scripts[-1] and w.hole is None


async def test_the_signin_hole_closes_when_the_signin_process_exits(watch_with_portal):
    # Review-portal finding 9: a crashed window kept the hole until the time was up.
    make, _, events = watch_with_portal
    w, gate = await make()
    child = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        await w.open_signin(child.pid, 1000)
        assert "cgroupv2" in gate.scripts[-1]
    finally:
        child.kill()
        await child.wait()
    assert await _closed(events) == "the sign-in window exited"
    assert "add rule" not in gate.scripts[-1] and w.hole is None


async def test_the_signin_hole_closes_when_the_vpn_comes_up(watch_with_portal):
    make, _, events = watch_with_portal
    w, gate = await make()
    await w.open_signin(4242, 1000)
    w.seen(Snapshot(state=State.UNTRUSTED, mode=Mode.VPN, interface="eth0",
                    care_of_address="203.0.113.150", home_address=str(HOME)), gate)
    assert await _closed(events) == "the VPN came up"
    assert "add rule" not in gate.scripts[-1] and w.address == ""


async def test_the_signin_hole_closes_when_the_network_changes(watch_with_portal):
    make, _, events = watch_with_portal
    w, gate = await make()
    await w.open_signin(4242, 1000)
    w.seen(Snapshot(state=State.PROBING, interface="eth0", care_of_address="10.30.1.100",
                    home_address=str(HOME)), gate)
    assert await _closed(events) == "the network changed"
    assert "add rule" not in gate.scripts[-1]


# -- what the user sees ------------------------------------------------------------------

def test_captive_portal_travels_on_the_bus_and_is_shown_by_trustroamctl_and_the_tray():
    from app.ctl import render
    from ui.presentation import tooltip

    snap = Snapshot(state=State.UNTRUSTED, profile="corp",
                    captive_portal="http://203.0.113.1/portal/login\x1b[2J")
    assert Snapshot.from_dbus(snap.to_dbus()).captive_portal == snap.captive_portal
    text = render(snap, 0.0)
    assert "CaptivePortal  sign in at http://203.0.113.1/portal/login" in text
    assert "\x1b" not in text  # a hostile network's address is escaped
    tip = tooltip(snap, "")
    assert "Captive portal: sign in at http://203.0.113.1/portal/login" in tip
    assert "\x1b" not in tip
    assert "CaptivePortal" not in render(Snapshot(state=State.UNTRUSTED), 0.0)


async def test_an_empty_probe_url_never_probes():
    probes: list[str] = []

    async def fake(target, iface):
        probes.append(iface)
        return Verdict(PORTAL, "http://203.0.113.1/")

    gate = _Gate()
    w = PortalWatch(None, run_probe=fake)
    w.seen(FAILED, gate)
    await asyncio.sleep(0)  # a probe task would have started by now
    assert probes == [] and gate.scripts == [] and w.address == "" and w.probed is None


async def test_a_disconnect_closes_the_hole_in_the_gate_it_was_opened_in(watch_with_portal):
    # Under always-vpn a Disconnect keeps that gate, shut, after the helper let go of
    # it: the hole must not stay open in it.
    make, _, events = watch_with_portal
    w, gate = await make()
    await w.open_signin(4242, 1000)
    assert "cgroupv2" in gate.scripts[-1]
    w.seen(Snapshot(), None)  # disconnected: the helper holds no gate any more
    assert await _closed(events) == "the network changed"
    assert "add rule" not in gate.scripts[-1]
