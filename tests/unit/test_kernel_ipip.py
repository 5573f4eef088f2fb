"""The kernel backend's netlink requests, recorded by a stand-in for pyroute2's IPRoute.

This kernel has no ipip module, so the requests themselves are what can be
checked here; tests/lab/test_kernel_probe.py shows the real kernel's answer.
"""

from __future__ import annotations

import errno
from ipaddress import IPv4Address

import pytest

from app.net.kernel_ipip import (
    NTF_PROXY,
    KernelIpipTunnels,
    gre_supported,
    ipip_supported,
    tunnel_name,
)
from app.net.netlink import Netlink, NetlinkError

A = IPv4Address


class FakeIPRoute:
    def __init__(self, fail_add: int | None = None) -> None:
        self.calls: list[tuple[str, tuple[object, ...], dict[str, object]]] = []
        self.fail_add = fail_add
        self.next_index = 100

    def link(self, *args: object, **kw: object) -> list[object]:
        self.calls.append(("link", args, kw))
        if args[0] == "add" and self.fail_add:
            raise NetlinkError(self.fail_add)
        return []

    def link_lookup(self, **kw: object) -> list[int]:
        self.next_index += 1
        return [self.next_index]

    def route(self, *args: object, **kw: object) -> list[object]:
        self.calls.append(("route", args, kw))
        return []

    def neigh(self, *args: object, **kw: object) -> list[object]:
        self.calls.append(("neigh", args, kw))
        return []

    def close(self) -> None:
        pass


@pytest.fixture
def fake():
    return FakeIPRoute()


@pytest.fixture
def nl(fake):
    n = Netlink(lambda: fake)
    yield n
    n.close()


def requests(fake):
    return [(m, a[0], kw) for m, a, kw in fake.calls]


def test_tunnel_name_fits_ifnamsiz():
    assert tunnel_name(A("10.30.1.5")) == "mip0a1e0105"
    assert len(tunnel_name(A("255.255.255.255"))) <= 15


def test_binding_up_creates_tunnel_route_and_proxy_arp(nl, fake):
    k = KernelIpipTunnels(nl, A("10.20.1.1"), home_ifindex=7)
    k.up(A("10.20.1.10"), A("10.30.1.5"))
    nl.call("close")  # drain the queue
    assert requests(fake) == [
        ("link", "add", {"ifname": "mip0a1e0105", "kind": "ipip", "ipip_local": "10.20.1.1",
                         "ipip_remote": "10.30.1.5", "ipip_ttl": 64}),
        ("link", "set", {"ifname": "mip0a1e0105", "state": "up"}),
        ("route", "replace", {"dst": "10.20.1.10/32", "oif": 101}),
        ("neigh", "replace", {"dst": "10.20.1.10", "ifindex": 7, "flags": NTF_PROXY}),
    ]


def test_shared_care_of_and_move_and_down(nl, fake):
    k = KernelIpipTunnels(nl, A("10.20.1.1"), home_ifindex=7)
    k.up(A("10.20.1.10"), A("10.30.1.5"))
    k.up(A("10.20.1.11"), A("10.30.1.5"))  # same CoA (an FA): one device
    k.up(A("10.20.1.10"), A("10.30.1.5"))  # renewal: nothing to do
    k.up(A("10.20.1.10"), A("10.30.2.9"))  # moved
    k.down(A("10.20.1.11"))  # last user of 10.30.1.5
    nl.call("close")
    adds = [kw["ifname"] for m, op, kw in requests(fake) if m == "link" and op == "add"]
    dels = [kw["ifname"] for m, op, kw in requests(fake) if m == "link" and op == "del"]
    assert adds == ["mip0a1e0105", "mip0a1e0209"]
    assert dels == ["mip0a1e0105"]
    assert ("route", "del", {"dst": "10.20.1.11/32"}) in requests(fake)
    assert set(k.tunnels) == {(A("10.30.2.9"), False)}


@pytest.mark.parametrize(("code", "supported"), [(None, True), (errno.EOPNOTSUPP, False),
                                                 (errno.EEXIST, True), (errno.EPERM, False)])
def test_probe(code, supported):
    fake = FakeIPRoute(fail_add=code)
    n = Netlink(lambda: fake)
    try:
        assert ipip_supported(n) is supported
    finally:
        n.close()


def test_errors_are_reported_not_raised(nl, fake):
    fake.fail_add = errno.EOPNOTSUPP
    seen: list[str] = []
    k = KernelIpipTunnels(nl, A("10.20.1.1"), home_ifindex=7, on_error=seen.append)
    k.up(A("10.20.1.10"), A("10.30.1.5"))
    nl.call("close")
    assert seen and seen[0].startswith("create mip0a1e0105")


