"""How fast charon finds a VPN gateway dead, and the DPD that keeps it within a bound.

Pure.  For IKEv2 charon has no per-connection DPD timeout (swanctl.conf(5):
``dpd_timeout`` "has no effect on connections using IKE2"): a liveness check
(DPD, an empty INFORMATIONAL) is retransmitted like every request, on the
GLOBAL ``charon.retransmit_*`` settings of strongswan.conf, and VICI's
``load-conn`` takes only ``dpd_delay``.  So the bound is split in two:

* the retransmissions, which the packaging gives the system's charon
  (``packaging/strongswan/trustroam.conf``; the lab's charon the same,
  ``app.lab.charon``): ``RETRANSMIT_TRIES``/``TIMEOUT``/``BASE`` below, giving up
  after ``retransmit_total()`` seconds (strongSwan's "Retransmission" page:
  timeout * base^(n-1) per retransmission);
* ``dpd_delay``, set per connection by the helper: charon sends a DPD once nothing
  came from the gateway for that long.

charon schedules DPD on whole seconds (``time_monotonic()``; ``send_dpd`` reschedules
at ``delay - diff``), so a DPD may leave up to ``dpd_delay + 1`` s after the last
packet.  A gateway that dies is declared dead at most ``dpd_delay + 1 +
retransmit_total()`` after the last packet it sent, which :func:`dpd_delay_for`
keeps within the profile's ``dead_gateway_after`` -- with the packaged
retransmissions only (a charon on its defaults gives up after 165 s).
"""

from __future__ import annotations

import math

RETRANSMIT_TRIES = 3
RETRANSMIT_TIMEOUT = 1.0
RETRANSMIT_BASE = 1.4
"""charon.retransmit_tries/timeout/base as the packaging sets them (strongSwan's
defaults, 5/4.0/1.8, give up after 165 s)."""


def retransmit_total(tries: int = RETRANSMIT_TRIES, timeout: float = RETRANSMIT_TIMEOUT,
                     base: float = RETRANSMIT_BASE) -> float:
    """Seconds from a request's first send until charon gives up on it."""
    return sum(timeout * base ** n for n in range(tries + 1))


DPD_GRANULARITY = 1.0
"""charon's DPD clock ticks in whole seconds: a DPD may leave this much late."""

MIN_DEAD_AFTER = math.ceil(retransmit_total() + DPD_GRANULARITY + 1)
"""The smallest ``dead_gateway_after`` (seconds) that leaves a DPD delay of 1 s."""


def dpd_delay_for(dead_after: int, dpd_delay: int = 0) -> int:
    """The connection's DPD delay (whole seconds, charon's unit) so that a dead gateway
    is found within ``dead_after`` seconds: the profile's ``dpd_delay`` if smaller
    (0: none asked, the bound decides)."""
    room = math.floor(dead_after - DPD_GRANULARITY - retransmit_total())
    if room < 1:
        raise ValueError(f"{dead_after} s leaves no room for a DPD delay after charon's "
                         f"{retransmit_total():.1f} s of retransmissions")
    return min(room, dpd_delay) if dpd_delay > 0 else room


def detection_bound(dead_after: int, dpd_delay: int = 0) -> float:
    """The worst time from a gateway's last packet to charon declaring it dead."""
    return dpd_delay_for(dead_after, dpd_delay) + DPD_GRANULARITY + retransmit_total()
