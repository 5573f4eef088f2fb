"""charon's side of mode mc: charon's events in, the access-mode machine's events out.

The driver owns the loop; this module owns what talks to charon for one profile:
loading the connection and its secrets, bringing the tunnel up (a task: a slow
charon never holds the driver's queue), tearing it down, and reading charon's NAT
detection again after a MOBIKE move.  It never calls back into its owner: what
its tasks learn goes into the ``events`` sink it is given (charon's own events,
as the driver's queue takes them, and the machine's ``VpnNat``), and what the history
should say into the ``history`` sink.  :meth:`VpnLink.translate` turns one
charon event into the machine's events (``VpnUp`` -> ``VpnReady`` ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Coroutine, Mapping
from ipaddress import IPv4Address
from typing import Any

from app.mn import access_mode as am
from app.mn.mode_events import VpnNat
from app.vpn.charon import Charon, VpnConfigError, VpnError, VpnUnreachableError
from app.vpn.events import (
    ChildRekeyed,
    DownKind,
    IkeRekeyed,
    MobikeUpdate,
    VpnDown,
    VpnEvent,
    VpnServiceUp,
    VpnUnreachable,
    VpnUp,
)
from app.vpn.peers import gateway_of, peer_refusal
from app.vpn.profile import VpnConfig

log = logging.getLogger("trustroam.mn")
NO_TIA = "the gateway gave no IPv4 inner address (is a virtual IP pool configured for us?)"
MOBIKE_SETTLE = 1.0
"""Seconds after charon's ike-update to read its NAT detection again (kernel ESP)."""


History = Callable[[str, dict[str, str]], None]


