"""A NAT rebinding under mode mc, measured per layer (the lab test and
``benchmarks/mc_nat_rebind_bench.py`` share it).

The MN in mc behind the lab's NAT (``tr-nat``) and a gateway that NATs its pool
(``Lab.up(gw_pool_nat=True)``).  Both NATs are made fully random and forget
every mapping at once (conntrack flushed): the next packet out of each gets a
new port.  Then:

- IPsec: the gateway keeps sending ESP-in-UDP to the old outer port until the
  MN's charon, from the NAT-D payloads of its next DPD (MOBIKE, RFC 4555 3.8),
  sees its mapping changed and updates the SA's addresses; recovered = the
  gateway's IKE SA names the new port.  charon compares with the mapping of the
  SA's first NAT-D exchange: a rebinding before that one is never noticed (ESP
  to the MN then stays black-holed), so the MN reaches ``nat`` by a MOBIKE move;
- Mobile IP: the home agent never learns a mapping from tunnel data (RFC 3519),
  so the keepalives through the VPN go unanswered and the helper registers again
  (4.10, history ``nat-rebind``); recovered = the next ``registered``;
- TCP: the correspondent's session echoes again.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass

from app.lab import charon as lab_charon
from app.lab.world import CHARON_DIR, Lab
from tests.lab.procs import Proc, carries_data_again, dump_world, history, wait_history

GW_VICI = lab_charon.directory(CHARON_DIR, "tr-gw1") / "charon.vici"
MN_LOG = lab_charon.directory(CHARON_DIR, "tr-mn") / "charon.log"
REMOTE = re.compile(r"remote\s+'[^']*'\s+@\s+([\d.]+)\[(\d+)\]")


def gateway_peer() -> tuple[str, int] | None:
    """The outer address and port the gateway's IKE SA sends to (the MN's mapping)."""
    out = subprocess.run(["swanctl", "--list-sas", "--uri", f"unix://{GW_VICI}"],
                         capture_output=True, text=True, timeout=10, check=False).stdout
    m = REMOTE.search(out)
    return (m.group(1), int(m.group(2))) if m else None


def dpd_seen_since_ike_auth() -> bool:
    """The MN's IKE SA had an INFORMATIONAL exchange carrying NAT-D (a DPD, or a
    MOBIKE move's UPDATE_SA_ADDRESSES) since it was made.  charon (5.9) takes the
    first such answer as the baseline of its NAT mapping
    (``ike_sa.has_mapping_changed``): a rebinding before it is never noticed, and
    the gateway (a MOBIKE responder does not follow NAT-T by itself) keeps sending
    ESP to the old port.  DPD runs only when nothing came in for ``dpd_delay``:
    a busy SA made behind a NAT gets no baseline until it moves."""
    lines = MN_LOG.read_text(errors="replace").splitlines()
    made = max((i for i, ln in enumerate(lines) if "parsed IKE_AUTH response" in ln),
               default=-1)
    return any("parsed INFORMATIONAL response" in ln and "NATD_D_IP" in ln
               for ln in lines[made + 1:])


def wait_first_dpd(timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not dpd_seen_since_ike_auth():
        if time.monotonic() > deadline:
            raise AssertionError(f"no DPD in {MN_LOG} within {timeout} s")
        time.sleep(0.1)  # charon's log is the only trace of a DPD exchange


@dataclass(frozen=True)
class Recovery:
    ipsec_s: float
    """Flush -> the gateway's IKE SA follows the new outer mapping."""
    mobile_ip_s: float
    """Flush -> registered again through the VPN (keepalives unanswered first)."""
    tcp_s: float
    """Flush -> the correspondent's TCP session echoes again."""


def rebind(lab: Lab, world: dict[str, object], client: Proc, timeout: float = 60) -> Recovery:
    """Both NATs lose their mappings at once; returns when every layer recovered."""
    wait_first_dpd()
    before = gateway_peer()
    assert before is not None, "no IKE SA at the gateway"
    lab.set_nat(fully_random=True)
    lab.set_pool_nat(fully_random=True)
    try:
        cut = time.time()
        lab.flush_nat_mappings("tr-nat")
        lab.flush_nat_mappings("tr-gw1")
        ipsec = None
        deadline = time.monotonic() + timeout
        while ipsec is None:
            peer = gateway_peer()
            if peer is not None and peer != before:
                ipsec = time.time() - cut
            elif time.monotonic() > deadline:
                dump_world(f"the gateway's SA still sends to {before}")
                raise AssertionError(f"the gateway's SA still sends to {before}")
            else:
                time.sleep(0.05)  # charon reports an address update by no event we get
        wait_history(world, cut, "nat-rebind", timeout=timeout)
        wait_history(world, cut, "registered", timeout=timeout)
        registered = min(t for t, k, _ in history(world, 200) if t >= cut and k == "registered")
        carries_data_again(client, timeout=timeout)
        tcp = time.time() - cut
        return Recovery(round(ipsec, 2), round(registered - cut, 2), round(tcp, 2))
    finally:
        lab.set_nat(fully_random=False)
        lab.set_pool_nat(fully_random=False)
