"""``trustroamd``: the privileged helper process.

    trustroamd --profile corp.toml                 connect this profile at start
    trustroamd --profiles-dir /etc/trustroam/profiles [--secrets FILE]
    trustroamd ... --vici-socket /run/charon.vici  charon's VICI socket (mode mc)
    trustroamd --lockdown-only                     under lockdown: the shut gate, at boot

At start it connects, in this order: --connect or the first --profile, the
profile connected when the last helper ended (``--state-dir``), or the profile
that says ``autoconnect = true``; with secrets from ``--secrets`` or, if that has
none, from the first secret agent that registers whose user may connect.

Owns ``org.trustroam.Helper1`` on the system bus; SIGTERM or SIGINT deregister
and put routes, addresses and the gate back before it exits (under
``--lockdown`` the gate stays, shut).

Any other end (the bus connection lost, an error) never opens anything: the
gate, routes and VPN are left exactly as they are and the helper exits
non-zero, so that systemd (Restart=on-failure) starts it again; the next start
replaces the gate left behind by its own start-up gate in one nftables
transaction and reconnects the last connected profile with the last policy,
both kept in ``--state-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from app.api import BUS_NAME, OBJECT_PATH, Policy
from app.config import ConfigError
from app.net import resolver
from app.net.gate import GateError, TrafficGate, remove_table, shut_left_gate
from app.net.ipip import compiled_engine_available
from app.net.mn_routes import Backend, default_backend
from app.net.portal_probe import DEFAULT_EXPECTED, DEFAULT_PROBE_URL, validate_probe_url
from app.net.sleep import ResumeWatcher
from app.service import bus as busio
from app.service.bus import BusType, Message, MessageBus, MessageType, RequestNameReply
from app.service.dbus_api import HelperInterface, SenderAwareBus, call_secret_agent
from app.service.gateway_cache import GatewayCache
from app.service.helper import Helper, HelperError, LeftGate
from app.service.lockdown import DEFAULT_CONFIG, install_lockdown_gate, load_config
from app.service.polkit import Authorizer
from app.service.portal import DEFAULT_SIGNIN_SECONDS, MAX_SIGNIN_SECONDS
from app.service.profiles import ProfileDirectory, ProfileError, gate_policy, load_profile
from app.service.secrets import AGENT_TIMEOUT, SecretError, SecretSource
from app.service.state import DEFAULT_DIR as DEFAULT_STATE_DIR
from app.service.state import FILE as STATE_FILE
from app.service.state import HelperState, StateError
from app.service.state import load as load_state
from app.vpn.charon import DEFAULT_SOCKET as DEFAULT_VICI_SOCKET
from app.vpn.charon import VpnError

log = logging.getLogger("trustroamd")
DEFAULT_PROFILES = Path("/etc/trustroam/profiles")
STARTUP_RESOLVE_TIMEOUT = 2.0
"""Seconds the start-up gate waits for gateway names (the bus name waits on it)."""
EXIT_BUS_LOST = 3
"""The bus connection ended under the helper: a failure, so systemd restarts it."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="trustroamd", description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", action="append", type=Path, default=[],
                    help="a profile file; the first one is connected at start")
    ap.add_argument("--profiles-dir", type=Path, default=DEFAULT_PROFILES)
    ap.add_argument("--secrets", type=Path, default=None,
                    help="headless: root-only TOML file with [profile] mn_ha_key")
    ap.add_argument("--connect", default=None, help="connect this profile at start")
    ap.add_argument("--links", choices=("auto", "nm", "rtnetlink"), default="auto",
                    help="where link events come from (auto: NetworkManager if it runs)")
    ap.add_argument("--dataplane", choices=("auto", "userspace", "kernel"), default="auto")
    ap.add_argument("--vici-socket", default=DEFAULT_VICI_SOCKET, metavar="PATH",
                    help="strongSwan charon's VICI socket, for profiles with a [vpn] table "
                         "(default %(default)s)")
    ap.add_argument("--agent-timeout", type=float, default=AGENT_TIMEOUT,
                    help="seconds a secret agent has to answer (default %(default)s)")
    ap.add_argument("--state-dir", type=Path, default=None,
                    help="where the policy and the last profile are kept across restarts "
                         f"(the unit gives {DEFAULT_STATE_DIR}; without it, nowhere)")
    ap.add_argument("--lockdown", action="store_true",
                    help="an administrator's kill switch: a user's Disconnect (and the "
                         "helper's stop) leave the gate installed and shut "
                         "(as lockdown = true in --config)")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                    help="the helper's configuration (default %(default)s; optional)")
    ap.add_argument("--lockdown-only", action="store_true",
                    help="under lockdown, install the shut gate if none is, and exit "
                         "(trustroam-lockdown.service, before network-pre.target)")
    ap.add_argument("--shut-gate", action="store_true",
                    help="shut the proven path of a gate a stopped helper left, and exit "
                         "(the unit's ExecStopPost)")
    ap.add_argument("--portal-probe-url", default=DEFAULT_PROBE_URL, metavar="URL",
                    help="captive-portal probe: an http:// URL whose answer is "
                         f"{DEFAULT_EXPECTED!r} where the network lets us out; "
                         '"" never probes')
    ap.add_argument("--signin-seconds", type=float, default=DEFAULT_SIGNIN_SECONDS,
                    help="how long a captive-portal sign-in window may send in clear")
    ap.add_argument("--log-level", default="info",
                    choices=("debug", "info", "warning", "error"))
    return ap.parse_args(argv)


