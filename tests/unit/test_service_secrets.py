"""Where the helper's keys come from (issue 11): only the agent of the user who asked
to connect, bounded in time, then the root-only secrets file; a bad answer means
"try the next source"."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from app.service.secrets import (
    MAX_AGENT_PATH,
    MAX_AGENTS,
    MAX_AGENTS_PER_UID,
    AgentFailed,
    AgentRefused,
    Peer,
    Secret,
    SecretError,
    SecretSource,
    read_secrets_file,
)

FILE_KEY = "00112233445566778899aabbccddeeff"
AGENT_KEY = "ab" * 16
ROOT = Peer(":1.root", 0, 10)
USER = Peer(":1.user", 1000, 20)
NOBODY = Peer(":1.nobody", 65534, 30)


def secrets_file(tmp_path, profile="corp"):
    f = tmp_path / "secrets.toml"
    f.write_text(f'[{profile}]\nmn_ha_key = "hex:{FILE_KEY}"\n')
    f.chmod(0o600)
    return f


def agents(answers):
    """An agent call answering per bus name; records who was asked."""
    asked = []

    async def call(agent, profile, keys):
        asked.append(agent.peer.name)
        answer = answers[agent.peer.name]
        if isinstance(answer, BaseException):
            raise answer
        if answer == "never":
            await asyncio.Event().wait()
        return answer

    return call, asked


async def test_another_users_agent_never_chooses_the_key(tmp_path):
    call, asked = agents({NOBODY.name: {"mn_ha_key": f"hex:{AGENT_KEY}"}})
    src = SecretSource(call, secrets_file(tmp_path))
    src.register_agent(NOBODY, "/evil")
    assert await src.key("corp", ROOT) == Secret(bytes.fromhex(FILE_KEY))
    assert await src.key("corp", USER) == Secret(bytes.fromhex(FILE_KEY))
    assert await src.key("corp", None) == Secret(bytes.fromhex(FILE_KEY))
    assert asked == []


async def test_the_callers_own_agent_is_used(tmp_path):
    call, asked = agents({USER.name: {"mn_ha_key": f"hex:{AGENT_KEY}"},
                          ROOT.name: {"mn_ha_key": f"hex:{FILE_KEY}"}})
    src = SecretSource(call, None)
    src.register_agent(USER, "/tray")
    src.register_agent(ROOT, "/tray")
    assert await src.key("corp", USER) == Secret(bytes.fromhex(AGENT_KEY))
    assert asked == [USER.name]


@pytest.mark.parametrize("answer", [
    {"mn_ha_key": "hex:zz"},                  # malformed
    {"mn_ha_key": "hex:0011"},                # too short
    {"mn_ha_key": "hex:" + "00" * 5000},      # absurdly long
    {},                                       # nothing for this profile
    AgentFailed("org.freedesktop.DBus.Error.AccessDenied"),
])
async def test_a_bad_answer_means_try_the_next_source(tmp_path, answer):
    call, asked = agents({ROOT.name: answer})
    src = SecretSource(call, secrets_file(tmp_path))
    src.register_agent(ROOT, "/tray")
    assert await src.key("corp", ROOT) == Secret(bytes.fromhex(FILE_KEY))
    assert asked == [ROOT.name]


async def test_an_agent_that_never_answers_is_bounded_and_named(tmp_path):
    call, _ = agents({ROOT.name: "never"})
    src = SecretSource(call, None, agent_timeout=0.05, terminal_timeout=0.05)
    src.register_agent(ROOT, "/tray")
    async with asyncio.timeout(5):
        with pytest.raises(SecretError) as exc:
            await src.key("corp", ROOT)
    assert "secret agent :1.root (uid 0) did not answer within 0.05 s" in str(exc.value)
    # With the file configured, the file answers after the bound.
    src.secrets_file = secrets_file(tmp_path)
    async with asyncio.timeout(5):
        assert await src.key("corp", ROOT) == Secret(bytes.fromhex(FILE_KEY))


async def test_a_users_agents_are_bounded_and_dropped_when_their_names_go():
    src = SecretSource(None, None)
    for i in range(1000):
        src.register_agent(Peer(f":1.{i}", 65534, i), "/a")
    names = [a.peer.name for a in src.agents[65534]]
    assert names == [f":1.{i}" for i in range(1000 - MAX_AGENTS_PER_UID, 1000)]
    src.forget_name(":1.5")  # an older connection already dropped: nothing to do
    assert len(src.agents[65534]) == MAX_AGENTS_PER_UID
    for name in names:
        src.forget_name(name)
    assert src.agents == {}


async def test_a_secret_the_users_agent_lacks_is_asked_of_their_next_agent():
    """trustroamctl connect --ask: the tray (registered first) is asked first; the
    terminal's agent only for what the tray did not have, and when the terminal's
    connection goes the tray's agent stays."""
    tray, cli = Peer(":1.tray", 1000, 20), Peer(":1.cli", 1000, 21)
    keys_asked = []

    async def call(agent, profile, keys):
        keys_asked.append((agent.peer.name, list(keys)))
        if agent.peer == tray:
            return {"mn_ha_key": f"hex:{AGENT_KEY}"}
        return {"vpn_psk": "typed-psk", "mn_ha_key": f"hex:{FILE_KEY}"}

    src = SecretSource(call, None)
    src.register_agent(tray, "/tray")
    src.register_agent(cli, "/cli")
    src.register_agent(cli, "/cli2")  # again from the same connection: replaces its own
    got = await src.fetch("corp", USER, ["vpn_psk"])
    assert keys_asked == [(":1.tray", ["mn_ha_key", "vpn_psk"]), (":1.cli", ["vpn_psk"])]
    assert got.key == Secret(bytes.fromhex(AGENT_KEY))  # the first agent's key stays
    assert dict(got.extra) == {"vpn_psk": "typed-psk"}
    src.forget_name(":1.cli")
    assert [a.path for a in src.agents[1000]] == ["/tray"]


