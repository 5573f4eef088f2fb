"""``trustroamctl``: the helper's D-Bus API from a terminal.

    trustroamctl status [--json]     state, mode, addresses, probes, binding, handover;
                                     with a VPN: TIA, gateway, its probe, NAT
    trustroamctl connect PROFILE [--ask]   (polkit: org.trustroam.connect); --ask: a
                                     secret no agent has is asked for on the terminal
    trustroamctl disconnect | reprobe
    trustroamctl policy auto|always-vpn|never-vpn   (polkit: org.trustroam.connect)
    trustroamctl release             lift lockdown's shut gate (org.trustroam.configure)
    trustroamctl monitor             events and changes as they happen (Ctrl-C ends)
    trustroamctl history [N] | profiles
    trustroamctl profile list | show NAME
    trustroamctl profile import FILE            (polkit: org.trustroam.configure)
    trustroamctl profile set NAME KEY=VALUE...  (a dotted KEY for a table: probe.retries;
                                                 an empty VALUE removes the key)
    trustroamctl profile edit NAME              ($VISUAL or $EDITOR, checked before saving)
    trustroamctl profile delete NAME
    trustroamctl release-gate        (root) remove the traffic gate a dead helper left
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable
from typing import Any

from app import __version__
from app.api import (
    BUS_NAME,
    INTERFACE,
    NAT_IPSEC,
    NAT_MOBILE_IP,
    OBJECT_PATH,
    Mode,
    Policy,
    Probe,
    Snapshot,
    State,
)
from app.client_bus import (
    NAME_GONE,
    BusType,
    DBusError,
    Message,
    MessageBus,
    MessageFlag,
    MessageType,
    add_match,
    finite,
    get_name_owner,
    owner_change,
    owner_rule,
    shown,
    unwrap,
)
from app.config import ConfigError
from app.ctl_ask import AGENT_PATH, TerminalAgent
from app.ctl_polkit import tty_agent
from app.mn import profile as schema
from app.net.gate import GateError, remove_table
from app.profile_edit import EditError, apply, dumps

PROPS = "org.freedesktop.DBus.Properties"
MODE_TEXT = {Mode.NONE: "no mode", Mode.HOME: "mode h (at home)",
             Mode.COLOCATED: "mode c (co-located care-of address)",
             Mode.FOREIGN_AGENT: "mode f (foreign agent care-of address)",
             Mode.VPN: "mode mc (Mobile IP inside the VPN)"}


AUTHORIZED = frozenset({"Connect", "Disconnect", "Reprobe", "SetPolicy", "SaveProfile",
                        "DeleteProfile", "ReleaseGate"})
"""The calls polkit may ask about."""


class CtlError(Exception):
    pass


async def call(bus: MessageBus, member: str, signature: str = "", body: list[Any] | None = None,
               interface: str = INTERFACE) -> Any:
    # A person runs trustroamctl: polkit may ask them for a password (D-Bus's
    # ALLOW_INTERACTIVE_AUTHORIZATION; the helper allows interaction only with it).
    flags = (MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if sys.stdin.isatty()
             else MessageFlag.NONE)
    msg = Message(destination=BUS_NAME, path=OBJECT_PATH, interface=interface, member=member,
                  signature=signature, body=body or [], flags=flags)
    if member in AUTHORIZED and interface == INTERFACE:
        with tty_agent():  # no desktop agent (console, ssh): polkit asks on this terminal
            reply = await bus.call(msg)
    else:
        reply = await bus.call(msg)
    if reply is None:
        raise CtlError("no reply from trustroamd")
    if reply.message_type is MessageType.ERROR:
        text = reply.body[0] if reply.body else reply.error_name
        if reply.error_name in NAME_GONE:
            text = f"trustroamd is not running ({BUS_NAME} is not on the system bus)"
        raise CtlError(shown(text, 500))
    return reply.body


async def properties(bus: MessageBus) -> dict[str, Any]:
    body = await call(bus, "GetAll", "s", [INTERFACE], PROPS)
    return {str(k): unwrap(v) for k, v in body[0].items()}


def snapshot(props: dict[str, Any]) -> Snapshot:
    try:
        return Snapshot.from_dbus(props)
    except (ValueError, TypeError) as exc:
        raise CtlError(f"trustroamd sent a value this trustroamctl does not know: "
                       f"{shown(exc)}") from None


def _ago(t: float, now: float) -> str:
    s = max(0, int(now - t))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago"


def _left(t: float, now: float) -> str:
    s = int(t - now)
    if s <= 0:
        return "expired"
    return f"{s // 60}m {s % 60:02d}s left" if s >= 60 else f"{s} s left"


def _probe(p: Probe, now: float) -> str:
    return (("reachable" if p.reachable else "not answering") +
            f", RTT {p.rtt_ms:.1f} ms (answered {_ago(p.answered_at, now)})")


def render(snap: Snapshot, now: float) -> str:
    head = f"trustroam: {snap.state.value}"
    if snap.state in (State.TRUSTED, State.UNTRUSTED) or snap.mode is not Mode.NONE:
        head += f", {MODE_TEXT[snap.mode]}"
    lines = [head]
    if snap.error:
        lines.append(f"  error          {shown(snap.error, 500)}")
    if snap.captive_portal:
        lines.append(f"  CaptivePortal  sign in at {shown(snap.captive_portal, 500)} "
                     "(the tray's \"Sign in to this network...\")")

    def row(label: str, value: str) -> None:
        if value:
            lines.append(f"  {label:<14} {shown(value)}")

    row("profile", snap.profile or "(not connected)")
    row("interface", snap.interface)
    row("home address", snap.home_address)
    row("care-of", snap.care_of_address)
    ha = snap.home_agent_probe
    if snap.mode is Mode.VPN:
        # The direct probe is expected to fail in mc; the registration through the
        # VPN is the proof (RFC 5266 3.1.4, 3.4.1): "not answering" would mislead.
        row("home agent", "reached through the VPN (registered through it)"
            if snap.binding_expires else "through the VPN, not registered yet")
    elif ha.answered_at:
        row("home agent", _probe(ha, now))
    elif snap.profile:
        row("home agent", "no answer yet")
    vpn = snap.vpn_probe
    # The VPN rows only where a VPN is part of the picture: in mode mc, with a
    # gateway in use, or a gateway that answered (kept alive inside, RFC 5266 3.4.2).
    if snap.mode is Mode.VPN or snap.vpn_gateway or vpn.answered_at:
        row("TIA", f"{snap.tunnel_inner_address} (tunnel inner address)"
            if snap.tunnel_inner_address else "none yet (the VPN is not up)")
        row("VPN gateway", snap.vpn_gateway or "none in use")
        row("VPN probe", _probe(vpn, now) if vpn.answered_at else "no answer yet")
    row("binding", _left(snap.binding_expires, now) if snap.binding_expires else "")
    row("last handover", f"{snap.last_handover_ms:.1f} ms" if snap.last_handover_ms >= 0
        else "")
    row("NAT", nat_text(snap))
    row("policy", snap.policy.value)
    return "\n".join(lines)


NAT_WORDS = {NAT_IPSEC: "IPsec NAT-T to the gateway",
             NAT_MOBILE_IP: "Mobile IP UDP tunnel, RFC 3519"}


def nat_text(snap: Snapshot) -> str:
    """Which layers found a NAT (RFC 5266 4); "" for none."""
    if not snap.nat_detected:
        return ""
    words = [NAT_WORDS[n] for n in snap.nat_layers if n in NAT_WORDS]
    return f"detected ({'; '.join(words)})" if words else "detected"


async def run(args: argparse.Namespace) -> int:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    try:
        if args.cmd == "status":
            props = await properties(bus)
            if args.json:  # JSON escapes control characters itself
                print(json.dumps(props, indent=2, sort_keys=True))
            else:
                print(render(snapshot(props), time.time()))
        elif args.cmd == "connect":
            agent = TerminalAgent(bus) if args.ask else None
            if agent is not None:
                await call(bus, "RegisterSecretAgent", "o", [AGENT_PATH])
            connect = asyncio.ensure_future(call(bus, "Connect", "s", [args.profile]))
            if agent is not None:
                stop = asyncio.ensure_future(agent.interrupted.wait())
                await asyncio.wait({connect, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if agent.interrupted.is_set():  # Ctrl-C at the prompt: nothing was sent
                    connect.cancel()
                    with contextlib.suppress(BaseException):
                        await connect
                    print("trustroamctl: interrupted", file=sys.stderr)
                    return 130
            await connect
            print(f"connected {shown(args.profile)}")
        elif args.cmd == "disconnect":
            await call(bus, "Disconnect")
            print("disconnected")
        elif args.cmd == "reprobe":
            await call(bus, "Reprobe")
        elif args.cmd == "policy":
            await call(bus, "SetPolicy", "s", [args.policy])
            print(f"policy {args.policy}")
        elif args.cmd == "release":
            await call(bus, "ReleaseGate")
            print("gate released: traffic is no longer blocked by TrustRoam")
        elif args.cmd == "history":
            for t, kind, details in (await call(bus, "GetHistory", "u", [args.n]))[0]:
                print(_event_line(finite(t), kind, details))
        elif args.cmd == "profiles" or (args.cmd == "profile" and args.action == "list"):
            for name in (await call(bus, "ListProfiles"))[0]:
                print(shown(name))
        elif args.cmd == "profile":
            await profile_command(bus, args)
        elif args.cmd == "monitor":
            await monitor(bus)
    finally:
        bus.disconnect()
    return 0


MAX_PROFILE_FILE = 64 * 1024
"""Bytes of a profile file to import (the helper takes no more; a real one is ~400)."""


def checked(text: str, source: str) -> str:
    """``text`` if the profile parser takes it; else the parser's one line, which
    names the key (the helper judges again: a newer one may know more)."""
    try:
        schema.loads(text, source)
    except ConfigError as exc:
        raise CtlError(str(exc)) from None
    return text


def read_profile_file(path: str) -> str:
    """A profile file to import ("-": standard input); without a ``name``, the
    file's stem is its name."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_PROFILE_FILE + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_PROFILE_FILE + 1)
    except OSError as exc:
        raise CtlError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    if len(data) > MAX_PROFILE_FILE:
        raise CtlError(f"{path}: longer than {MAX_PROFILE_FILE} bytes: not a profile")
    try:
        text = data.decode()
        doc = tomllib.loads(text)
    except UnicodeDecodeError:
        raise CtlError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise CtlError(f"{path}: not valid TOML: {exc}") from None
    if "name" not in doc and path != "-":
        doc = {"name": os.path.basename(path).removesuffix(".toml"), **doc}
        text = dumps(doc)
    return checked(text, path)


