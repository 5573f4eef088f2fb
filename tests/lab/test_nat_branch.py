"""Mode c behind a trusted NAT (RFC 5266 section 4, RFC 3519), with the real helper.

The lab's intranet branch ``bnat`` sits behind a masquerading router
(``tr-bnat``): a trusted network the home agent sees through a NAT.  The
helper's direct registration asks for UDP tunnelling (profile
``udp_tunnelling = "auto"``: the home agent decides from what it sees), the
binding tunnels over UDP 434 from the registration's own port, the helper
sends RFC 3519 keepalives at the interval the home agent gave, and when the NAT
loses its mapping the unanswered keepalives make it register again (4.10): the
home agent never learns a mapping from tunnel data.  A TCP session from the
correspondent node to the home address survives all of it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.lab.configs import write_helper_files
from tests.dbus_client import properties, run_as
from tests.lab.procs import (
    Proc,
    carries_data_again,
    echo_session,
    helper_world,
    history,
    wait_history,
)

KEEPALIVE = 2  # seconds, given by the home agent in its UDP Tunnel Reply


@pytest.fixture(scope="module")
def world(lab, tmp_path_factory) -> Iterator[dict[str, object]]:
    d = tmp_path_factory.mktemp("bnat")
    profiles, secrets = write_helper_files(d, "corp")
    with helper_world(lab.nm_bus(), d, profiles, secrets,
                      ha_extra=f"keepalive_interval = {KEEPALIVE}\n") as w:
        yield w


def test_rfc3519_4_10_mode_c_behind_a_trusted_nat_survives_a_rebinding(lab, world):
    t = time.time()
    lab.move("bnat")
    wait_history(world, t, "mode", {"state": "trusted", "mode": "c"}, timeout=20)
    tunnel = wait_history(world, t, "udp-tunnel")
    assert tunnel["keepalive_s"] == str(KEEPALIVE), tunnel
    ha = world["ha"]
    assert isinstance(ha, Proc)
    ha.wait("via UDP tunnel (NAT)")
    try:
        with echo_session(Path(str(world["dir"]))) as client:
            # The NAT forgets its mapping and maps the next packet to a new port.
            lab.set_nat(fully_random=True, node="tr-bnat")
            lab.flush_nat_mappings("tr-bnat")
            cut = time.time()
            rebind = wait_history(world, cut, "nat-rebind", timeout=4 * KEEPALIVE + 10)
            assert "keepalives" in rebind["text"], rebind
            wait_history(world, cut, "registered", timeout=10)
            # The same TCP session carries data again through the new mapping.
            carries_data_again(client)
    finally:
        lab.set_nat(fully_random=False, node="tr-bnat")
    kinds = [k for tm, k, _ in history(world, 100) if tm >= t]
    assert "gate" in kinds and "nat-rebind" in kinds, kinds
    # Trusted but behind a NAT: the helper says so.
    props = run_as(None, str(world["bus"]), properties)
    assert props["NatDetected"] is True and props["Mode"] == "c", props