async def test_an_agent_whose_connection_is_gone_is_forgotten(tmp_path):
    call, _ = agents({ROOT.name: AgentFailed("org.freedesktop.DBus.Error.ServiceUnknown",
                                             gone=True)})
    src = SecretSource(call, secrets_file(tmp_path))
    src.register_agent(ROOT, "/tray")
    await src.key("corp", ROOT)
    assert src.agents == {}


def test_registration_arguments_are_bounded():
    src = SecretSource(None, None)
    with pytest.raises(AgentRefused, match="path"):
        src.register_agent(ROOT, "/" + "a" * MAX_AGENT_PATH)
    for uid in range(MAX_AGENTS):
        src.register_agent(Peer(f":1.{uid}", uid), "/a")
    with pytest.raises(AgentRefused, match="too many"):
        src.register_agent(Peer(":1.x", 99999), "/a")
    src.register_agent(Peer(":1.y", 5), "/b")  # replacing one's own still works


async def test_an_agent_outside_the_active_session_is_not_asked(tmp_path):
    call, asked = agents({USER.name: {"mn_ha_key": f"hex:{AGENT_KEY}"}})

    async def inactive(peer):
        return "its login session is not the active one"

    src = SecretSource(call, secrets_file(tmp_path), session_check=inactive)
    src.register_agent(USER, "/tray")
    assert await src.key("corp", USER) == Secret(bytes.fromhex(FILE_KEY))
    assert asked == []


async def test_a_fifo_as_secrets_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "secrets.toml"
    os.mkfifo(fifo, 0o600)
    done = threading.Event()
    try:
        with pytest.raises(SecretError, match="not a regular file"):
            # In a thread: the old code blocked in open() until a writer came.
            await asyncio.wait_for(asyncio.to_thread(read_secrets_file, fifo, "corp"), 2)
        done.set()
    finally:
        if not done.is_set():  # unblock the stuck reader so the test run can end
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_symlink_or_directory_as_secrets_file_is_refused(tmp_path):
    real = secrets_file(tmp_path)
    link = tmp_path / "link.toml"
    link.symlink_to(real)
    with pytest.raises(SecretError, match="is a symbolic link"):
        read_secrets_file(link, "corp")
    d = tmp_path / "dir"
    d.mkdir(mode=0o700)
    with pytest.raises(SecretError, match="is a directory"):
        read_secrets_file(d, "corp")


def test_secrets_file_messages_name_no_path(tmp_path):
    with pytest.raises(SecretError) as exc:
        read_secrets_file(tmp_path / "missing.toml", "corp")
    assert str(tmp_path) not in str(exc.value) and "secrets file" in str(exc.value)


