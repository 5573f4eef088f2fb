"""The profile's resolvers on systemd-resolved, per mode (issue 19): the calls
``LinkDns`` makes, against a fake resolved that keeps each link's settings (the lab
test runs the real one)."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from types import SimpleNamespace

from app.api import Mode
from app.dbus import MessageType, Variant
from app.net.mn_routes import Backend, LinkInfo, MobileNodeRoutes
from app.net.resolver import NO_SUCH_LINK, DesktopResolver, LinkDns
from app.net.resolver_nm import NmGlobalDns
from tests.unit.test_mn_routes import HA, HOME, T1, FakeIPRoute

TUN, ETH = 7, 2
CORP = [IPv4Address("10.0.0.1")]
VISITED = ((socket.AF_INET, bytes([10, 40, 1, 1])),)
EMPTY = ((), (), False)


class FakeResolved:
    """resolved's per-link settings as its Manager methods change them."""

    def __init__(self, links=(TUN, ETH), running=True):
        self.links = {i: EMPTY for i in links}
        self.late: dict[int, int] = {}
        """ifindex -> how many more calls answer NoSuchLink (learnt late)."""
        self.running = running
        self.calls = []

    async def call(self, msg):
        if not self.running:
            return _error("org.freedesktop.DBus.Error.ServiceUnknown")
        self.calls.append((msg.member, *msg.body))
        if msg.member == "AddMatch":
            return _ok([])
        if msg.member == "Get":
            index = int(msg.path.rsplit("_", 1)[1])
            dns, domains, default = self.links[index]
            value = {"DNS": Variant("a(iay)", [list(d) for d in dns]),
                     "Domains": Variant("a(sb)", [list(d) for d in domains]),
                     "DefaultRoute": Variant("b", default)}[msg.body[1]]
            return _ok([value])
        index = msg.body[0]
        if index not in self.links or self.late.get(index, 0) > 0:
            self.late[index] = self.late.get(index, 0) - 1
            return _error(NO_SUCH_LINK)
        dns, domains, default = self.links[index]
        if msg.member == "SetLinkDNS":
            self.links[index] = (tuple((f, bytes(a)) for f, a in msg.body[1]), domains, default)
        elif msg.member == "SetLinkDomains":
            self.links[index] = (dns, tuple((d, r) for d, r in msg.body[1]), default)
        elif msg.member == "SetLinkDefaultRoute":
            self.links[index] = (dns, domains, msg.body[1])
        elif msg.member == "RevertLink":
            self.links[index] = EMPTY
        elif msg.member == "GetLink":
            return _ok([f"/org/freedesktop/resolve1/link/_{index}"])
        return _ok([])


def _ok(body):
    return SimpleNamespace(message_type=MessageType.METHOD_RETURN, body=body, error_name=None)


def _error(name):
    return SimpleNamespace(message_type=MessageType.ERROR, body=[], error_name=name)


def ours(index=TUN):
    return ((socket.AF_INET, bytes([10, 0, 0, 1])),), (("corp.example", False), (".", True)), True


def dns(resolved, **kw):
    return LinkDns(CORP, ["corp.example"], tunnel="trmn0", bus=resolved,
                   interfaces=lambda: [(1, "lo"), (ETH, "eth0"), (TUN, "trmn0")])


async def test_issue19_mode_c_sends_every_name_to_the_intranet_resolvers_on_the_tunnel():
    r = FakeResolved()
    d = dns(r)
    await d.apply(Mode.COLOCATED, TUN)
    # "~." (routing-only root) and DefaultRoute: every query goes to these servers.
    assert r.links[TUN] == ours()
    assert r.links[ETH] == EMPTY


async def test_issue19_every_way_out_of_a_tunnel_mode_reverts_the_tunnel_link():
    r = FakeResolved()
    d = dns(r)
    await d.apply(Mode.VPN, TUN)
    await d.apply(Mode.NONE, None)  # link lost, undecided
    assert r.links[TUN] == EMPTY
    await d.apply(Mode.COLOCATED, TUN)
    await d.apply(Mode.HOME, ETH)  # mode change: home link (no DHCP resolver there)
    assert r.links[TUN] == EMPTY
    await d.close()  # stop
    assert r.links[ETH] == EMPTY


