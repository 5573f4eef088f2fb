"""Secrets in the system keyring, and the secret agent the helper asks for them.

The keyring (``keyring``, Secret Service: gnome-keyring, KWallet) is the only
place a secret is kept; nothing here logs, raises or writes one.  ``keyring`` is
imported when first used (it pulls in secretstorage and cryptography, ~10 MB
the idle tray does not need).

The agent answers only the helper: the connection that owns the helper's name
now, running as root (as libnm's agent checks NetworkManager).  The bus policy
lets only root call it, but a bus configured otherwise, or another root process,
must not get the user's secrets either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

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

log = logging.getLogger("trustroam.tray.secrets")
T = TypeVar("T")
SERVICE = "trustroam"
# The names the helper may ask for (app/service/secrets.py, app/vpn/profile.py).
KNOWN_KEYS = (SECRET_MN_HA_KEY, "vpn_psk", "vpn_password", "vpn_key_passphrase")
OPTIONAL_KEYS = frozenset({"vpn_key_passphrase"})
"""May be left empty in the dialog: an unencrypted private key has no passphrase."""
KEY_LABELS = {
    SECRET_MN_HA_KEY: "Mobile-Home key (hex:…)",
    "vpn_psk": "VPN pre-shared key",
    "vpn_password": "VPN password",
    "vpn_key_passphrase": "VPN private key passphrase",
}


class KeyringUnavailable(Exception):
    """The keyring cannot be used; the message says why and what to do, never a value."""


def _translate(exc: Exception) -> KeyringUnavailable:
    from keyring import errors

    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, errors.NoKeyringError) or "NotAvailable" in name or (
            "org.freedesktop.secrets" in text and "not provided" in text):
        return KeyringUnavailable("No keyring is available: install and start gnome-keyring "
                                  "or KWallet, then try again")
    if isinstance(exc, errors.KeyringLocked) or "dismissed" in text.lower() or (
            "locked" in text.lower()):
        return KeyringUnavailable("The keyring is locked: unlock it (log in again or open "
                                  "Passwords and Keys) and try again")
    return KeyringUnavailable(f"The keyring refused the request ({name})")


def validate_secret(key: str, value: str) -> str | None:
    """A message naming the field when ``value`` is unusable, else None."""
    return secret_problem(key, value, KEY_LABELS.get(key, key))


def _keyring() -> Any:
    """The keyring backend; looked for again while none was found (it may start later:
    keyring itself decides once per process)."""
    import keyring
    from keyring.backends import SecretService, fail, kwallet

    kr = keyring.get_keyring()
    if isinstance(kr, fail.Keyring):
        for cls in (SecretService.Keyring, kwallet.DBusKeyring):
            try:
                if cls.priority > 0:  # raises when that backend cannot work here
                    kr = cls()
                    keyring.set_keyring(kr)
                    break
            except Exception:  # noqa: S112 (try the next kind of keyring)
                continue
    return kr


class SecretStore:
    """profile + key name -> secret, in the keyring under service ``trustroam``."""

    def _username(self, profile: str, key: str) -> str:
        return f"{profile}/{key}"

    def get(self, profile: str, key: str) -> str | None:
        try:
            value = _keyring().get_password(SERVICE, self._username(profile, key))
            return str(value) if value is not None else None
        except Exception as exc:  # keyring's backends raise many kinds
            raise _translate(exc) from None

    def set(self, profile: str, key: str, value: str) -> None:
        try:
            _keyring().set_password(SERVICE, self._username(profile, key), value)
        except Exception as exc:
            raise _translate(exc) from None

    def delete(self, profile: str, key: str) -> None:
        try:
            from keyring.errors import PasswordDeleteError

            with contextlib.suppress(PasswordDeleteError):
                _keyring().delete_password(SERVICE, self._username(profile, key))
        except Exception as exc:
            raise _translate(exc) from None


_POOL: ThreadPoolExecutor | None = None


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking keyring call in a thread.  Not loop.run_in_executor: qasync's
    executor logs every call's arguments and result at debug level, secrets included."""
    global _POOL  # noqa: PLW0603 (one small pool, made on first use)
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyring")
    return await asyncio.wrap_future(_POOL.submit(fn, *args))


Asker = Callable[[str, list[str], str], Awaitable[tuple[dict[str, str], bool]]]
"""(profile, missing keys, why) -> (answers, store them in the keyring?)."""