class VpnLink:
    """One profile's VPN through charon, for the driver.

    :meth:`begin` (the connection loaded, at start); :meth:`start` and :meth:`stop` it as the
    machine's ``StartVpn``/``StopVpn`` say; :meth:`translate` each charon event into
    the machine's events; :meth:`close` at the end (tasks cancelled, the tunnel
    torn down; charon's session is closed by its owner).
    """

    def __init__(self, charon: Charon, cfg: VpnConfig, secrets: Mapping[str, str], *,
                 events: Callable[[VpnEvent | VpnNat], None], history: History,
                 allowed_peers: Collection[IPv4Address] | None = None,
                 addresses_of: Callable[[str], Collection[IPv4Address]] | None = None
                 ) -> None:
        """``allowed_peers``: the gate's gateway addresses (None: no gate); an SA with
        another peer is refused (``app.vpn.peers``).  ``addresses_of``: a gateway
        name's last resolved addresses (an SA is named from its peer)."""
        self.charon = charon
        self.allowed_peers = allowed_peers
        self._addresses_of = addresses_of
        self._order: tuple[str, ...] = ()
        self._cfg = cfg
        self._secrets = secrets  # as given, not copied: its repr hides the values
        self._events = events
        self._history = history
        self._loaded = False
        self._task: asyncio.Task[None] | None = None
        """charon bringing the tunnel up."""
        self._stopping: asyncio.Task[None] | None = None
        self._side: set[asyncio.Task[None]] = set()
        """Short reads of charon's state: kept referenced until done."""

    async def begin(self) -> None:
        """At start: load the connection, or say charon cannot be reached (an event)."""
        if not self.charon.reachable:
            self._events(VpnUnreachable(self.charon.unreachable_message))
        else:
            await self.load()

    async def load(self) -> bool:
        """The profile's connection and secrets into charon (again after a restart
        the adapter did not see loaded); a refusal is said once, never raised."""
        try:
            await self.charon.load(self._cfg, self._secrets)
        except VpnConfigError as exc:
            self._error(f"the VPN cannot be set up: {exc}")
            return False
        except VpnUnreachableError as exc:
            self._events(VpnUnreachable(str(exc)))
            return False
        except VpnError as exc:
            self._error(f"charon refused the VPN's configuration: {exc}")
            return False
        self._loaded = True
        return True

    def start(self, order: tuple[str, ...] = ()) -> None:
        """Bring the tunnel up (one attempt at a time), trying the gateways in
        ``order`` (empty: the profile's); the outcome comes as events."""
        self._order = order
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._initiate(), name="vpn-initiate")

    def stop(self, reason: str) -> None:
        """Tear the tunnel down (an attempt under way is cancelled)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        self._history("vpn-stop", {"reason": reason})
        self._stopping = asyncio.create_task(self._terminate(), name="vpn-terminate")

    async def close(self) -> None:
        for task in list(self._side):
            task.cancel()
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(VpnError):
            await self.charon.terminate()  # charon itself: its owner closes it

    def translate(self, ev: VpnEvent) -> list[am.Event]:
        """One charon event: its history line, and the machine's events for it."""
        if isinstance(ev, VpnUp):
            if ev.tia is None or not isinstance(ev.tia, IPv4Address):
                # Mode mc needs one: say so, and let the machine retry later.
                self._history("vpn-error", {"text": NO_TIA})
                return [am.VpnLost(NO_TIA)]
            # Named from the SA's own peer: a late SA (a reauthentication to the first
            # gateway, an initiate given up) is not the loaded one's.  Failing that,
            # the gateway being tried: after a failover charon's event comes before
            # initiate's answer, when ``gateway`` still names the dead one.
            gw = gateway_of(ev.gateway.host, self._cfg.gateways,
                            self.charon.loaded_gateway or self.charon.gateway
                            or str(ev.gateway.host), self._addresses_of)
            refused = peer_refusal(ev.gateway.host, self.allowed_peers,
                                   f"gateway {gw} set the IKE SA up")
            if refused is not None:
                return self._refuse(refused, ev.ike_id, gw)
            gw_ip = ev.gateway.host if isinstance(ev.gateway.host, IPv4Address) else None
            return [am.VpnReady(ev.tia, gw, ev.ike_id, gateway_address=gw_ip,
                                nat_detected=ev.nat_detected, local=str(ev.local),
                                remote=str(ev.gateway))]
        if isinstance(ev, MobikeUpdate):
            self._history("mobike", {"local": str(ev.local), "remote": str(ev.remote)})
            refused = peer_refusal(ev.remote.host, self.allowed_peers,
                                   "MOBIKE moved the IKE SA (RFC 4555 3.6)")
            if refused is not None:
                return self._refuse(refused, ev.ike_id)
            # With kernel ESP no CHILD rekey follows (below): no event says when the
            # UPDATE_SA_ADDRESSES exchange (its NAT detection) is done, so ask again
            # a moment later.
            self._spawn(self._refresh_nat(ev.ike_id, MOBIKE_SETTLE))
            local = ev.local.host if isinstance(ev.local.host, IPv4Address) else None
            return [am.VpnMoved(local)]
        if isinstance(ev, IkeRekeyed):
            self._history("ike-rekey", {"old": str(ev.old_ike_id), "new": str(ev.new_ike_id)})
            return [am.VpnRekeyed(ev.old_ike_id, ev.new_ike_id)]
        if isinstance(ev, ChildRekeyed):
            self._history("child-rekey", {"ike": str(ev.ike_id)})
            # After a MOBIKE move (ike-update comes as the addresses switch, before the
            # exchange that detects NATs) the CHILD SA is rekeyed: by then charon knows
            # whether a NAT is in the new path.
            self._spawn(self._refresh_nat(ev.ike_id))
            return []
        if isinstance(ev, VpnDown):
            self._history("vpn-down", {"reason": ev.reason})
            # The IKE SA itself died (DPD, retransmissions, the gateway's delete): its
            # gateway is gone.  Not a CHILD SA alone, our own teardown, nor charon
            # itself gone (that says nothing of the gateway, and must not reorder it).
            gone = ev.ike_id is not None and ev.kind is DownKind.IKE_GONE
            return [am.VpnLost(ev.reason, ev.ike_id, gateway_gone=gone)]
        if isinstance(ev, VpnUnreachable):
            self._history("vpn-unreachable", {"text": ev.message})
            return [am.VpnServiceLost(ev.message)]
        if isinstance(ev, VpnServiceUp):
            self._history("vpn-service-up", {"socket": ev.socket})
            return [am.VpnServiceBack()]
        return []

    def _refuse(self, reason: str, ike_id: int, gateway: str = "") -> list[am.Event]:
        """An SA whose peer the gate has no room for: said, torn down, the next gateway
        (an initiate still under way is dropped: it would report the same SA)."""
        log.warning("%s", reason)
        self._history("vpn-peer-refused", {"text": reason})
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._task = None
        self._stopping = asyncio.create_task(self._terminate(), name="vpn-terminate")
        return [am.VpnLost(reason, ike_id, gateway_gone=True, gateway=gateway)]

    # -- tasks -------------------------------------------------------------------

    def _error(self, text: str) -> None:
        log.error("%s", text)
        self._history("vpn-error", {"text": text})
        self._events(VpnUnreachable(text))

    async def _initiate(self) -> None:
        """charon brings the tunnel up (or finds it up: MOBIKE kept it)."""
        if self._stopping is not None:  # a teardown still going must not cut this one
            with contextlib.suppress(Exception):
                await asyncio.shield(self._stopping)
        if not self._loaded and not await self.load():
            return
        # The order tried (app.mn.gateway_order): a remembered gateway first.
        self._history("vpn-starting", {"gateways": ",".join(self._order)} if self._order else {})
        try:
            sa = await self.charon.initiate(self._order)
        except VpnUnreachableError as exc:
            self._events(VpnUnreachable(str(exc)))
            return
        except VpnError as exc:
            self._events(VpnDown(str(exc)))
            return
        if sa.tia is not None and sa.remote is not None and sa.local is not None:
            self._events(VpnUp(sa.tia, sa.remote, sa.local, sa.nat_detected, sa.ike_id))
        elif sa.tia is None:
            self._events(VpnDown(NO_TIA))

    async def _terminate(self) -> None:
        try:
            await self.charon.terminate(wait=False)
        except VpnError as exc:
            log.info("the VPN was not torn down: %s", exc)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    async def _refresh_nat(self, ike_id: int, after: float = 0.0) -> None:
        if after:
            await asyncio.sleep(after)
        try:
            sa = await self.charon.sa()
        except VpnError:
            return
        if sa is not None and sa.ike_id == ike_id:
            self._events(VpnNat(ike_id, sa.nat_detected))
