"""Where the helper gets a profile's secrets, and how it keeps them out of sight.

Two sources, tried in order:

1. the secret agent of the user who asked to connect: the tray exports an
   object with ``org.trustroam.SecretAgent1.GetSecrets(profile, keys) -> a{ss}``
   on its own bus connection and registers it with ``RegisterSecretAgent(path)``.
   A user may have a few agents (the tray's, and ``trustroamctl connect --ask``'s
   for the length of one call); they are asked in the order they registered, each
   for what the ones before lacked, only for a ``Connect`` from the same uid (as
   NetworkManager does), and where logind runs, only while the agent's session is
   active.  An agent of another user is
   never asked, so nobody can choose the key for someone else's connection (a
   chosen key would let someone on the path forge an "authenticated" reply);
2. a headless secrets file (``--secrets /etc/trustroam/secrets.toml``), one
   table per profile, refused unless it is a regular file that belongs to root
   and nobody else may read:

       [corp]
       mn_ha_key = "hex:00112233445566778899aabbccddeeff"
       vpn_psk = "..."          # a profile with [vpn]: what its auth method needs

A Connect asks the agent for every key the profile needs (``mn_ha_key`` and the
VPN's ``vpn_psk``, ``vpn_password`` or ``vpn_key_passphrase``) in one GetSecrets;
what the agent lacks comes from the file.

A wrong, malformed or missing answer, or an agent that does not answer within
the bound, means "try the next source".  Secrets stay in memory, wrapped in
:class:`Secret` whose ``repr`` and ``str`` never show the value, and no message
here ever contains one.
"""

from __future__ import annotations

import asyncio
import logging
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.api import SECRET_MN_HA_KEY
from app.config import FileMissing, FileRefused, read_regular_file
from app.errors import UserFacingError

log = logging.getLogger("trustroam.service.secrets")
AGENT_TIMEOUT = 20.0
"""Seconds an agent has to answer GetSecrets (it may unlock a keyring first)."""
TERMINAL_AGENT_TIMEOUT = 120.0
"""Seconds for the agent on the Connect's own connection (``trustroamctl connect
--ask``): a person types every secret the profile needs."""
MAX_AGENTS = 256
"""Users with agents; this bounds the table even if many uids register."""
MAX_AGENTS_PER_UID = 4
"""A user's agents (the tray's, a ``trustroamctl connect --ask``'s...); a fifth
registration drops that user's oldest."""
MAX_AGENT_PATH = 255
"""Bytes of an agent's object path (the tray's is about 30)."""
MAX_SECRETS_FILE = 1 << 20
MAX_ANSWER = 4096
"""Characters of one agent answer's value; a key is at most 132 ("hex:" + 128)."""
FILE_SOURCE = "the secrets file"


class SecretError(UserFacingError):
    """No usable secret; the message names the profile and the source, never a value."""


@dataclass(frozen=True)
class Secret:
    value: bytes = field(repr=False)

    def __str__(self) -> str:
        return "<secret>"


def parse_key(text: str, profile: str, source: str) -> Secret:
    if len(text) > MAX_ANSWER:
        raise SecretError(f"{source}: {profile}.{SECRET_MN_HA_KEY} is far too long")
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
    """The profile's key from a root-only TOML file (see :func:`read_profile_table`)."""
    return _file_key(read_profile_table(path, profile), profile)


