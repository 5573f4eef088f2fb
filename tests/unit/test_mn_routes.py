"""The netlink requests the MN's routing makes, per mode and per move (a recording fake
stands in for pyroute2's AsyncIPRoute; the lab tests run the real thing)."""

from __future__ import annotations

import errno
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

import pytest

from app.api import Mode
from app.net.mn_routes import (
    PREF_LINK,
    TABLE_LINK,
    TABLE_MODE,
    TUNNEL,
    Backend,
    LinkInfo,
    MobileNodeRoutes,
)
from app.net.netlink import NetlinkError

HOME, HA = IPv4Address("10.20.1.10"), IPv4Address("10.20.1.1")
T1 = LinkInfo("eth0", IPv4Interface("10.30.1.100/24"), IPv4Address("10.30.1.1"))
T2 = LinkInfo("eth0", IPv4Interface("10.30.2.100/24"), IPv4Address("10.30.2.1"))


class FakeIPRoute:
    def __init__(self):
        self.calls = []
        self.indexes = {"eth0": 2}
        self.rules = []

    async def rule(self, cmd, **kwargs):
        self.calls.append(("rule", cmd, kwargs))
        if cmd == "add":
            self.rules.append(kwargs["priority"])
        elif kwargs["priority"] in self.rules:
            self.rules.remove(kwargs["priority"])
        else:
            raise NetlinkError(errno.ENOENT)

    async def link_lookup(self, ifname):
        return [self.indexes[ifname]] if ifname in self.indexes else []

    def __getattr__(self, name):
        async def record(*args, **kwargs):
            self.calls.append((name, *args, kwargs))
            if name == "link" and args[0] == "add":
                self.indexes[kwargs["ifname"]] = 7
        return record

    def take(self):
        out, self.calls = self.calls, []
        return out


@pytest.fixture
def routes():
    ipr = FakeIPRoute()
    r = MobileNodeRoutes(HOME, IPv4Network("10.20.1.0/24"), HA, Backend.KERNEL, ipr=ipr)
    return r, ipr


async def test_kernel_mode_c_makes_an_ipip_device_and_routes_into_it(routes):
    r, ipr = routes
    await r.set_link(T1)
    assert ipr.take() == [
        ("route", "replace", {"dst": "0.0.0.0/0", "gateway": "10.30.1.1", "oif": 2,
                              "prefsrc": "10.30.1.100", "table": TABLE_LINK}),
        ("rule", "add", {"priority": PREF_LINK, "table": TABLE_LINK, "src": "10.30.1.100",
                         "src_len": 32}),
    ]
    await r.configure(Mode.COLOCATED)
    calls = ipr.take()
    assert ("link", "add", {"ifname": TUNNEL, "kind": "ipip", "ipip_local": "10.30.1.100",
                            "ipip_remote": "10.20.1.1"}) in calls
    assert ("addr", "replace", {"index": 7, "address": "10.20.1.10", "prefixlen": 32}) in calls
    assert ("route", "replace", {"dst": "10.20.1.1/32", "table": TABLE_MODE,
                                 "gateway": "10.30.1.1", "oif": 2,
                                 "prefsrc": "10.30.1.100"}) in calls
    assert ("route", "replace", {"dst": "0.0.0.0/0", "table": TABLE_MODE, "oif": 7,
                                 "prefsrc": "10.20.1.10"}) in calls


async def test_a_c_to_c_move_changes_only_what_differs(routes):
    r, ipr = routes
    await r.set_link(T1)
    await r.configure(Mode.COLOCATED)
    ipr.take()
    await r.set_link(T2)
    link_calls = ipr.take()
    assert [c[:2] for c in link_calls] == [("route", "replace"), ("rule", "del"),
                                           ("rule", "add")]
    await r.configure(Mode.COLOCATED)
    calls = ipr.take()
    # The kernel tunnel gets the new outer source; no address or route is removed.
    assert ("link", "set", {"index": 7, "kind": "ipip", "ipip_local": "10.30.2.100",
                            "ipip_remote": "10.20.1.1"}) in calls
    assert not [c for c in calls if c[1] == "del"]


async def test_home_moves_the_home_address_onto_the_link_with_the_home_prefix(routes):
    r, ipr = routes
    await r.set_link(T1)
    await r.configure(Mode.COLOCATED)
    ipr.take()
    await r.configure(Mode.HOME)
    calls = ipr.take()
    # The new location first; the old one goes after the gate opened (finish).
    assert ("addr", "del", {"index": 7, "address": "10.20.1.10", "prefixlen": 32}) not in calls
    await r.finish()
    assert ipr.take() == [("addr", "del", {"index": 7, "address": "10.20.1.10",
                                           "prefixlen": 32})]
    assert ("addr", "replace", {"index": 2, "address": "10.20.1.10", "prefixlen": 24}) in calls
    assert ("route", "del", {"dst": "10.20.1.1/32", "table": TABLE_MODE}) in calls
    r.arp.cancel_all()


async def test_clear_removes_everything(routes):
    r, ipr = routes
    await r.set_link(T1)
    await r.configure(Mode.FOREIGN_AGENT, foreign_agent=IPv4Address("10.30.1.1"))
    ipr.take()
    await r.clear()
    calls = ipr.take()
    assert ("flush_routes", {"table": TABLE_MODE}) in calls
    assert ("flush_routes", {"table": TABLE_LINK}) in calls
    assert ("addr", "del", {"index": 2, "address": "10.20.1.10", "prefixlen": 32}) in calls
    assert ("link", "del", {"index": 7}) not in calls  # no kernel tunnel was made in mode f
    assert ipr.rules == []