async def serve(args: argparse.Namespace) -> int:
    portal_probe = validate_probe_url(args.portal_probe_url, "--portal-probe-url",
                                      "command line") if args.portal_probe_url else None
    if not 0 < args.signin_seconds <= MAX_SIGNIN_SECONDS:
        raise ConfigError("command line", "--signin-seconds",
                          f"must be more than 0 and at most {MAX_SIGNIN_SECONDS:g}")
    kept = kept_state(args.state_dir, lockdown=args.lockdown)
    first: str | None = args.connect
    for path in args.profile:  # check at start: a bad profile is the user's first error
        p = load_profile(path)
        first = first or p.name
    first = first or kept.profile  # the profile connected when the last helper ended
    first = first or _autoconnect(args)
    left = await shut_left_gate()
    if left:
        log.info("a gate left by an earlier helper: its proven path is shut")
    installed = await _gate_first(args, first)
    if args.lockdown and not installed and not left:
        # Lockdown with nothing to connect (or a profile without a gate): shut
        # before the bus, polkit or anything else; held like a Disconnect's.
        left = await install_lockdown_gate()
        log.info("lockdown: the gate is installed and shut until a profile connects "
                 "or an administrator releases it")
    backend = await default_backend() if args.dataplane == "auto" else Backend(args.dataplane)
    bus = await SenderAwareBus(bus_type=BusType.SYSTEM).connect()
    secrets = SecretSource(lambda *a: call_secret_agent(bus, *a), args.secrets,
                           agent_timeout=args.agent_timeout,
                           session_check=lambda peer: busio.session_check(bus, peer))
    helper = Helper(profiles_dir=args.profiles_dir, extra_profiles=args.profile,
                    secrets=secrets, backend=backend, links=args.links, bus=bus,
                    vici_socket=args.vici_socket, state_dir=args.state_dir,
                    lockdown=args.lockdown, initial=kept,
                    portal_probe=portal_probe, signin_seconds=args.signin_seconds)
    if left and not installed:
        # Nothing to connect: the gate left behind stays shut until a Connect
        # replaces it or configure lifts it (SetPolicy auto or never-vpn).
        helper.held_gate = LeftGate()
    # What a crashed helper's [dns] left (NetworkManager keeps its global DNS across
    # reboots), whatever profile connects now, or none.
    await resolver.clean_left(args.state_dir, bus)
    face = HelperInterface(helper, Authorizer(bus))

    def lost(name: str) -> None:
        secrets.forget_name(name)
        face.forget_name(name)

    await watch_names_lost(bus, lost)
    bus.export(OBJECT_PATH, face)
    reply = await bus.request_name(BUS_NAME)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        print(f"trustroamd: {BUS_NAME} is already owned (another trustroamd runs?)",
              file=sys.stderr)
        bus.disconnect()
        return 1
    pending: set[asyncio.Task[None]] = set()

    def resumed() -> None:  # under the helper's lock, like Reprobe()
        task = asyncio.create_task(helper.reprobe(quiet=True))
        pending.add(task)
        task.add_done_callback(pending.discard)

    resume = ResumeWatcher(bus, resumed)
    await resume.start()
    plane = backend.value
    if backend is Backend.USERSPACE:
        plane += f", {'compiled' if compiled_engine_available() else 'python'} tunnel engine"
    log.info("serving %s (data plane %s)", BUS_NAME, plane)
    print(f"trustroamd: serving {BUS_NAME} (data plane {plane})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if first is not None:
        try:
            await helper.connect(first)
        except SecretError as exc:
            # No secret in the file: the first agent of a user allowed to connect
            # gives it (dbus_api's RegisterSecretAgent); until then the gate holds.
            helper.pending_start = first
            log.error("cannot connect %s yet: %s; waiting for a user's secret agent",
                      first, exc)
            await face.connect_pending_with_registered()
        except (HelperError, GateError, VpnError) as exc:
            log.error("cannot connect %s: %s", first, exc)
        hold_startup_gate(helper, installed)
    stop_task = asyncio.create_task(stop.wait())
    bus_gone = asyncio.create_task(bus.wait_for_disconnect())
    await asyncio.wait({stop_task, bus_gone}, return_when=asyncio.FIRST_COMPLETED)
    if not stop.is_set():
        # Not a stop anybody asked for: nothing is opened.  The gate, routes and VPN
        # stay as they are; systemd restarts the helper, which adopts them.
        why = "ended" if bus_gone.done() and bus_gone.exception() is None else (
            f"lost: {bus_gone.exception()}" if bus_gone.done() else "lost")
        log.error("the system bus connection %s; leaving the gate as it is and exiting "
                  "for a restart", why)
        print(f"trustroamd: the system bus connection {why}; exiting (the gate stays)",
              file=sys.stderr, flush=True)
        os._exit(EXIT_BUS_LOST)  # no clean-up of any kind: none may open the gate
    log.info("stopping: deregistering and putting the host back")
    with contextlib.suppress(HelperError):
        await helper.stop()
    if installed and not args.lockdown and isinstance(helper.held_gate, (LeftGate, type(None))):
        # The start-up gate of a profile that never connected (no secret yet, say):
        # Disconnect had nothing to remove, but the host goes back all the same.
        await remove_table()
    resume.close()
    bus.disconnect()
    return 0


def kept_state(directory: Path | None, *, lockdown: bool) -> HelperState:
    """The state the last helper kept; a file that cannot be believed is ignored
    with a warning naming it (exiting would only restart into the same error), and
    under lockdown the fallback is always-vpn: closed, but a user can connect."""
    if directory is None:
        return HelperState()
    try:
        return load_state(directory)
    except StateError as exc:
        fallback = HelperState(Policy.ALWAYS_VPN if lockdown else Policy.AUTO, None)
        log.warning("%s; the state file %s is ignored (policy %s, no profile to connect)",
                    exc, directory / STATE_FILE, fallback.policy.value)
        return fallback


def hold_startup_gate(helper: Helper, installed: bool) -> None:
    """The start-up gate of a profile whose connect failed (no secret yet, an agent
    without the key, a helper error), lockdown or not: held like a Disconnect's, so
    that Disconnect, SetPolicy auto/never-vpn, ReleaseGate or a later Connect can
    lift or replace it (else it stays shut with nothing owning it)."""
    if installed and helper.driver is None and helper.held_gate is None:
        helper.held_gate = LeftGate()


def _autoconnect(args: argparse.Namespace) -> str | None:
    """The profile that says ``autoconnect = true`` (the first by name if several
    do; the others are named in the log)."""
    try:
        found = ProfileDirectory(args.profiles_dir, args.profile).load()
    except ProfileError as exc:
        log.error("no autoconnect: %s", exc)
        return None
    auto = sorted(name for name, p in found.items() if p.autoconnect)
    if len(auto) > 1:
        log.warning("several profiles say autoconnect = true (%s): connecting %s",
                    ", ".join(auto), auto[0])
    return auto[0] if auto else None


async def _gate_first(args: argparse.Namespace, first: str | None) -> bool:
    """The gate table before anything else: no packet leaves undecided while the
    helper starts (bus, polkit, secrets).  A profile that cannot be read here is
    reported by the connect that follows."""
    if first is None:
        return False
    candidates = [*args.profile]
    if args.profiles_dir is not None:
        candidates.append(args.profiles_dir / f"{first}.toml")
    for path in candidates:
        try:
            prof = load_profile(path)  # non-blocking: a FIFO must not hold the start
        except (ConfigError, OSError):
            continue
        if prof.name == first and prof.gate_enabled:
            # Gateway names resolve within a bound (a left gate may hold DNS): the
            # connect that follows resolves them again and records any left out.
            await TrafficGate(await gate_policy(
                prof, timeout=STARTUP_RESOLVE_TIMEOUT,
                cache=GatewayCache(args.state_dir))).install()
            return True
    return False


async def watch_names_lost(bus: MessageBus, lost: Callable[[str], None]) -> None:
    """Call ``lost(name)`` whenever a bus name loses its owner (a client went away).

    One match rule for all of them (arg2='' is "no new owner"), not one per agent:
    a match per agent would hit the bus's per-connection limit under churn.
    """
    rule = ("type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
            "member='NameOwnerChanged',arg2=''")
    await busio.call(bus, Message(destination=busio.BUS_DAEMON, path="/org/freedesktop/DBus",
                                  interface=busio.BUS_DAEMON, member="AddMatch",
                                  signature="s", body=[rule]),
                     busio.BUS_TIMEOUT, "the bus daemon")

    def on(msg: Message) -> None:
        if (msg.message_type is MessageType.SIGNAL and msg.member == "NameOwnerChanged"
                and msg.sender == busio.BUS_DAEMON and msg.signature == "sss"
                and not msg.body[2]):
            lost(str(msg.body[0]))

    bus.add_message_handler(on)


def _lockdown_only(args: argparse.Namespace) -> int:
    """The boot unit's command.  A configuration that cannot be read is taken as
    lockdown (fail closed: it may say so); the error is printed all the same."""
    failed = 0
    try:
        lockdown = args.lockdown or load_config(args.config).lockdown
    except ConfigError as exc:
        print(f"trustroamd: {exc}; installing the lockdown gate all the same",
              file=sys.stderr)
        lockdown, failed = True, 2
    if not lockdown:
        print("trustroamd: not under lockdown: no gate installed")
        return 0
    done = asyncio.run(install_lockdown_gate())
    print("trustroamd: " + ("lockdown: the gate is installed and shut" if done
                            else "lockdown: a gate is installed already"))
    return failed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if os.geteuid() != 0:
        print("trustroamd: must run as root (it changes routes and the firewall)",
              file=sys.stderr)
        return 2
    try:
        if args.shut_gate:  # first, whatever the configuration says: every stop shuts
            shut = asyncio.run(shut_left_gate())
            print("trustroamd: " + ("the gate left behind is shut" if shut
                                    else "no gate was left behind"))
            return 0
        if args.lockdown_only:
            return _lockdown_only(args)
        args.lockdown = args.lockdown or load_config(args.config).lockdown
        return asyncio.run(serve(args))
    except (ConfigError, StateError) as exc:
        print(f"trustroamd: {exc}", file=sys.stderr)
        return 2
    except (OSError, GateError) as exc:
        print(f"trustroamd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