async def test_issue19_a_move_within_the_tunnel_modes_changes_nothing():
    r = FakeResolved()
    d = dns(r)
    await d.apply(Mode.COLOCATED, TUN)
    r.calls.clear()
    await d.apply(Mode.VPN, TUN)
    assert [c for c in r.calls if c[0].startswith(("Set", "Revert"))] == []


async def test_issue19_mode_f_puts_back_what_the_visited_link_had():
    r = FakeResolved()
    r.links[ETH] = (VISITED, (("fa1.example", False),), True)
    d = dns(r)
    await d.apply(Mode.FOREIGN_AGENT, ETH)
    assert r.links[ETH] == ours()
    await d.apply(Mode.NONE, None)
    assert r.links[ETH] == (VISITED, (("fa1.example", False),), True)


async def test_issue19_leaving_f_keeps_what_networkmanager_set_since():
    r = FakeResolved()
    r.links[ETH] = (VISITED, (), True)
    d = dns(r)
    await d.apply(Mode.FOREIGN_AGENT, ETH)
    pub = (((socket.AF_INET, bytes([203, 0, 113, 1])),), (), True)
    r.links[ETH] = pub  # the next network's DHCP, while still probing
    await d.apply(Mode.VPN, TUN)
    assert r.links[ETH] == (pub[0], (), False)  # its servers, unused in mc
    assert r.links[TUN] == ours()
    await d.apply(Mode.NONE, None)
    assert r.links[ETH] == pub


async def test_issue19_home_link_with_resolvers_from_its_dhcp_is_left_alone():
    r = FakeResolved()
    r.links[ETH] = (VISITED, (), True)
    d = dns(r)
    await d.apply(Mode.HOME, ETH)
    assert r.links[ETH] == (VISITED, (), True)
    r.links[ETH] = EMPTY
    d = dns(r)
    await d.apply(Mode.HOME, ETH)
    assert r.links[ETH] == ours()


async def test_issue19_start_reverts_what_a_crashed_helper_left_on_the_tunnel():
    r = FakeResolved()
    r.links[TUN] = ours()
    await dns(r).start()
    assert r.links[TUN] == EMPTY


async def test_issue19_start_reverts_a_physical_link_a_crash_in_f_left_and_only_that():
    r = FakeResolved()
    r.links[ETH] = ours()
    await dns(r).start()
    assert r.links[ETH] == EMPTY
    r.links[ETH] = (VISITED, (), True)  # NetworkManager's: not ours
    await dns(r).start()
    assert r.links[ETH] == (VISITED, (), True)


async def test_issue19_a_link_resolved_has_not_learnt_yet_is_asked_again():
    r = FakeResolved()
    r.late[TUN] = 3
    await dns(r).apply(Mode.COLOCATED, TUN)
    assert r.links[TUN] == ours()


async def test_issue19_without_resolved_the_modes_still_work(caplog):
    r = FakeResolved(running=False)
    d = dns(r)
    await d.start()
    await d.apply(Mode.COLOCATED, TUN)
    await d.close()
    assert "systemd-resolved does not run" in caplog.text


class Recorder:
    def __init__(self):
        self.calls = []

    async def start(self):
        self.calls.append("start")

    async def apply(self, mode, index):
        self.calls.append((mode, index))

    async def close(self):
        self.calls.append("close")


async def test_issue19_data_plane_puts_resolvers_where_the_home_address_is():
    rec = Recorder()
    ipr = FakeIPRoute()
    routes = MobileNodeRoutes(HOME, IPv4Network("10.20.1.0/24"), HA, Backend.KERNEL, ipr=ipr,
                              dns=rec)
    await routes.start()
    await routes.set_link(T1)
    await routes.configure(Mode.COLOCATED)
    await routes.finish()
    await routes.configure(Mode.FOREIGN_AGENT, foreign_agent=IPv4Address("10.30.1.1"))
    await routes.finish()
    await routes.set_link(LinkInfo("eth0", IPv4Interface("10.20.1.200/24"),
                                   IPv4Address("10.20.1.254")))
    await routes.configure(Mode.HOME)
    await routes.finish()
    await routes.configure(Mode.NONE)
    await routes.clear()
    tun = ipr.indexes["trmn0"]
    assert rec.calls[0] == "start"
    assert (Mode.COLOCATED, tun) in rec.calls
    assert (Mode.FOREIGN_AGENT, ETH) in rec.calls
    assert (Mode.HOME, ETH) in rec.calls
    after_home = rec.calls[rec.calls.index((Mode.HOME, ETH)) + 1:]
    assert after_home[0] == (Mode.NONE, None)
    assert rec.calls[-1] == "close"