class SecretAgent:
    """org.trustroam.SecretAgent1 at ``path`` on the tray's system-bus connection
    (``attach``).  A plain message handler, not an exported interface: the answer
    depends on who asks, and an exported method is not told."""

    def __init__(self, store: SecretStore, asker: Asker | None,
                 on_problem: Callable[[str], None] | None = None) -> None:
        self.bus: MessageBus | None = None
        self.path = ""
        self._tasks: set[asyncio.Future[None]] = set()
        self.store = store
        self.asker = asker
        self.on_problem = on_problem
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}
        self._answered: dict[str, dict[str, str]] = {}
        """The dialog's answers, kept only for requests that queued behind it."""

    async def lookup(self, profile: str, keys: list[str]) -> dict[str, str]:
        # One request per profile at a time: requests that arrive while the dialog is
        # open wait for it and take its answers instead of asking again.
        lock = self._locks.setdefault(profile, asyncio.Lock())
        self._waiting[profile] = self._waiting.get(profile, 0) + 1
        try:
            async with lock:
                return await self._lookup(profile, keys)
        finally:
            self._waiting[profile] -= 1
            if not self._waiting[profile]:
                self._answered.pop(profile, None)  # nobody else waits: forget them

    async def _lookup(self, profile: str, keys: list[str]) -> dict[str, str]:
        wanted = [k for k in dict.fromkeys(keys) if k in KNOWN_KEYS]
        found: dict[str, str] = {}
        why = ""
        for k in wanted:
            try:
                # The Secret Service call blocks: keep it off the loop.
                value = await off_loop(self.store.get, profile, k)
            except KeyringUnavailable as exc:
                why = str(exc)
                if self.on_problem is not None:
                    self.on_problem(why)
                break
            if value:
                found[k] = value
        missing = [k for k in wanted if k not in found]
        earlier = self._answered.get(profile, {})
        if missing and all(k in earlier for k in missing):
            found.update({k: earlier[k] for k in missing if earlier[k]})
        elif missing and self.asker is not None:
            try:
                answers, keep = await self.asker(profile, missing, why)
            except Exception:  # the dialog could not be shown: answer what we have
                answers, keep = {}, False
            self._answered[profile] = {k: answers.get(k, "") for k in missing}
            found.update({k: answers[k] for k in missing if answers.get(k)})
            if keep:
                for k in missing:
                    if not answers.get(k):
                        continue
                    try:
                        await off_loop(self.store.set, profile, k, answers[k])
                    except KeyringUnavailable as exc:
                        if self.on_problem is not None:
                            self.on_problem(str(exc))
                        break
        log.info("secret request for profile %s: answered %d of %d key(s)", profile,
                 len(found), len(wanted))
        return found

    def attach(self, bus: MessageBus, path: str) -> None:
        self.bus, self.path = bus, path
        bus.add_message_handler(self._on_message)

    def _on_message(self, msg: Message) -> bool:
        if (msg.message_type is not MessageType.METHOD_CALL or msg.path != self.path
                or msg.member != "GetSecrets"
                or msg.interface not in (None, SECRET_AGENT_INTERFACE)):
            return False
        task = asyncio.ensure_future(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _answer(self, msg: Message) -> None:
        assert self.bus is not None
        if msg.signature != "sas":
            reply = Message.new_error(msg, ErrorType.INVALID_ARGS,
                                      "GetSecrets takes (profile s, keys as)")
        elif not await self.from_helper(msg.sender):
            log.warning("secret request refused: %s is not the TrustRoam helper running "
                        "as root", shown(msg.sender, 40))
            reply = Message.new_error(msg, ErrorType.ACCESS_DENIED,
                                      "only the TrustRoam helper may ask for secrets")
        else:
            profile, keys = msg.body
            try:
                found = await self.lookup(profile, keys)
            except Exception as exc:  # no secret in the reply, the log or the error
                log.warning("secret request failed: %s", type(exc).__name__)
                found = {}
            reply = Message.new_method_return(msg, "a{ss}", [found])
        if not msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            self.bus.send(reply)

    async def from_helper(self, sender: str | None) -> bool:
        """Whether ``sender`` is the helper: its name's owner now, and uid 0 (the
        bus's word for both; a unique name is never reused)."""
        if not sender or self.bus is None:
            return False
        owner, uid = await asyncio.gather(get_name_owner(self.bus, BUS_NAME),
                                          unix_user(self.bus, sender))
        return owner == sender and uid == 0
