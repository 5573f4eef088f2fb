"""The VPN adapter: strongSwan's charon driven over VICI, kept off the event loop.

VICI (the ``vici`` package) is blocking, so:

* commands run on ONE dedicated thread (a single-worker executor: charon sees
  them in order), each bounded by a timeout on the loop side; a call that
  overruns has its socket shut down, which unblocks the thread at once;
* events arrive on a SECOND session in its own thread, which reconnects with
  exponential backoff (``backoff_min`` doubling to ``backoff_max``) and hands
  every event to the loop with ``call_soon_threadsafe``.

An absent, restarting or refusing charon is reported once as
``VpnUnreachable("VPN service not reachable at <socket>")`` and every call fails
fast with ``VpnUnreachableError`` carrying the same sentence.  When charon answers
again the adapter reloads the profile's connection and secrets and reports
``VpnServiceUp``; bringing the tunnel back (``initiate``) is the caller's decision.

Secrets are held in memory only to reload them into a restarted charon; they go
to charon over VICI and nowhere else (never in logs or exception texts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any, TypeVar

import vici
import vici.exception

from app.errors import UserFacingError
from app.errors import reason as _reason
from app.vpn import credentials, event_stream, vici_messages
from app.vpn.events import (
    EVENT_NAMES,
    DownKind,
    SaInfo,
    VpnDown,
    VpnEvent,
    VpnServiceUp,
    VpnUnreachable,
    VpnUp,
    sa_infos,
    translate,
)
from app.vpn.profile import SECRET_KEY_PASSPHRASE, SECRET_KEYS, VpnConfig
from app.vpn.vici_messages import Certificates, SecretMissing

log = logging.getLogger("trustroam.vpn")

DEFAULT_SOCKET = "/run/charon.vici"
T = TypeVar("T")

_PROTOCOL_ERRORS = (OSError, vici.exception.SessionException,
                    vici.exception.DeserializationException, ValueError,
                    struct.error)  # (a reply too short to parse: garbage, not a crash)


class VpnError(UserFacingError):
    """A VPN operation failed; the message is one line for the user, secret-free."""


class VpnUnreachableError(VpnError):
    """charon is absent, restarting, refusing, or did not answer in time."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(f"{message} ({reason})")
        self.reason = reason


class VpnCommandError(VpnError):
    """charon answered and refused (e.g. the gateway did not answer or authenticate)."""


class VpnConfigError(VpnError):
    """The profile or its secrets cannot be loaded; the message names the key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class _Session:
    """A connected VICI session and its socket (closed from any thread to unblock it)."""

    def __init__(self, path: str, timeout: float, generation: int = 0) -> None:
        self.generation = generation
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.vici = vici.Session(self.sock)

    def abort(self) -> None:
        """Shut the socket down: a thread blocked in recv on it returns at once."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.abort()
        with contextlib.suppress(OSError):
            self.sock.close()


