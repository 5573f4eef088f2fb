"""The lab's captive portal on pub (``Lab.up(portal=True)``): every HTTP request of a
client that has not signed in is redirected to the sign-in page and its IKE/NAT-T
never leaves pub, until a form is posted from that client's MAC address."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.lab import portal
from app.lab.world import Lab
from tests.lab.conftest import a_lab, mn_address, ns_exec
from tests.lab.procs import capture, mac_of_mn

GW1 = "172.16.0.11"


@pytest.fixture(scope="module")
def portal_lab() -> Iterator[Lab]:
    yield from a_lab(at="pub", portal=True)


def _head(url: str) -> tuple[str, str]:
    """(status code, Location) of one GET from the MN, redirects not followed."""
    out = ns_exec("tr-mn", "curl", "-s", "-o", "/dev/null", "--max-time", "3", "-w",
                  "%{http_code} %{redirect_url}", url)
    code, _, location = out.stdout.partition(" ")
    return code, location


def _ike_leaves_pub() -> bool:
    """Whether a UDP datagram to the gateway's IKE port from the MN gets past pub's
    router (seen on its far side, ext)."""
    cap = capture("tr-fw", "ext", f"udp and dst host {GW1} and dst port 500")
    try:
        ns_exec("tr-mn", "bash", "-c", f"echo ike > /dev/udp/{GW1}/500")
        ns_exec("tr-mn", "ping", "-c1", "-W1", GW1)  # after it on the same path
        try:
            cap.out.wait(f"> {GW1}.", timeout=2)
        except TimeoutError:
            return False
        return True
    finally:
        cap.stop()


def test_portal_redirects_every_http_request_and_blocks_ike_until_signed_in(portal_lab):
    mn_address(prefix="203.0.113.")
    assert portal_lab.portal_signed() == []
    for url in ("http://198.51.100.77/check_network_status.txt", "http://10.20.1.99/"):
        assert _head(url) == ("302", portal.PAGE), url
    assert _head(portal.PAGE)[0] == "200"
    assert not _ike_leaves_pub()

    posted = ns_exec("tr-mn", "curl", "-s", "--max-time", "3", "-d", "terms=accepted",
                     portal.PAGE)
    assert portal.SIGNED_PAGE_TEXT in posted.stdout, posted
    assert portal_lab.portal_signed() == [mac_of_mn()]
    assert _ike_leaves_pub()
    requests = portal_lab.portal_log().read_text()
    assert "POST" in requests and "10.20.1.99" in requests
    # Signed in: HTTP goes where it was sent, no longer to the portal.
    before = len(requests.splitlines())
    _head("http://198.51.100.77/check_network_status.txt")
    assert len(portal_lab.portal_log().read_text().splitlines()) == before