def vpn_secrets_file(tmp_path, body):
    f = tmp_path / "secrets.toml"
    f.write_text(f'[corp]\nmn_ha_key = "hex:{FILE_KEY}"\n{body}')
    f.chmod(0o600)
    return f


async def test_the_key_and_the_vpn_secrets_come_in_one_agent_round_trip(tmp_path):
    keys_asked = []

    async def call(agent, profile, keys):
        keys_asked.append(list(keys))
        return {"mn_ha_key": f"hex:{AGENT_KEY}", "vpn_psk": "agent-psk", "other": "x"}

    src = SecretSource(call, vpn_secrets_file(tmp_path, 'vpn_psk = "file-psk"\n'))
    src.register_agent(USER, "/agent")
    got = await src.fetch("corp", USER, ["vpn_psk"])
    assert keys_asked == [["mn_ha_key", "vpn_psk"]]
    assert got.key == Secret(bytes.fromhex(AGENT_KEY))
    assert dict(got.extra) == {"vpn_psk": "agent-psk"}  # only what was asked for
    assert "agent-psk" not in repr(got) and "agent-psk" not in str(got.extra)


async def test_a_vpn_secret_the_agent_lacks_comes_from_the_secrets_file(tmp_path):
    call, _ = agents({USER.name: {"mn_ha_key": f"hex:{AGENT_KEY}"}})
    src = SecretSource(call, vpn_secrets_file(tmp_path, 'vpn_password = "file-pw"\n'))
    src.register_agent(USER, "/agent")
    got = await src.fetch("corp", USER, ["vpn_password"])
    assert got.key == Secret(bytes.fromhex(AGENT_KEY))
    assert dict(got.extra) == {"vpn_password": "file-pw"}
    # The helper's own start (no requester): the file alone.
    got = await src.fetch("corp", None, ["vpn_password"])
    assert got.key == Secret(bytes.fromhex(FILE_KEY)) and got.extra["vpn_password"] == "file-pw"


@pytest.mark.parametrize("body", ["", 'vpn_psk = ""\n', "vpn_psk = 7\n",
                                  'other = "hunter2"\n'])
async def test_a_missing_vpn_secret_is_one_line_naming_key_and_profile(tmp_path, body):
    call, _ = agents({USER.name: {"mn_ha_key": f"hex:{AGENT_KEY}", "vpn_psk": ""}})
    src = SecretSource(call, vpn_secrets_file(tmp_path, body))
    src.register_agent(USER, "/agent")
    with pytest.raises(SecretError) as exc:
        await src.fetch("corp", USER, ["vpn_psk"])
    text = str(exc.value)
    assert text.startswith("no vpn_psk for profile 'corp': "), text
    assert "\n" not in text and "hunter2" not in text and FILE_KEY not in text
    assert AGENT_KEY not in text


def test_a_secrets_file_reached_through_a_symlinked_directory_is_refused(tmp_path):
    """No symlink anywhere on the way (app.config.read_regular_file), not only the
    last component; the message still names no path."""
    (tmp_path / "real").mkdir()
    secrets_file(tmp_path / "real")
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    with pytest.raises(SecretError) as exc:
        read_secrets_file(tmp_path / "linked" / "secrets.toml", "corp")
    assert str(exc.value) == "refused: the secrets file is reached through a symbolic link"


async def test_the_requesters_own_terminal_agent_is_asked_first_and_given_time_to_type():
    """Review finding 4: ``trustroamctl connect --ask`` registers its agent on the
    Connect's own connection; that one is asked first (not after up to the bound on
    the tray's) and has the terminal bound (a person types every secret), not the
    bound of an agent that answers from a keyring."""
    tray, cli = Peer(":1.tray", 1000, 20), Peer(":1.cli", 1000, 21)
    asked = []

    async def call(agent, profile, keys):
        asked.append(agent.peer.name)
        if agent.peer == cli:
            await asyncio.sleep(0.2)  # typing: longer than agent_timeout below
            return {"mn_ha_key": f"hex:{AGENT_KEY}"}
        return {}

    src = SecretSource(call, None, agent_timeout=0.01)
    src.register_agent(tray, "/tray")
    src.register_agent(cli, "/cli")
    got = await src.fetch("corp", cli)
    assert asked == [":1.cli"]
    assert got.key == Secret(bytes.fromhex(AGENT_KEY))