class FakeBusDaemon(FakeResolved):
    """The bus daemon and NetworkManager (its global DNS, devices), with or without
    resolved behind the same connection."""

    def __init__(self, *, resolved=False, activatable=False, nm=True, nameservers=()):
        super().__init__()
        self.resolved, self.activatable, self.nm = resolved, activatable, nm
        self.global_dns: dict = {}
        self.sets: list[dict] = []
        self.nameservers = list(nameservers)

    async def call(self, msg):
        if msg.interface == "org.freedesktop.DBus":
            if msg.member == "NameHasOwner":
                return _ok([{"org.freedesktop.resolve1": self.resolved,
                             "org.freedesktop.NetworkManager": self.nm}[msg.body[0]]])
            return _ok([["org.freedesktop.resolve1"] if self.activatable else []])
        if msg.destination == "org.freedesktop.resolve1":
            return await super().call(msg)
        if msg.member == "GetDevices":
            return _ok([["/org/freedesktop/NetworkManager/Devices/2"]])
        if msg.member == "Set":
            self.global_dns = _plain(msg.body[2])
            self.sets.append(self.global_dns)
            return _ok([])
        name = msg.body[1]
        value = {"GlobalDnsConfiguration": Variant("a{sv}", {}) if not self.global_dns
                 else _variant(self.global_dns),
                 "Ifindex": Variant("i", ETH),
                 "Ip4Config": Variant("o", "/org/freedesktop/NetworkManager/IP4Config/5"),
                 "Nameservers": Variant("au", self.nameservers)}[name]
        return _ok([value])


def _plain(v):
    while isinstance(v, Variant):
        v = v.value
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _variant(d):
    return Variant("a{sv}", {
        "searches": Variant("as", d["searches"]),
        "domains": Variant("a{sv}", {"*": Variant("a{sv}", {
            "servers": Variant("as", d["domains"]["*"]["servers"])})})})


CORP_GLOBAL = {"searches": ["corp.example"], "domains": {"*": {"servers": ["10.0.0.1"]}}}


STUB = "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
BY_NM = "# Generated by NetworkManager\nnameserver 10.40.1.1\n"


def desktop(bus, resolv=STUB):
    import tempfile
    from pathlib import Path
    path = Path(tempfile.mkdtemp()) / "resolv.conf"
    path.write_text(resolv)
    return DesktopResolver(CORP, ["corp.example"], tunnel="trmn0", bus=bus, resolv_conf=path)


async def test_issue19_resolved_is_used_where_it_runs_and_resolv_conf_asks_its_stub():
    d = desktop(FakeBusDaemon(resolved=True))
    await d.start()
    assert isinstance(d.backend, LinkDns)
    d = desktop(FakeBusDaemon(resolved=False, activatable=True, nm=False))
    await d.start()  # no NetworkManager: the bus starts resolved, the stub is asked
    assert isinstance(d.backend, LinkDns)
    d = desktop(FakeBusDaemon())
    await d.start()
    assert isinstance(d.backend, NmGlobalDns)


async def test_issue19_a_resolved_nobody_asks_or_only_activatable_is_not_used():
    """Review finding 5: resolved running while NetworkManager writes resolv.conf
    itself, or installed but disabled (activation fails with NoSuchUnit): settings
    there reach no lookup; NetworkManager's global DNS is used."""
    d = desktop(FakeBusDaemon(resolved=True), resolv=BY_NM)
    await d.start()
    assert isinstance(d.backend, NmGlobalDns)
    d = desktop(FakeBusDaemon(resolved=False, activatable=True))
    await d.start()
    assert isinstance(d.backend, NmGlobalDns)


async def test_issue19_resolved_failing_to_activate_counts_as_missing(caplog):
    class Disabled(FakeResolved):
        async def call(self, msg):
            return _error("org.freedesktop.systemd1.NoSuchUnit")

    d = dns(Disabled())
    await d.apply(Mode.COLOCATED, TUN)
    await d.apply(Mode.NONE, None)
    await d.apply(Mode.VPN, TUN)
    assert caplog.text.count("systemd-resolved does not run") == 1
    assert "cannot" not in caplog.text


