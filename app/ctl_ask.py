"""``trustroamctl connect NAME --ask``: a secret agent on the terminal, for one call.

Registered on trustroamctl's own bus connection just before its Connect and gone
with that connection.  The helper asks a user's agents in the order they
registered, so the tray (if it runs) is asked first and this one only for what
the tray lacked, as ``nmcli --ask`` fills in what no other agent had.

It answers only the helper (its name's owner now, running as root: the bus's
word for both).  A secret is read from the terminal without echo, travels only
in the D-Bus reply, and is never printed, logged, put in an exception or in the
environment; a failure is reported by its type alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import getpass
import resource
import signal
import sys
from collections.abc import Callable, Iterator

from app.api import BUS_NAME, SECRET_AGENT_INTERFACE, SECRET_MN_HA_KEY
from app.client_bus import (
    ErrorType,
    Message,
    MessageBus,
    MessageFlag,
    MessageType,
    get_name_owner,
    shown,
    unix_user,
)
from app.secret_values import secret_problem

AGENT_PATH = "/org/trustroam/ctl/agent"
LABELS = {SECRET_MN_HA_KEY: "Mobile-Home key (hex:...)", "vpn_psk": "VPN pre-shared key",
          "vpn_password": "VPN password",
          "vpn_key_passphrase": "VPN private key passphrase (empty: none)"}
TRIES = 3

Prompt = Callable[[str], str]
"""Reads one line without echo (``getpass.getpass``)."""
PR_SET_DUMPABLE = 4
CANCELLED = "org.trustroam.Error.Cancelled"


def no_core_dumps() -> None:
    """Typed secrets never land in a core file (Ctrl-\\, a crash) nor in another
    process's ptrace or /proc/PID/mem of the same user."""
    with contextlib.suppress(OSError, ValueError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Ctrl-C and Ctrl-\\ raise KeyboardInterrupt inside getpass (which then puts the
    echo back), instead of asyncio.run's handler, which only cancels the main task
    while getpass goes on reading with the echo off, and SIGQUIT's core dump."""
    saved = {sig: signal.signal(sig, signal.default_int_handler)
             for sig in (signal.SIGINT, signal.SIGQUIT)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def key_problem(key: str, value: str) -> str | None:
    """Why ``value`` cannot be ``key`` (naming the key, never quoting the value)."""
    return secret_problem(key, value, LABELS[key], optional=key == "vpn_key_passphrase")


def ask(profile: str, keys: list[str], prompt: Prompt = getpass.getpass) -> dict[str, str]:
    """The known ``keys`` read from the terminal (a bad one asked again, up to
    ``TRIES`` times; one left empty is not answered)."""
    found: dict[str, str] = {}
    for key in dict.fromkeys(keys):
        if key not in LABELS:
            continue
        for _ in range(TRIES):
            value = prompt(f"{LABELS[key]} for profile {shown(profile, 64)}: ")
            if key == SECRET_MN_HA_KEY and value and not value.startswith("hex:"):
                value = "hex:" + value  # bare hex digits are what a person pastes
            problem = key_problem(key, value)
            if problem is None:
                if value:
                    found[key] = value
                break
            print(f"trustroamctl: {problem}", file=sys.stderr, flush=True)
    return found


class TerminalAgent:
    """org.trustroam.SecretAgent1 at ``AGENT_PATH`` on trustroamctl's connection: a
    message handler (the answer depends on who asks; an exported method is not told)."""

    def __init__(self, bus: MessageBus, prompt: Prompt = getpass.getpass) -> None:
        self.bus = bus
        self.prompt = prompt
        self.asked = 0
        self.interrupted = asyncio.Event()
        """The person pressed Ctrl-C (or Ctrl-\\) at a prompt: trustroamctl ends."""
        self._tasks: set[asyncio.Future[None]] = set()
        bus.add_message_handler(self._on_message)

    def _on_message(self, msg: Message) -> bool:
        if (msg.message_type is not MessageType.METHOD_CALL or msg.path != AGENT_PATH
                or msg.member != "GetSecrets"
                or msg.interface not in (None, SECRET_AGENT_INTERFACE)):
            return False
        task = asyncio.ensure_future(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _answer(self, msg: Message) -> None:
        # Always a reply, whatever happens (the helper waits on it); its text names
        # an exception's type only, never what was typed.
        reply = Message.new_error(msg, CANCELLED, "no answer from the terminal")
        try:
            if msg.signature != "sas":
                reply = Message.new_error(msg, ErrorType.INVALID_ARGS,
                                          "GetSecrets takes (profile s, keys as)")
            elif not await self._from_helper(msg.sender):
                reply = Message.new_error(msg, ErrorType.ACCESS_DENIED,
                                          "only the TrustRoam helper may ask for secrets")
            elif not self.interrupted.is_set():
                profile, keys = msg.body
                self.asked += 1
                reply = Message.new_method_return(
                    msg, "a{ss}", [self._ask(str(profile), [str(k) for k in keys])])
        except KeyboardInterrupt:
            self.interrupted.set()
            reply = Message.new_error(msg, CANCELLED, "interrupted at the terminal")
        except Exception as exc:  # reported by its type, never by its value
            print(f"trustroamctl: cannot ask on the terminal ({type(exc).__name__})",
                  file=sys.stderr, flush=True)
        finally:
            if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
                self.bus.send(reply)

    def _ask(self, profile: str, keys: list[str]) -> dict[str, str]:
        no_core_dumps()
        try:
            # In the loop, not a thread: the helper waits for this answer anyway,
            # and Ctrl-C must reach getpass (which puts the echo back).
            with interruptible():
                return ask(profile, keys, self.prompt)
        except UnicodeDecodeError:
            print("trustroamctl: what was typed is not UTF-8 text: nothing is sent",
                  file=sys.stderr, flush=True)
        except (EOFError, OSError) as exc:  # no terminal: answer nothing
            print(f"trustroamctl: cannot ask on the terminal ({type(exc).__name__})",
                  file=sys.stderr, flush=True)
        return {}

    async def _from_helper(self, sender: str | None) -> bool:
        if not sender:
            return False
        owner, uid = await asyncio.gather(get_name_owner(self.bus, BUS_NAME),
                                          unix_user(self.bus, sender))
        return owner == sender and uid == 0
