"""Names on the road (issue 19): at every stop of a walk, through the MN's own
systemd-resolved, an intranet name and a public name resolve, by the intranet's
resolver, and no DNS packet crosses the untrusted links in clear.

The lab is a desktop here (app.lab.dns): the real NetworkManager hands each
visited network's DHCP resolver to systemd-resolved, and the home link's DHCP
announces the intranet's.  The profile's ``[dns]`` table names the intranet's
resolver; the helper puts it on the home address's link (``~.``).  A visited
network's resolver answers the public name with another address than the
intranet's: the answer says which resolver gave it.  ``getent`` runs in the MN's
namespace, where ``/etc/resolv.conf`` points at resolved's stub (127.0.0.53).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from app.lab import dns as lab_dns
from app.lab.configs import write_helper_files
from app.lab.topology import MN
from app.lab.world import Lab
from tests.lab.conftest import a_lab
from tests.lab.leaks import TSHARK
from tests.lab.procs import GW1, helper_world, mac_of_mn, wait_history
from tests.lab.vpn_walk import bridge_capture
from tests.requirements import require

WALK = (("t1", "c"), ("fa1", "f"), ("pub", "mc"), ("nat", "mc"), ("t2", "c"), ("home", "h"))
UNTRUSTED = ("pub", "nat")
INTRANET_NAME = "cn.corp.example"
DNS_TABLE = (f'[dns]\nservers = ["{lab_dns.INTRANET_RESOLVER}"]\n'
             f'domains = ["{lab_dns.CORP_DOMAIN}"]\n')

@pytest.fixture(autouse=True)
def _resolved_installed() -> None:
    require(lab_dns.available(), "systemd-resolved is not installed (scripts/install-deps)")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from a_lab(nm=True, gw_inside=False)


@pytest.fixture(scope="module")
def world(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("dns")
    profiles, secrets = write_helper_files(d, "corp", vpn_gateways=(GW1,))
    profile = profiles / "corp.toml"
    profile.write_text(profile.read_text() + DNS_TABLE)
    with helper_world(lab.nm_bus(), d, profiles, secrets) as w:
        yield w


def lookup(name: str, want: str, timeout: float = 20) -> str:
    """``getent hosts name`` in the MN until it answers ``want`` (bounded: a link's
    resolver settings reach resolved a moment after the mode); the last answer."""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        r = subprocess.run(["ip", "netns", "exec", MN, "getent", "hosts", name],
                           capture_output=True, text=True, timeout=30, check=False)
        out = r.stdout.strip()
        if out.split()[:1] == [want]:
            return out
        time.sleep(0.1)  # resolved signals nothing a test could await
    return out


def resolver_state(lab: Lab) -> str:
    r = subprocess.run(["ip", "netns", "exec", MN, "resolvectl", "status"],
                       env={"DBUS_SYSTEM_BUS_ADDRESS": lab.nm_bus(), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=10, check=False)
    return r.stdout + r.stderr


def link_servers(lab: Lab, link: str, want: str, present: bool, timeout: float = 10) -> str:
    """``resolvectl dns link`` until ``want`` is (or is not) among its servers."""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        r = subprocess.run(["ip", "netns", "exec", MN, "resolvectl", "dns", link],
                           env={"DBUS_SYSTEM_BUS_ADDRESS": lab.nm_bus(),
                                "PATH": "/usr/bin:/bin"},
                           capture_output=True, text=True, timeout=10, check=False)
        out = r.stdout + r.stderr
        if (want in out.split()) is present:
            break
        time.sleep(0.1)  # resolved signals nothing a test could await
    return out


def resolved_calls() -> str:
    """The MN's resolved's log of the link settings it was sent (failure messages)."""
    from app.lab.world import CHARON_DIR
    try:
        text = (CHARON_DIR / "nm" / "resolved.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n" + "\n".join(line for line in text.splitlines()
                             if "member=SetLink" in line or "member=RevertLink" in line)


def dns_frames(pcap: Path) -> list[str]:
    """Every DNS (or LLMNR, mDNS) frame tshark finds in ``pcap``, in any port."""
    assert TSHARK is not None
    out = subprocess.run([TSHARK, "-n", "-r", str(pcap), "-Y", "dns || llmnr || mdns"],
                         capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if line.strip()]


def frames(pcap: Path, display_filter: str) -> int:
    assert TSHARK is not None
    out = subprocess.run([TSHARK, "-n", "-r", str(pcap), "-Y", display_filter],
                         capture_output=True, text=True, check=True)
    return len([line for line in out.stdout.splitlines() if line.strip()])


def resolver_log(name: str) -> str:
    """The query log of a lab resolver: ``intranet`` or a visited network's name."""
    from app.lab.world import STATE_DIR
    try:
        return (STATE_DIR / f"dns-{name}.log").read_text(errors="replace")
    except OSError:
        return ""