async def test_issue19_without_resolved_networkmanager_global_dns_holds_them_while_a_mode_is_open():
    bus = FakeBusDaemon()
    d = desktop(bus)
    await d.start()
    await d.apply(Mode.COLOCATED, TUN)
    await d.settled()
    assert bus.global_dns == CORP_GLOBAL
    await d.apply(Mode.VPN, TUN)
    await d.settled()
    await d.apply(Mode.FOREIGN_AGENT, ETH)
    await d.settled()
    assert len(bus.sets) == 1  # one system-wide setting: nothing to move
    await d.apply(Mode.NONE, None)
    await d.settled()
    assert bus.global_dns == {}
    await d.apply(Mode.VPN, TUN)
    await d.settled()
    await d.close()
    assert bus.global_dns == {}


async def test_issue19_networkmanager_home_link_with_dhcp_resolvers_is_left_alone():
    bus = FakeBusDaemon(nameservers=[0x0100000A])
    d = desktop(bus)
    await d.start()
    await d.apply(Mode.HOME, ETH)
    await d.settled()
    assert bus.sets == []
    bus = FakeBusDaemon()
    d = desktop(bus)
    await d.start()
    await d.apply(Mode.HOME, ETH)
    await d.settled()
    assert bus.global_dns == CORP_GLOBAL


async def test_issue19_networkmanager_global_dns_a_crash_left_is_cleared_an_administrators_kept():
    bus = FakeBusDaemon()
    bus.global_dns = dict(CORP_GLOBAL)
    await desktop(bus).start()
    assert bus.global_dns == {}
    admin = {"searches": [], "domains": {"*": {"servers": ["192.0.2.53"]}}}
    bus = FakeBusDaemon()
    bus.global_dns = dict(admin)
    d = desktop(bus)
    await d.start()
    await d.apply(Mode.VPN, TUN)
    await d.close()
    assert bus.global_dns == admin


HOTEL = (("hotel.example", False), ("com", False))


async def test_issue19_c_and_mc_take_the_visited_links_search_domains_and_default_route():
    """A visited DHCP's search domains are routing domains for resolved: names under
    them (or an intranet name under a longer announced suffix) would go to the visited
    resolver whatever "~." says; in c and mc the physical link keeps its servers but
    no domain and no default route, and gets both back when the mode ends."""
    for mode in (Mode.COLOCATED, Mode.VPN):
        r = FakeResolved()
        r.links[ETH] = (VISITED, HOTEL, True)
        d = dns(r)
        await d.apply(mode, TUN)
        assert r.links[TUN] == ours()
        assert r.links[ETH] == (VISITED, (), False)
        await d.apply(Mode.NONE, None)
        assert r.links[ETH] == (VISITED, HOTEL, True)


async def test_issue19_leaving_c_keeps_the_domains_networkmanager_set_since():
    r = FakeResolved()
    r.links[ETH] = (VISITED, HOTEL, True)
    d = dns(r)
    await d.apply(Mode.COLOCATED, TUN)
    nxt = (VISITED, (("next.example", False),), True)
    r.links[ETH] = nxt  # the next network's DHCP
    await d.apply(Mode.NONE, None)
    assert r.links[ETH] == nxt


async def test_issue19_f_puts_the_profiles_servers_back_when_networkmanager_pushed_its_own():
    """Review finding 2: NetworkManager re-pushes the link's DHCP resolvers (a renewal,
    resolved restarted) while the mode stays f: the next apply sets ours again, and the
    latest of NetworkManager's is what leaving puts back."""
    r = FakeResolved()
    r.links[ETH] = (VISITED, (), True)
    d = dns(r)
    await d.apply(Mode.FOREIGN_AGENT, ETH)
    renewed = (((socket.AF_INET, bytes([10, 40, 1, 2])),), (("fa1.example", False),), True)
    r.links[ETH] = renewed
    await d.apply(Mode.FOREIGN_AGENT, ETH)
    assert r.links[ETH] == ours()
    await d.apply(Mode.NONE, None)
    assert r.links[ETH] == renewed


class WatchedResolved(FakeResolved):
    """Also a bus that delivers signals to the adapter's message handler."""

    def __init__(self):
        super().__init__()
        self.handlers = []

    def add_message_handler(self, handler):
        self.handlers.append(handler)

    def nm_dns_changed(self):
        msg = SimpleNamespace(message_type=MessageType.SIGNAL, member="PropertiesChanged",
                              interface="org.freedesktop.DBus.Properties",
                              path="/org/freedesktop/NetworkManager/DnsManager",
                              sender=":1.7", body=[])
        for h in self.handlers:
            h(msg)