def read_profile_table(path: Path, profile: str) -> dict[str, object]:
    """The profile's table of a root-only TOML file ({} when it has none).

    Opened without following a symlink and without blocking (a FIFO put there
    must not stall the event loop), then accepted only as a regular file of
    root's that nobody else may read.  Messages say "the secrets file", never
    its path: they go back to D-Bus callers.
    """
    src = FILE_SOURCE
    try:
        # Root's (or this process's user's), nobody else may read it, no symlink
        # anywhere on the way; the reason names no path.
        data = read_regular_file(Path(path).absolute(), MAX_SECRETS_FILE,
                                 follow_symlinks=False, private=True)
    except FileMissing:
        raise SecretError(f"{src} does not exist") from None
    except FileRefused as exc:
        raise SecretError(f"refused: {src} {_without_path(exc.reason)}") from None
    try:
        doc = tomllib.loads(data.decode())
    except UnicodeDecodeError:
        raise SecretError(f"{src} is not valid UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message quotes no values, only positions.
        raise SecretError(f"{src} is not valid TOML: {exc}") from None
    table = doc.get(profile)
    return dict(table) if isinstance(table, dict) else {}


def _without_path(reason: str) -> str:
    """A refusal's predicate with the directory it may name left out."""
    if "/" not in reason:
        return reason
    return ("is reached through a symbolic link" if "symbolic link" in reason
            else "is not reachable")


def _file_key(table: dict[str, object], profile: str) -> Secret:
    src = FILE_SOURCE
    if SECRET_MN_HA_KEY not in table:
        raise SecretError(f"{src} has no [{profile}] {SECRET_MN_HA_KEY}")
    value = table[SECRET_MN_HA_KEY]
    if not isinstance(value, str):
        raise SecretError(f"{src}: {profile}.{SECRET_MN_HA_KEY} must be a string")
    return parse_key(value, profile, src)


def check_text_secret(value: object, name: str, profile: str, source: str) -> str:
    """A VPN secret (PSK, password, passphrase) as charon takes it: a non-empty
    string of bounded length.  Messages name the key, never the value."""
    if not isinstance(value, str):
        raise SecretError(f"{source}: {profile}.{name} must be a string")
    if not value:
        raise SecretError(f"{source}: {profile}.{name} is empty")
    if len(value) > MAX_ANSWER:
        raise SecretError(f"{source}: {profile}.{name} is far too long")
    if "\0" in value:
        raise SecretError(f"{source}: {profile}.{name} contains a NUL character")
    return value


class TextSecrets(dict[str, str]):
    """Secrets by key name (``vpn_psk``...): ``repr`` and ``str`` show the names only,
    so a stray log line or traceback never carries a value."""

    def __repr__(self) -> str:
        return f"TextSecrets({sorted(self)})"

    __str__ = __repr__


@dataclass(frozen=True)
class ProfileSecrets:
    """What one Connect needs: the MN-HA key and the profile's other secrets."""

    key: Secret
    extra: TextSecrets = field(default_factory=TextSecrets)


@dataclass(frozen=True, slots=True)
class Peer:
    """A bus connection as the bus daemon vouches for it (never as it claims)."""

    name: str
    """Unique bus name (``:1.42``)."""
    uid: int
    pid: int | None = None

    def __str__(self) -> str:
        return f"{self.name} (uid {self.uid})"


@dataclass(frozen=True, slots=True)
class Agent:
    peer: Peer
    path: str

    def __str__(self) -> str:
        return f"secret agent {self.peer}"


class AgentRefused(UserFacingError):
    """RegisterSecretAgent refused; the message names the argument."""


class AgentFailed(Exception):
    """The agent answered with an error (the message is its D-Bus error name)."""

    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone
        """The agent's connection is gone: forget it."""


AgentCall = Callable[[Agent, str, list[str]], Awaitable[dict[str, str]]]
"""(agent, profile, keys) -> secrets; raises AgentFailed on an error reply."""
SessionCheck = Callable[[Peer], Awaitable[str | None]]
"""None when the peer may be asked (active session, or no logind), else why not."""


class SecretSource:
    def __init__(self, agent_call: AgentCall | None, secrets_file: Path | None, *,
                 agent_timeout: float = AGENT_TIMEOUT,
                 terminal_timeout: float = TERMINAL_AGENT_TIMEOUT,
                 session_check: SessionCheck | None = None) -> None:
        self.agent_call = agent_call
        self.secrets_file = secrets_file
        self.agent_timeout = agent_timeout
        self.terminal_timeout = terminal_timeout
        self.session_check = session_check
        self.agents: dict[int, list[Agent]] = {}
        """uid -> that user's agents, oldest first (a connection has one: registering
        again replaces its own)."""

    def register_agent(self, peer: Peer, path: str) -> None:
        if not path.startswith("/") or len(path.encode()) > MAX_AGENT_PATH:
            raise AgentRefused(f"path: must be an object path of at most {MAX_AGENT_PATH} "
                               "bytes")
        if peer.uid not in self.agents and len(self.agents) >= MAX_AGENTS:
            raise AgentRefused(f"too many secret agents ({MAX_AGENTS} users have one)")
        mine = [a for a in self.agents.get(peer.uid, []) if a.peer.name != peer.name]
        mine.append(Agent(peer, path))
        self.agents[peer.uid] = mine[-MAX_AGENTS_PER_UID:]

    def forget_name(self, name: str) -> None:
        """The bus name ``name`` went away (NameOwnerChanged): drop its agent."""
        for uid, mine in list(self.agents.items()):
            left = [a for a in mine if a.peer.name != name]
            if len(left) != len(mine):
                if left:
                    self.agents[uid] = left
                else:
                    del self.agents[uid]

    def _drop(self, agent: Agent) -> None:
        mine = self.agents.get(agent.peer.uid, [])
        if agent in mine:
            self.forget_name(agent.peer.name)

    async def key(self, profile: str, requester: Peer | None = None) -> Secret:
        """The profile's key for a Connect from ``requester`` (None: the helper itself,
        at start: the secrets file only)."""
        return (await self.fetch(profile, requester)).key

    async def fetch(self, profile: str, requester: Peer | None = None,
                    extra: Sequence[str] = ()) -> ProfileSecrets:
        """The key and the ``extra`` secrets (``vpn_psk``...) of ``profile`` for a
        Connect from ``requester``: the requester's uid's agents are asked in turn,
        the first for all of them in one GetSecrets, each next one only for what is
        still missing; whatever they lack or get wrong comes from the secrets file.
        Errors name the profile and the missing key, never a value."""
        names = list(dict.fromkeys(extra))
        problems: list[str] = []
        key: Secret | None = None
        found = TextSecrets()
        mine = list(self.agents.get(requester.uid, [])) if requester is not None else []
        # The Connect's own connection's agent first (trustroamctl --ask: the person
        # is at that terminal now), then the user's others in registration order.
        mine.sort(key=lambda a: requester is None or a.peer.name != requester.name)
        asked = bool(mine) and self.agent_call is not None
        for agent in mine if asked else []:
            missing = [n for n in names if n not in found]
            if key is not None and not missing:
                break
            own = requester is not None and agent.peer.name == requester.name
            try:
                answer = await self._ask(agent, profile,
                                         [SECRET_MN_HA_KEY] * (key is None) + missing,
                                         self.terminal_timeout if own else self.agent_timeout)
            except SecretError as exc:
                log.info("profile %s: %s; trying the next source", profile, exc)
                problems.append(str(exc))
                continue
            if key is None:
                key = self._take_key(answer, agent, profile, problems)
            self._take_extra(answer, missing, found, source=str(agent), profile=profile,
                             problems=problems)
        if self.secrets_file is not None and (key is None or len(found) < len(names)):
            try:
                table = read_profile_table(self.secrets_file, profile)
            except SecretError as exc:
                problems.append(str(exc))
            else:
                if key is None:
                    try:
                        key = _file_key(table, profile)
                    except SecretError as exc:
                        problems.append(str(exc))
                self._take_extra(table, names, found, source=FILE_SOURCE, profile=profile,
                                 problems=problems)
        if not asked and self.secrets_file is None:
            who = f"uid {requester.uid}" if requester is not None else "the helper"
            problems.append(f"no secret agent is registered for {who} (start the tray) "
                            "and no secrets file is configured")
        if key is None:
            raise SecretError(f"no key for profile {profile!r}: " + "; ".join(problems))
        missing = [n for n in names if n not in found]
        if missing:
            raise SecretError(f"no {missing[0]} for profile {profile!r}: "
                              + "; ".join(problems))
        return ProfileSecrets(key, found)

    @staticmethod
    def _take_key(answer: dict[str, str], agent: Agent, profile: str,
                  problems: list[str]) -> Secret | None:
        text = answer.get(SECRET_MN_HA_KEY)
        try:
            if not isinstance(text, str) or not text:
                raise SecretError(f"{agent} has no {SECRET_MN_HA_KEY} for {profile}")
            return parse_key(text, profile, str(agent))
        except SecretError as exc:
            log.info("profile %s: %s; trying the next source", profile, exc)
            problems.append(str(exc))
            return None

    @staticmethod
    def _take_extra(table: Mapping[str, object], names: list[str], found: TextSecrets, *,
                    source: str, profile: str, problems: list[str]) -> None:
        for name in names:
            if name in found:
                continue
            if name not in table or table[name] == "":
                problems.append(f"{source} has no {name} for {profile}")
                continue
            try:
                found[name] = check_text_secret(table[name], name, profile, source)
            except SecretError as exc:
                problems.append(str(exc))

    async def _ask(self, agent: Agent, profile: str, keys: list[str],
                   bound: float) -> dict[str, str]:
        assert self.agent_call is not None
        if agent.peer.uid != 0 and self.session_check is not None:
            why = await self.session_check(agent.peer)
            if why is not None:
                raise SecretError(f"{agent} not asked: {why}")
        try:
            async with asyncio.timeout(bound):
                answer = await self.agent_call(agent, profile, keys)
        except TimeoutError:
            raise SecretError(f"{agent} did not answer within {bound:g} s"
                              ) from None
        except AgentFailed as exc:
            if exc.gone:
                self._drop(agent)
            raise SecretError(f"{agent} failed: {exc}") from None
        if not isinstance(answer, dict):
            raise SecretError(f"{agent} answered with something other than a{{ss}}")
        return answer
