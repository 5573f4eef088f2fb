"""Where the helper gets a profile's secrets, and how it keeps them out of sight.

Two sources, tried in order:

1. secret agents: the tray (or ``trustroamctl``) exports an object with
   ``org.trustroam.SecretAgent1.GetSecrets(profile, keys) -> a{ss}`` on its own
   bus connection and registers it with ``RegisterSecretAgent(path)``; the helper
   asks the most recently registered agent that is still connected;
2. a headless secrets file (``--secrets /etc/trustroam/secrets.toml``), one
   table per profile, refused unless it belongs to root and nobody else may
   read it:

       [corp]
       mn_ha_key = "hex:00112233445566778899aabbccddeeff"

Secrets stay in memory, wrapped in :class:`Secret` whose ``repr`` and ``str``
never show the value, and no message here ever contains one.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.api import SECRET_MN_HA_KEY


class SecretError(Exception):
    """No usable secret; the message names the profile and the source, never a value."""


@dataclass(frozen=True)
class Secret:
    value: bytes = field(repr=False)

    def __str__(self) -> str:
        return "<secret>"


def parse_key(text: str, profile: str, source: str) -> Secret:
    if not text.startswith("hex:"):
        raise SecretError(f"{source}: {profile}.{SECRET_MN_HA_KEY} must be 'hex:' followed by "
                          "hex digits")
    try:
        key = bytes.fromhex(text[4:])
    except ValueError:
        raise SecretError(f"{source}: {profile}.{SECRET_MN_HA_KEY} has characters that are "
                          "not hex digits") from None
    if not 16 <= len(key) <= 64:
        raise SecretError(f"{source}: {profile}.{SECRET_MN_HA_KEY} is {len(key)} bytes; it "
                          "must be 16 to 64")
    return Secret(key)


def read_secrets_file(path: Path, profile: str) -> Secret:
    """The profile's key from a root-only TOML file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise SecretError(f"{path}: no such secrets file") from None
    except OSError as exc:
        raise SecretError(f"{path}: cannot open the secrets file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if st.st_uid != 0 and st.st_uid != os.geteuid():
            raise SecretError(f"{path}: refused: the secrets file must belong to root")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(f"{path}: refused: the secrets file is readable by others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
        try:
            doc = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message quotes no values, only positions.
            raise SecretError(f"{path}: not valid TOML: {exc}") from None
    table = doc.get(profile)
    if not isinstance(table, dict) or SECRET_MN_HA_KEY not in table:
        raise SecretError(f"{path}: no [{profile}] {SECRET_MN_HA_KEY}")
    value = table[SECRET_MN_HA_KEY]
    if not isinstance(value, str):
        raise SecretError(f"{path}: {profile}.{SECRET_MN_HA_KEY} must be a string")
    return parse_key(value, profile, str(path))


AgentCall = Callable[[str, str, str, list[str]], Awaitable[dict[str, str]]]
"""(bus name, object path, profile, keys) -> secrets, as a secret agent answers."""


class SecretSource:
    def __init__(self, agent_call: AgentCall | None, secrets_file: Path | None) -> None:
        self.agent_call = agent_call
        self.secrets_file = secrets_file
        self.agents: list[tuple[str, str]] = []
        """(bus name, object path), most recent last."""

    def register_agent(self, sender: str, path: str) -> None:
        self.agents = [a for a in self.agents if a[0] != sender] + [(sender, path)]

    def forget_agent(self, sender: str) -> None:
        self.agents = [a for a in self.agents if a[0] != sender]

    async def key(self, profile: str) -> Secret:
        problems: list[str] = []
        for sender, path in reversed(list(self.agents)):
            if self.agent_call is None:
                break
            try:
                answer = await self.agent_call(sender, path, profile, [SECRET_MN_HA_KEY])
            except Exception as exc:  # agent gone or refused: try the next source
                problems.append(f"secret agent {sender} did not answer "
                                f"({type(exc).__name__})")
                self.forget_agent(sender)
                continue
            text = answer.get(SECRET_MN_HA_KEY)
            if text:
                return parse_key(text, profile, f"secret agent {sender}")
            problems.append(f"secret agent {sender} has no {SECRET_MN_HA_KEY} for {profile}")
        if self.secrets_file is not None:
            try:
                return read_secrets_file(self.secrets_file, profile)
            except SecretError as exc:
                problems.append(str(exc))
        if not problems:
            problems.append("no secret agent is registered (start the tray, or run "
                            "trustroamctl connect) and no secrets file is configured")
        raise SecretError(f"no key for profile {profile!r}: " + "; ".join(problems))