# -- GRE (RFC 2784, RFC 5944 3.3's G bit) -------------------------------------------

def test_gre_binding_creates_a_gre_device(nl, fake):
    k = KernelIpipTunnels(nl, A("10.20.1.1"), home_ifindex=7)
    k.up(A("10.20.1.10"), A("10.30.1.5"), gre=True)
    nl.call("close")
    assert requests(fake) == [
        ("link", "add", {"ifname": "mipg0a1e0105", "kind": "gre", "gre_local": "10.20.1.1",
                         "gre_remote": "10.30.1.5", "gre_ttl": 64}),
        ("link", "set", {"ifname": "mipg0a1e0105", "state": "up"}),
        ("route", "replace", {"dst": "10.20.1.10/32", "oif": 101}),
        ("neigh", "replace", {"dst": "10.20.1.10", "ifindex": 7, "flags": NTF_PROXY}),
    ]


def test_gre_and_ipip_to_one_care_of_address_are_two_devices(nl, fake):
    """Bindings to one CoA (an FA) may differ in encapsulation; a node that
    re-registers with G moves from the ipip device to the gre one."""
    k = KernelIpipTunnels(nl, A("10.20.1.1"), home_ifindex=7)
    k.up(A("10.20.1.10"), A("10.30.1.5"))
    k.up(A("10.20.1.11"), A("10.30.1.5"), gre=True)
    k.up(A("10.20.1.10"), A("10.30.1.5"), gre=True)  # same CoA, now GRE
    nl.call("close")
    adds = [(kw["ifname"], kw["kind"]) for m, op, kw in requests(fake)
            if m == "link" and op == "add"]
    dels = [kw["ifname"] for m, op, kw in requests(fake) if m == "link" and op == "del"]
    assert adds == [("mip0a1e0105", "ipip"), ("mipg0a1e0105", "gre")]
    assert dels == ["mip0a1e0105"]
    assert set(k.tunnels) == {(A("10.30.1.5"), True)}
    assert tunnel_name(A("255.255.255.255"), gre=True) == "mipgffffffff"


@pytest.mark.parametrize(("code", "supported"), [(None, True), (errno.EOPNOTSUPP, False),
                                                 (errno.EEXIST, True), (errno.EPERM, False)])
def test_gre_probe(code, supported):
    fake = FakeIPRoute(fail_add=code)
    n = Netlink(lambda: fake)
    try:
        assert gre_supported(n) is supported
        assert fake.calls[0] == ("link", ("add",), {"ifname": "mipgprobe0", "kind": "gre"})
    finally:
        n.close()


class _FakeUserspace:
    """The userspace plane as the kernel plane sees it: which bindings it was given."""

    def __init__(self, gre: bool) -> None:
        from types import SimpleNamespace
        self.home_ifname, self.ha_address, self.home_mac = "home", A("10.20.1.1"), b"\0" * 6
        self.tunnel = SimpleNamespace(gre=object() if gre else None)
        self.arp = SimpleNamespace(announce=lambda *a: None)
        self.up: list[IPv4Address] = []

    def binding_up(self, b) -> None:
        self.up.append(b.home_address)

    def binding_down(self, b) -> None:
        if b.home_address in self.up:
            self.up.remove(b.home_address)


@pytest.mark.parametrize(("kernel_has_gre", "in_kernel"), [(True, True), (False, False)])
def test_gre_binding_in_the_kernel_where_it_has_gre_else_in_userspace(kernel_has_gre,
                                                                        in_kernel):
    from app.agents.bindings import Binding
    from app.agents.ha_kernel import KernelHomeAgentPlane
    from app.mip.messages import RegFlags

    fake = FakeIPRoute(fail_add=None if kernel_has_gre else errno.EOPNOTSUPP)
    n = Netlink(lambda: fake)
    user = _FakeUserspace(gre=True)
    try:
        plane = KernelHomeAgentPlane(n, user)  # type: ignore[arg-type]
        assert plane.kernel_gre is kernel_has_gre
        fake.fail_add = None  # the probe is done; ipip devices can be made
        b = Binding(A("10.20.1.10"), A("10.30.1.5"), 100, 0.0, 100.0,
                    RegFlags.D | RegFlags.G, A("10.30.1.5"), 434)
        plane.binding_up(b)
        n.call("close")
        gre_adds = [kw for m, a, kw in fake.calls
                    if m == "link" and a[0] == "add" and kw.get("ifname") == "mipg0a1e0105"]
        assert bool(gre_adds) is in_kernel
        assert (user.up == [b.home_address]) is not in_kernel
    finally:
        n.close()