async def test_issue19_networkmanager_pushing_a_links_dns_again_is_undone_in_c_and_f():
    """Review findings 1 and 2: NetworkManager pushes a link's DHCP domains and
    resolvers to resolved again (a renewal, the next network's lease after the mode
    was decided); its DNS manager's PropertiesChanged makes the adapter take them
    again (c, mc) or put the profile's back (f)."""
    r = WatchedResolved()
    r.links[ETH] = (VISITED, HOTEL, True)
    d = dns(r)
    await d.apply(Mode.COLOCATED, TUN)
    r.links[ETH] = (VISITED, HOTEL, True)  # NetworkManager, after the mode
    r.nm_dns_changed()
    await d.settled()
    assert r.links[ETH] == (VISITED, (), False)
    await d.apply(Mode.FOREIGN_AGENT, ETH)
    assert r.links[ETH] == ours()
    r.links[ETH] = (VISITED, HOTEL, True)
    r.nm_dns_changed()
    await d.settled()
    assert r.links[ETH] == ours()
    await d.apply(Mode.NONE, None)
    assert r.links[ETH] == (VISITED, HOTEL, True)


async def test_issue19_a_crashs_leftover_is_known_by_its_servers_after_the_domains_were_edited():
    """Review finding 6: the profile's [dns] domains edited since the crash: the old
    setting is still ours (same servers), cleared, not taken for an administrator's."""
    bus = FakeBusDaemon()
    bus.global_dns = {"searches": ["old.example"], "domains": {"*": {"servers": ["10.0.0.1"]}}}
    await desktop(bus).start()
    assert bus.global_dns == {}
    r = FakeResolved()
    r.links[ETH] = (ours()[0], (("old.example", False), (".", True)), True)
    await dns(r).start()
    assert r.links[ETH] == EMPTY


async def test_issue19_a_slow_resolver_never_holds_up_the_data_plane_and_the_latest_target_wins():
    """Review finding 7: the driver awaits apply() in its step; a stuck resolved or
    NetworkManager (seconds) must not delay the next event.  apply() returns at once;
    one change runs at a time; targets given meanwhile collapse to the latest."""
    import asyncio

    release = asyncio.Event()
    done = []

    class Slow:
        async def apply(self, mode, index):
            await release.wait()
            done.append((mode, index))

        async def close(self):
            done.append("close")

    d = desktop(FakeBusDaemon())
    d.backend = Slow()
    await asyncio.wait_for(d.apply(Mode.COLOCATED, TUN), 1)  # not held by the backend
    await asyncio.sleep(0)  # the background change starts
    await d.apply(Mode.NONE, None)
    await d.apply(Mode.FOREIGN_AGENT, ETH)
    release.set()
    await d.settled()
    assert done == [(Mode.COLOCATED, TUN), (Mode.FOREIGN_AGENT, ETH)]  # NONE: superseded
    await d.close()
    assert done[-1] == "close"


async def test_issue19_what_was_set_is_recorded_and_cleared_at_the_next_start_whatever_connects(
        tmp_path):
    """Review finding 6: NetworkManager keeps its global DNS across a reboot; after a
    crash the next profile may have no [dns] (or other servers).  What was set is
    recorded in the state directory; the helper's start clears it from the record."""
    from app.net.resolver import LEFT_FILE, clean_left
    bus = FakeBusDaemon()
    d = DesktopResolver(CORP, ["corp.example"], tunnel="trmn0", bus=bus, record=tmp_path,
                        resolv_conf=tmp_path / "none")
    await d.start()
    await d.apply(Mode.VPN, TUN)
    await d.settled()
    assert bus.global_dns == CORP_GLOBAL and (tmp_path / LEFT_FILE).exists()
    # The helper crashes here (no close); the next start, with any profile or none:
    await clean_left(tmp_path, bus, resolv_conf=tmp_path / "none")
    assert bus.global_dns == {} and not (tmp_path / LEFT_FILE).exists()
    # A clean close leaves no record.
    await d.apply(Mode.VPN, TUN)
    await d.settled()
    await d.close()
    assert not (tmp_path / LEFT_FILE).exists()
