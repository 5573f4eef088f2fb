"""Networks already judged untrusted, remembered by identity (RFC 5266 5), sans-I/O.

The direct probe on an untrusted network shows that network the home agent's
address, the NAI, the home address and an authenticator (RFC 5266 5).  With
``[probe] skip_known_untrusted``, a network whose direct probe went unanswered
is remembered by its identity (an opaque digest the OS side makes of what tells
networks apart: the router's MAC and the link's subnet; see
``app.net.network_identity``), and a later visit goes straight to the VPN with
no direct probe. A network is probed again when its identity changes (another
router, another subnet), when it was judged more than ``recheck_after`` seconds
ago (judged again then, so the verdict never outlives the interval), and when
it answers the probe (a trusted verdict forgets it).  The times are wall-clock
seconds (the store outlives the process and reboots).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.mn.mode_events import RememberNetwork

DEFAULT_RECHECK_AFTER = 7 * 86400.0
"""A week: a network seen untrusted is probed again at least that often."""
MAX_REMEMBERED = 256
"""The oldest verdicts go first: the store stays small whatever a laptop visits."""


@dataclass(frozen=True, slots=True)
class KnownNetworksConfig:
    enabled: bool = False
    """``[probe] skip_known_untrusted``: off by default, so every link change is
    probed as RFC 5266 3.4 describes; on, a known-untrusted network sees no probe."""
    recheck_after: float = DEFAULT_RECHECK_AFTER


class KnownNetworks:
    """Identity -> wall time of its last untrusted verdict (see the module text)."""

    def __init__(self, config: KnownNetworksConfig,
                 entries: Mapping[str, float] | None = None) -> None:
        self.config = config
        self._untrusted: dict[str, float] = dict(entries or {})

    @property
    def entries(self) -> dict[str, float]:
        return dict(self._untrusted)

    def skip_probe(self, network: str | None, wall: float) -> bool:
        """True if ``network`` was judged untrusted recently enough to send no probe.
        A verdict from the future (the clock was set back) counts as stale."""
        if not self.config.enabled or network is None:
            return False
        at = self._untrusted.get(network)
        return at is not None and 0.0 <= wall - at <= self.config.recheck_after

    def judged(self, network: str | None, untrusted: bool,
               wall: float) -> RememberNetwork | None:
        """Record a verdict; the action to persist it, or None if nothing changed."""
        if not self.config.enabled or network is None:
            return None
        if untrusted:
            self._untrusted.pop(network, None)  # re-inserted last: the newest
            self._untrusted[network] = wall
            while len(self._untrusted) > MAX_REMEMBERED:
                del self._untrusted[next(iter(self._untrusted))]
        elif self._untrusted.pop(network, None) is None:
            return None
        return RememberNetwork(network, untrusted, wall)