def visited_domains_go_home(net: str) -> None:
    """Names under the visited DHCP's search domains (its own, and a longer suffix of
    the intranet's) are asked of the intranet's resolver, which says NXDOMAIN, and
    never of the visited network's (resolved would route them there: review finding 1)."""
    for name, visited_answer in lab_dns.VISITED_NAMES.items():
        try:
            r = subprocess.run(["ip", "netns", "exec", MN, "getent", "hosts", name],
                               capture_output=True, text=True, timeout=30, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{net}: {name} had no answer: resolved sent it to the visited "
                        "network's resolver (the link's search domain), the gate dropped it")
        assert visited_answer not in r.stdout, (net, name, r.stdout)
        deadline = time.monotonic() + 5
        while f" {name} " not in resolver_log("intranet") and time.monotonic() < deadline:
            time.sleep(0.05)  # dnsmasq writes its log a moment after answering
        assert f" {name} " in resolver_log("intranet"), (net, name, "not asked home")
        assert f" {name} " not in resolver_log(net), (net, name, "asked the visited")


def test_issue19_names_resolve_by_the_intranet_at_every_stop_and_no_dns_in_clear(
        lab: Lab, world: dict[str, object]) -> None:
    d = Path(str(world["dir"]))
    wait_history(world, 0, "mode", {"mode": "h"}, timeout=25)
    mac = mac_of_mn()
    with ExitStack() as stack:
        pcaps = {net: stack.enter_context(bridge_capture(d / f"dns-{net}.pcap", net,
                                                         f"ether host {mac}"))
                 for net in UNTRUSTED}
        previous = "h"
        for i, (net, mode) in enumerate((("home", "h"), *WALK)):
            t = time.time()
            if i > 0:  # the first stop is where the lab starts
                lab.move(net)
                # mc -> mc: MOBIKE moves the VPN, the mode does not change.
                wait_history(world, t, *(("mobike",) if previous == mode == "mc"
                                         else ("mode", {"mode": mode})), timeout=25)
            previous = mode
            intranet = lookup(INTRANET_NAME, lab_dns.CORP_NAMES[INTRANET_NAME])
            public = lookup(lab_dns.PUBLIC_NAME, lab_dns.PUBLIC_BY_INTRANET)
            print(f"   {net} ({mode}): {intranet!r}, {public!r} "
                  f"{time.time() - t:.3f} s after the move", flush=True)
            state = resolver_state(lab)
            assert intranet.split()[:1] == [lab_dns.CORP_NAMES[INTRANET_NAME]], (net, state)
            # The intranet's answer, not the visited resolver's: the lookup went home.
            assert public.split()[:1] == [lab_dns.PUBLIC_BY_INTRANET], (net, state)
            if mode in ("c", "mc"):
                visited_domains_go_home(net)
            if net == "pub":
                # The visited network's resolver is still on the link (NetworkManager put
                # it there from DHCP) and unused: "~." on the tunnel takes every name.
                visited = lab_dns.resolver_of(lab.topo, lab.topo.access["pub"])
                out = link_servers(lab, "eth0", visited, True)
                assert visited in out.split(), out + resolved_calls()
        # Back home (its DHCP gives the intranet's resolver): nothing of ours is left
        # on the tunnel device.
        out = link_servers(lab, "trmn0", lab_dns.INTRANET_RESOLVER, False)
        assert lab_dns.INTRANET_RESOLVER not in out.split(), out
    for net in UNTRUSTED:
        clear = dns_frames(pcaps[net])
        assert not clear, f"{net}: DNS in clear:\n" + "\n".join(clear[:10])
        # Not judged on an empty capture: the lookups there went through the VPN.
        assert frames(pcaps[net], "esp || udp.port == 4500") > 0, f"{net}: no VPN traffic"