async def profile_command(bus: MessageBus, args: argparse.Namespace) -> None:
    if args.action == "show":
        print((await call(bus, "GetProfile", "s", [args.name]))[0], end="")
    elif args.action == "import":
        name = (await call(bus, "SaveProfile", "s", [read_profile_file(args.file)]))[0]
        print(f"saved {shown(name)}")
    elif args.action == "set":
        text = (await call(bus, "GetProfile", "s", [args.name]))[0]
        try:
            new = apply(text, args.assignments)
        except EditError as exc:
            raise CtlError(f"profile {shown(args.name, 64)}: {exc}") from None
        if tomllib.loads(new).get("name") != args.name:
            raise CtlError("name: a profile is renamed by importing it under the new name "
                           "(profile show, then profile import) and deleting the old")
        await call(bus, "SaveProfile", "s", [checked(new, f"profile {args.name}")])
        print(f"saved {shown(args.name)}")
    elif args.action == "edit":
        text = (await call(bus, "GetProfile", "s", [args.name]))[0]
        edited = edit_in_editor(text, args.name)
        if edited is None:
            print(f"{shown(args.name)}: unchanged")
            return
        name = (await call(bus, "SaveProfile", "s", [edited]))[0]
        print(f"saved {shown(name)}" + ("" if name == args.name else
              f" ({shown(args.name)} is still there: trustroamctl profile delete "
              f"{shown(args.name)})"))
    elif args.action == "delete":
        await call(bus, "DeleteProfile", "s", [args.name])
        print(f"deleted {shown(args.name)}")