class Charon:
    """The adapter.  Create it on the event loop's thread, ``await start()``, then
    ``load``/``initiate``/``terminate``/``sa``/``tia``; ``await close()`` at the end.
    ``on_event`` (given here, once: nobody rewires it later) is called on the loop's
    thread with each ``VpnEvent``."""

    event_body_timeout = event_stream.BODY_TIMEOUT
    """Seconds for an event packet to come whole once begun (tests shorten it)."""

    def __init__(self, socket_path: str | os.PathLike[str] = DEFAULT_SOCKET,
                 on_event: Callable[[VpnEvent], None] | None = None, *,
                 call_timeout: float = 5.0, ike_timeout: float = 10.0,
                 backoff_min: float = 0.2, backoff_max: float = 5.0,
                 name: str = vici_messages.CONNECTION) -> None:
        self.path = str(socket_path)
        self._on_event = on_event
        self.call_timeout = call_timeout
        self.ike_timeout = ike_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.name = name
        self.unreachable_message = f"VPN service not reachable at {self.path}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cmd = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vici-cmd")
        self._cmd_session: _Session | None = None
        self._generation = 0
        """Counts the listener's connections; written by the listener thread only."""
        self._ev_session: _Session | None = None
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self._op = asyncio.Lock()
        self._reachable: bool | None = None
        self._cfg: VpnConfig | None = None
        self._secrets: dict[str, str] = {}
        self._certs = Certificates()
        self._key: bytes | None = None
        self._key_ids: set[str] = set()
        """Ids of the private keys loaded into charon (``load-key``'s answer)."""
        self._gateway: str | None = None
        self._loaded_gw: str | None = None
        self._up_ike: int | None = None
        self._terminating = False
        self._reload_task: asyncio.Task[None] | None = None
        self._resync_tasks: set[asyncio.Task[None]] = set()
        self._child_closed_in: int | None = None
        """The IKE SA whose CHILD SA charon reported closed (the IKE SA staying):
        ``initiate`` rekeys what it still lists there before using it."""

    # -- state -----------------------------------------------------------------

    @property
    def reachable(self) -> bool:
        return bool(self._reachable)

    @property
    def gateway(self) -> str | None:
        """The gateway of the last successful ``initiate``."""
        return self._gateway

    @property
    def loaded_gateway(self) -> str | None:
        """The gateway whose connection charon holds now: the one an ``initiate`` under
        way is trying (its CHILD SA's event comes before ``initiate`` returns)."""
        return self._loaded_gw

    # -- life cycle ------------------------------------------------------------

    async def start(self) -> bool:
        """Start the event listener; returns whether charon answered (never raises
        because charon is absent: the helper runs without it and says so)."""
        self._loop = asyncio.get_running_loop()
        self._first_attempt = self._loop.create_future()
        self._listener = threading.Thread(target=self._listen_forever, name="vici-events",
                                          daemon=True)
        self._listener.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._first_attempt), self.call_timeout)
        return self.reachable

    async def close(self) -> None:
        """Unload what we loaded into charon (connection, secrets, key), then stop:
        after Disconnect or the helper's stop nothing of the profile stays in charon."""
        if not self._stop.is_set() and (self._cfg is not None or self._key_ids):
            try:
                # Bounded: an initiate still holding the command lock is not waited for.
                async with asyncio.timeout(2 * self.call_timeout):
                    await self.unload()
            except (VpnError, TimeoutError) as exc:
                # Unreachable or refusing: a charon that comes back has lost them.
                log.warning("could not unload the VPN profile from charon: %s",
                            exc or "no answer in time")
        self._stop.set()
        if self._reload_task is not None:
            self._reload_task.cancel()
        for s in (self._ev_session, self._cmd_session):
            if s is not None:
                s.abort()
        if self._listener is not None:
            await asyncio.to_thread(self._listener.join, self.call_timeout)
        self._cmd.shutdown(wait=False, cancel_futures=True)
        if self._cmd_session is not None:
            self._cmd_session.close()
        self._secrets = {}
        self._key = None

    # -- commands ----------------------------------------------------------------

    async def load(self, cfg: VpnConfig, secrets: Mapping[str, str]) -> None:
        """Load the profile's connection (first gateway) and credentials into charon."""
        try:
            vici_messages.load_shared(cfg, secrets, self.name)  # every needed secret is there
        except SecretMissing as exc:
            raise VpnConfigError(exc.key, f"missing: auth = {cfg.auth.value!r} needs it"
                                 ) from None
        try:
            # Non-blocking opens, bounded reads: a FIFO or a device named here is
            # refused at once, whatever lock the caller holds.
            certs, key = await asyncio.to_thread(credentials.read, cfg,
                                                 secrets.get(SECRET_KEY_PASSPHRASE))
        except credentials.CredentialError as exc:
            raise VpnConfigError(exc.key, exc.message) from None
        async with self._op:
            self._cfg, self._certs, self._key = cfg, certs, key
            self._secrets = {k: v for k, v in secrets.items() if k in SECRET_KEYS and v}
            await self._push(cfg.gateways[0])

    async def _push(self, gateway: str) -> None:
        """Send connection and credentials (idempotent: charon replaces by name/id)."""
        cfg = self._cfg
        assert cfg is not None
        conn = vici_messages.load_conn(cfg, gateway, self._certs, self.name)
        shared = vici_messages.load_shared(cfg, self._secrets, self.name)
        key = self._key

        def push(s: vici.Session) -> None:
            if key is not None:
                reply = s.load_key(vici_messages.load_key(key))
                key_id = reply.get("id") if isinstance(reply, Mapping) else None
                if isinstance(key_id, bytes | str) and key_id:
                    # Its id, to unload it: charon keeps a key until told.
                    self._key_ids.add(key_id if isinstance(key_id, str)
                                      else key_id.decode("ascii", "replace"))
            for m in shared:
                s.load_shared(m)
            s.load_conn(conn)

        await self._call("load", push, self.call_timeout)
        self._loaded_gw = gateway
        log.info("loaded connection %s to %s (%s)", self.name, gateway,
                 ", ".join(vici_messages.describe(conn[self.name])))

    async def initiate(self, order: Sequence[str] = ()) -> SaInfo:
        """Bring the tunnel up, trying the gateways in ``order`` (default: the
        profile's), each for at most the profile's ``dead_gateway_after``; an
        existing tunnel is returned as is (MOBIKE keeps it across moves).
        ``terminate()`` meanwhile aborts it (VpnCommandError) without waiting."""
        cfg = self._require_loaded()
        gateways = tuple(g for g in order if g in cfg.gateways) or cfg.gateways
        patience = min(self.ike_timeout, float(cfg.dead_gateway_after))
        async with self._op:
            self._terminating = False
            current = await self._sas()
            if any(sa.up for sa in current):
                sa = next(sa for sa in current if sa.up)
                if sa.ike_id == self._child_closed_in:
                    await self._rekey_child(sa.ike_id)
                return sa
            failures: list[str] = []
            for gw in gateways:
                if gw != self._loaded_gw:
                    await self._push(gw)
                try:
                    await self._call("initiate", lambda s: list(s.initiate(
                        vici_messages.initiate(self.name, patience))),
                        patience + self.call_timeout)
                except VpnCommandError as exc:
                    if self._terminating:
                        raise VpnCommandError("terminated while connecting") from None
                    failures.append(f"{gw}: {exc}")
                    await self._terminate()  # stop charon retrying this one
                    continue
                up = [sa for sa in await self._sas() if sa.up]
                if up:
                    self._gateway = gw
                    return up[0]
                failures.append(f"{gw}: no tunnel after initiation")
            raise VpnCommandError(all_down(failures))

    async def _rekey_child(self, ike_id: int) -> None:
        """A CHILD SA of this IKE SA was reported closed while charon still lists
        one installed: after a rekey collision (both ends rekey on a MOBIKE move,
        kernel-libipsec) a DELETE of the old SA taken as a plain close leaves the
        peer's replacement with its inbound SA only (charon installs the outbound
        one on the rekeyed path alone) -- listed INSTALLED, carrying nothing out.
        Our own rekey installs a fresh pair both ways."""
        self._child_closed_in = None
        try:
            await self._call("rekey", lambda s: s.rekey(vici_messages.rekey_child(ike_id)),
                             self.call_timeout)
        except VpnCommandError as exc:
            log.info("rekeying the CHILD SA of IKE SA %d failed: %s", ike_id, exc)
        else:
            log.info("rekeyed the CHILD SA of IKE SA %d (one of its CHILD SAs was "
                     "closed while the IKE SA stayed)", ike_id)

    async def terminate(self, *, wait: bool = True) -> None:
        """Tear the tunnel down, or abort a pending ``initiate`` (no error if there is
        none).  Not queued behind a slow initiate: it has its own VICI session.
        ``wait=False``: the DELETE goes once and the SA is gone at once, answered or
        not (leaving for a trusted network the gateway may be out of reach: a new
        VPN must not wait behind the old one's retransmissions)."""
        self._terminating = True
        await self._terminate(own_session=True, wait=wait)

    async def _terminate(self, *, own_session: bool = False, wait: bool = True) -> None:
        patience = self.call_timeout / 2 if wait else 0.0

        def stop(s: vici.Session) -> None:
            try:
                list(s.terminate(vici_messages.terminate(self.name, patience)))
            except vici.exception.CommandException as exc:
                if "no matching" not in str(exc):
                    raise
        await self._call("terminate", stop, self.call_timeout, own_session=own_session)

    async def unload(self) -> None:
        """Remove our connection, shared secrets and private key from charon (each
        one not there is no error); ``close`` does it."""
        cfg, key_ids = self._cfg, sorted(self._key_ids)
        if cfg is None and not key_ids:
            return

        def unload(s: vici.Session) -> None:
            if cfg is not None:
                with contextlib.suppress(vici.exception.CommandException):
                    s.unload_conn(vici_messages.unload_conn(self.name))
                for m in vici_messages.unload_shared(cfg, self.name):
                    with contextlib.suppress(vici.exception.CommandException):
                        s.unload_shared(m)
            for key_id in key_ids:
                with contextlib.suppress(vici.exception.CommandException):
                    s.unload_key(vici_messages.unload_key(key_id))
        async with self._op:
            # Forgotten here first: even if charon does not answer, nothing of them
            # is pushed again (a restarted charon has lost them anyway).
            self._cfg, self._secrets, self._key, self._loaded_gw = None, {}, None, None
            self._key_ids = set()
            await self._call("unload", unload, self.call_timeout)

    async def sa(self) -> SaInfo | None:
        """Our IKE SA as charon shows it (the established one first), or None."""
        sas = await self._sas()
        sas.sort(key=lambda sa: not sa.up)
        return sas[0] if sas else None

    async def tia(self) -> IPv4Address | None:
        """The tunnel inner address (charon's ``local-vips``) while the tunnel is up."""
        sa = await self.sa()
        return sa.tia if sa is not None and sa.up else None

    async def _sas(self) -> list[SaInfo]:
        # Its own session: status reads never wait behind a slow initiate.
        listing = await self._call("list-sas",
                                   lambda s: list(s.list_sas(vici_messages.list_sas(self.name))),
                                   self.call_timeout, own_session=True)
        return sa_infos(listing, self.name)

    def _require_loaded(self) -> VpnConfig:
        if self._cfg is None:
            raise VpnError("no VPN profile loaded (call load first)")
        return self._cfg

    # -- the command thread --------------------------------------------------------

    async def _call(self, what: str, fn: Callable[[vici.Session], T], timeout: float, *,
                    own_session: bool = False) -> T:
        """Run ``fn`` on the command thread (in order), or with ``own_session`` on a
        fresh session in a worker thread (for what must not queue behind it)."""
        loop = asyncio.get_running_loop()
        holder: list[_Session] = []
        if own_session:
            fut = loop.run_in_executor(None, self._run_own, what, fn, timeout, holder)
        else:
            fut = loop.run_in_executor(self._cmd, self._run, what, fn, timeout)
        try:
            result = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            session = holder[0] if holder else self._cmd_session
            if session is not None:
                session.abort()  # unblocks the thread; the next call reconnects
            reason = f"no answer to {what} within {timeout:g} s"
            self._mark_unreachable(reason)
            raise VpnUnreachableError(self.unreachable_message, reason) from None
        except VpnUnreachableError as exc:
            self._mark_unreachable(exc.reason)
            raise
        self._mark_reachable()
        return result

    def _run_own(self, what: str, fn: Callable[[vici.Session], T], timeout: float,
                 holder: list[_Session]) -> T:
        """On a worker thread: a session of its own for one call."""
        if self._stop.is_set():
            raise VpnUnreachableError(self.unreachable_message, "adapter closed")
        try:
            session = _Session(self.path, self.call_timeout)
        except OSError as exc:
            raise VpnUnreachableError(self.unreachable_message, _reason(exc)) from None
        holder.append(session)
        try:
            return self._exchange(session, what, fn, timeout)
        finally:
            session.close()

    def _run(self, what: str, fn: Callable[[vici.Session], T], timeout: float) -> T:
        """On the command thread: (re)connect, run, translate failures."""
        if self._stop.is_set():
            raise VpnUnreachableError(self.unreachable_message, "adapter closed")
        generation = self._generation
        if self._cmd_session is not None and self._cmd_session.generation != generation:
            # The listener saw charon go and come back since this session was opened:
            # it talks to a dead daemon.
            self._cmd_session.close()
            self._cmd_session = None
        if self._cmd_session is None:
            try:
                self._cmd_session = _Session(self.path, self.call_timeout, generation)
            except OSError as exc:
                raise VpnUnreachableError(self.unreachable_message, _reason(exc)) from None
        session = self._cmd_session
        try:
            return self._exchange(session, what, fn, timeout)
        except VpnUnreachableError:
            self._cmd_session = None
            raise

    def _exchange(self, session: _Session, what: str, fn: Callable[[vici.Session], T],
                  timeout: float) -> T:
        session.sock.settimeout(timeout)
        try:
            return fn(session.vici)
        except vici.exception.CommandException as exc:
            raise VpnCommandError(self._scrub(f"charon refused {what}: "
                                              f"{_command_error(exc)}")) from None
        except _PROTOCOL_ERRORS as exc:
            session.close()
            reason = (f"no answer to {what} within {timeout:g} s"
                      if isinstance(exc, TimeoutError) else _reason(exc))
            raise VpnUnreachableError(self.unreachable_message, reason) from None

    def _scrub(self, text: str) -> str:
        for v in self._secrets.values():
            if v:
                text = text.replace(v, "***")
        return text

    # -- the event thread --------------------------------------------------------

    def _listen_forever(self) -> None:
        delay = self.backoff_min
        resync = False
        while not self._stop.is_set():
            try:
                session = _Session(self.path, self.call_timeout)
            except OSError as exc:
                self._to_loop(self._mark_unreachable, _reason(exc))
            else:
                self._generation += 1  # a (possibly new) charon: command sessions reconnect
                self._ev_session = session
                try:
                    delay = self._listen(session, resync)
                    resync = False
                except event_stream.FramingError as exc:
                    # charon answers, but events may have been lost: reconnect and
                    # compare our SA with charon's list.
                    if not self._stop.is_set():
                        log.warning("charon at %s: the event stream is out of step (%s); "
                                    "reconnecting", self.path, exc)
                        resync, delay = True, self.backoff_min
                except _PROTOCOL_ERRORS as exc:
                    if not self._stop.is_set():
                        self._to_loop(self._mark_unreachable, _reason(exc))
                except Exception as exc:  # anything else: the thread must not die
                    if not self._stop.is_set():
                        log.warning("charon at %s: the event listener failed (%s: %s); "
                                    "reconnecting", self.path, type(exc).__name__, exc)
                        resync = True
                finally:
                    self._ev_session = None
                    session.close()
            self._to_loop(self._first_attempt_done)
            # Backoff on a real clock: a restarting charon is polled, not hammered.
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.backoff_max)

    def _listen(self, session: _Session, resync: bool = False) -> float:
        """Register and relay events until the connection breaks; returns the next
        reconnect delay (the minimum again, since this connection worked).  ``resync``:
        events were lost before; charon's SAs are listed once registered."""
        # Not vici's listen: one malformed event must not end the stream (event_stream).
        event_stream.register(session.vici, EVENT_NAMES, self.call_timeout)
        if resync:
            self._to_loop(self._resync)
        events = event_stream.events(session.vici, 0.2, self.path, self.event_body_timeout)
        with contextlib.closing(events):
            first = True
            for label, message in events:
                if first:
                    # Registered: charon answers.
                    self._to_loop(self._mark_reachable)
                    self._to_loop(self._first_attempt_done)
                    first = False
                if self._stop.is_set():
                    break
                if label is not None:
                    self._to_loop(self._relay, label, message)
        return self.backoff_min

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closed meanwhile
            loop.call_soon_threadsafe(fn, *args)

    # -- on the loop ---------------------------------------------------------------

    def _first_attempt_done(self) -> None:
        if self._first_attempt is not None and not self._first_attempt.done():
            self._first_attempt.set_result(None)

    def _relay(self, label: bytes, message: Mapping[str, Any]) -> None:
        for ev in translate(label, message, self.name):
            out = ev
            if isinstance(ev, VpnUp):
                self._up_ike = ev.ike_id
                self._child_closed_in = None  # a CHILD SA set up whole, both ways
            elif isinstance(ev, VpnDown):
                if self._up_ike == ev.ike_id:
                    self._up_ike = None
                if ev.kind is DownKind.CHILD:
                    self._child_closed_in = ev.ike_id
                if self._terminating:
                    out = replace(ev, reason="terminated", kind=DownKind.TERMINATED)
            self._emit(out)

    def _resync(self) -> None:
        if not self._stop.is_set():
            task = asyncio.get_running_loop().create_task(self._check_up_sa())
            self._resync_tasks.add(task)
            task.add_done_callback(self._resync_tasks.discard)

    async def _check_up_sa(self) -> None:
        """After lost events: the SA we report up, if charon no longer lists it up,
        is reported down (as its ike-updown would have)."""
        ike = self._up_ike
        if ike is None:
            return
        try:
            sas = await self._sas()
        except VpnError as exc:
            log.info("charon's SAs not listed after lost events: %s", exc)
            return
        if self._up_ike == ike and not any(sa.ike_id == ike and sa.up for sa in sas):
            self._up_ike = None
            self._emit(VpnDown("the VPN tunnel went while charon's events were lost", ike))

    def _mark_unreachable(self, reason: str) -> None:
        if self._stop.is_set() or self._reachable is False:
            return
        self._reachable = False
        log.warning("%s (%s)", self.unreachable_message, reason)
        if self._up_ike is not None:
            self._emit(VpnDown("VPN service stopped", self._up_ike, DownKind.SERVICE))
            self._up_ike = None
        self._emit(VpnUnreachable(self.unreachable_message))

    def _mark_reachable(self) -> None:
        was = self._reachable
        self._reachable = True
        if was is False and not self._stop.is_set():
            log.info("VPN service at %s answers again", self.path)
            self._reload_task = asyncio.get_running_loop().create_task(self._after_restart())

    async def _after_restart(self) -> None:
        """charon came back: give it our connection and secrets again, then say so."""
        if self._cfg is not None:
            try:
                async with self._op:
                    await self._push(self._gateway or self._cfg.gateways[0])
            except VpnError as exc:
                log.warning("reloading the VPN profile failed: %s", exc)
                return
        self._emit(VpnServiceUp(self.path))

    def _emit(self, ev: VpnEvent) -> None:
        log.debug("vpn event %s", type(ev).__name__)
        if self._on_event is None:
            return
        try:
            self._on_event(ev)
        except Exception:
            log.exception("VPN event handler failed on %s", type(ev).__name__)


ALL_DOWN = "every VPN gateway is down"


def all_down(failures: Sequence[str]) -> str:
    """The status when no gateway brought the tunnel up: each one tried, and why."""
    return f"{ALL_DOWN} (tried " + "; ".join(failures) + ")"


def _command_error(exc: vici.exception.CommandException) -> str:
    return str(exc).removeprefix("Command failed: ") or "failed"