def edit_in_editor(text: str, name: str) -> str | None:
    """``text`` after $VISUAL or $EDITOR (vi) changed it, checked by the profile
    parser; on a terminal a bad result is offered again (as ``crontab -e`` does).
    None when nothing changed."""
    editor = shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
    with tempfile.TemporaryDirectory(prefix="trustroamctl-") as d:
        path = os.path.join(d, f"{name}.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        while True:
            try:
                done = subprocess.run([*editor, path], check=False)  # noqa: S603 (their editor)
            except OSError as exc:
                raise CtlError(f"cannot start the editor {editor[0]!r}: "
                               f"{exc.strerror or type(exc).__name__}") from None
            if done.returncode != 0:
                raise CtlError(f"the editor exited with status {done.returncode}: "
                               "nothing saved")
            try:
                with open(path, encoding="utf-8") as f:
                    new = f.read(MAX_PROFILE_FILE + 1)
            except (OSError, UnicodeDecodeError) as exc:
                raise CtlError(f"cannot read the edited profile: {exc}") from None
            if new == text:
                return None
            try:
                return checked(new, f"profile {name}")
            except CtlError as exc:
                if not sys.stdin.isatty():
                    raise
                print(f"trustroamctl: {exc}", file=sys.stderr)
                again = input("Edit again? [Y/n] ").strip().lower()
                if again not in ("", "y", "yes"):
                    raise CtlError("nothing saved") from None


def _stamp(t: float | None) -> str:
    if t is not None:
        try:
            return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"
        except (OverflowError, OSError, ValueError):
            pass
    return "--:--:--.---"


def _event_line(t: float | None, kind: object, details: dict[str, Any]) -> str:
    """One event; every text from the bus escaped.  A time that is no time is shown
    in the details (``time=...``), with dashes for the stamp."""
    when = _stamp(t)
    rest = " ".join(f"{shown(k, 40)}={shown(v)}" for k, v in details.items()
                    if k != "time" or when.startswith("-"))
    return f"{when} {shown(kind, 40):<14} {rest}"


async def monitor(bus: MessageBus) -> None:
    """Events and property changes as the helper sends them.  Anyone on the bus may
    send a signal that looks like the helper's: only those from the unique name that
    owns the helper's name (as the bus itself says) are printed."""
    await add_match(bus, owner_rule(BUS_NAME))
    await add_match(bus, f"type='signal',sender='{BUS_NAME}',path='{OBJECT_PATH}'")
    owner = await get_name_owner(bus, BUS_NAME)  # after the rules: no change is missed
    print(render(snapshot(await properties(bus)), time.time()), flush=True)

    def on(msg: Message) -> bool:
        nonlocal owner
        new = owner_change(msg, BUS_NAME)
        if new is not None:
            owner = new or None
            print("trustroamd " + ("started again" if owner else "stopped"), flush=True)
            return False
        if (msg.message_type is not MessageType.SIGNAL or owner is None
                or msg.sender != owner or msg.path != OBJECT_PATH):
            return False
        if msg.interface == INTERFACE and msg.member == "Event" and msg.signature == "sa{ss}":
            kind, details = msg.body
            t = finite(details["time"]) if "time" in details else time.time()
            print(_event_line(t, kind, details), flush=True)
        elif (msg.interface == PROPS and msg.member == "PropertiesChanged"
              and msg.signature == "sa{sv}as" and msg.body[0] == INTERFACE):
            changed = {str(k): unwrap(v) for k, v in msg.body[1].items()}
            print("changed " + " ".join(f"{shown(k, 40)}={shown(v)}"
                                        for k, v in sorted(changed.items())), flush=True)
        return False

    bus.add_message_handler(on)
    # Typed here: dbus-fast leaves this one method untyped.
    until_gone: Callable[[], Awaitable[None]] = bus.wait_for_disconnect
    await until_gone()


async def release_gate() -> str:
    """Remove the gate table of a helper that is not running (it blocks on purpose)."""
    if os.geteuid() != 0:
        raise CtlError("release-gate changes the firewall: run it as root")
    try:
        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, ValueError):
        bus = None  # no system bus: no helper either
    if bus is not None:
        try:
            running = await get_name_owner(bus, BUS_NAME) is not None
        finally:
            bus.disconnect()
        if running:
            raise CtlError("trustroamd is running and owns the gate: use "
                           "'trustroamctl disconnect' (or stop the service)")
    try:
        await remove_table()
    except GateError as exc:
        raise CtlError(str(exc)) from None
    return "gate removed: traffic is no longer blocked by TrustRoam"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="trustroamctl", description="Control trustroamd.")
    ap.add_argument("--version", action="version", version=f"trustroamctl {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status")
    st.add_argument("--json", action="store_true")
    conn = sub.add_parser("connect")
    conn.add_argument("profile")
    conn.add_argument("--ask", action="store_true",
                      help="ask on the terminal for a secret no secret agent has")
    sub.add_parser("disconnect")
    sub.add_parser("reprobe")
    sub.add_parser("monitor")
    sub.add_parser("profiles")
    prof = sub.add_parser("profile").add_subparsers(dest="action", required=True)
    prof.add_parser("list")
    prof.add_parser("show").add_argument("name")
    prof.add_parser("import").add_argument("file", help='a TOML profile ("-": stdin)')
    pset = prof.add_parser("set")
    pset.add_argument("name")
    pset.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    prof.add_parser("edit").add_argument("name")
    prof.add_parser("delete").add_argument("name")
    sub.add_parser("history").add_argument("n", nargs="?", type=int, default=50)
    sub.add_parser("policy").add_argument("policy", choices=[p.value for p in Policy])
    sub.add_parser("release", help="(administrator) lift the shut gate lockdown holds "
                                   "while no profile is connected")
    sub.add_parser("release-gate", help="(root) remove the gate a stopped helper left "
                                        "blocking")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "release-gate":
            print(asyncio.run(release_gate()))
            return 0
        return asyncio.run(run(args))
    except CtlError as exc:
        print(f"trustroamctl: {exc}", file=sys.stderr)
        return 1
    except DBusError as exc:
        print(f"trustroamctl: {shown(exc.text, 500)}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:  # no system bus socket, or refused
        print(f"trustroamctl: cannot reach the system bus: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
