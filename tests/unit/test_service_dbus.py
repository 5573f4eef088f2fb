"""The helper's D-Bus plumbing without a bus (issue 11): every failure is one
documented error with a one-line message and no traceback or path, nothing is
re-raised into the library (which logs ~15 lines per refusal); polkit is asked with
interaction only when the caller's message allows it, never waited on forever, and
never by one caller more than a few times at once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.api import ERROR_FAILED, ERROR_NOT_AUTHORIZED
from app.net.mn_routes import Backend
from app.service import bus as busio
from app.service import polkit as polkit_mod
from app.service.bus import DBusError, Message, MessageFlag, MessageType, Variant
from app.service.dbus_api import CALLER, HelperInterface, _OneLineReply, caller_text
from app.service.helper import Helper
from app.service.limits import CHECKS_PER_NAME, CHECKS_PER_UID
from app.service.polkit import Authorizer
from app.service.secrets import Peer, SecretSource


def call_msg(member="ListProfiles", flags=MessageFlag.NONE):
    msg = Message(destination="org.trustroam.Helper1", path="/org/trustroam/Helper1",
                  interface="org.trustroam.Helper1", member=member, flags=flags, serial=7)
    msg.sender = ":1.99"
    return msg


class SendingBus:
    """No connection: only the replies are seen."""

    def __init__(self):
        self.sent: list[Message] = []

    def send(self, msg):
        self.sent.append(msg)


def sending_bus():
    bus = SendingBus()
    return bus, bus.sent


def test_an_unexpected_exception_is_one_line_without_traceback_or_path(caplog):
    bus, sent = sending_bus()
    caplog.set_level(logging.DEBUG)
    with _OneLineReply(bus, call_msg()):  # must not re-raise
        raise OSError(40, "Too many levels of symbolic links",
                      "/etc/trustroam/profiles/loop.toml")
    [reply] = sent
    assert reply.message_type is MessageType.ERROR and reply.error_name == ERROR_FAILED
    text = reply.body[0]
    assert "Traceback" not in text and "/etc" not in text and ".py" not in text, text
    assert "\n" not in text
    assert len(caplog.records) == 1 and "\n" not in caplog.records[0].getMessage()


def test_a_dbus_error_is_answered_once_and_not_logged(caplog):
    bus, sent = sending_bus()
    caplog.set_level(logging.DEBUG)
    with _OneLineReply(bus, call_msg("Connect")):
        raise DBusError(ERROR_NOT_AUTHORIZED, "not authorised for org.trustroam.connect")
    [reply] = sent
    assert reply.error_name == ERROR_NOT_AUTHORIZED
    assert reply.body == ["not authorised for org.trustroam.connect"]
    assert caplog.records == []


def test_caller_text_keeps_addresses_and_drops_paths():
    assert caller_text("cannot open /etc/trustroam/secrets.toml: x") == \
        "cannot open <path>: x"
    assert caller_text("10.20.1.0/24 and 'a/b'") == "10.20.1.0/24 and 'a/b'"
    assert caller_text("one\ntwo\r\nthree") == "one two three"
    assert len(caller_text("x" * 10_000)) <= 300


class FakeBus:
    """Answers CheckAuthorization with ``answer`` (or never); records what it got."""

    def __init__(self, answer=None):
        self.answer = answer
        self.calls: list[Message] = []
        self.sent: list[Message] = []
        self._method_return_handlers: dict[int, object] = {}

    async def call(self, msg):
        self.calls.append(msg)
        if self.answer is None:
            await asyncio.Event().wait()
        return Message(message_type=MessageType.METHOD_RETURN, reply_serial=1,
                       signature="(bba{ss})", body=[self.answer])

    async def send(self, msg):
        self.sent.append(msg)


async def test_polkit_interaction_only_when_the_caller_allows_it():
    bus = FakeBus([False, True, {}])
    auth = Authorizer(bus)  # type: ignore[arg-type]
    allowed, why = await auth.check(":1.5", "org.trustroam.configure", uid=1000)
    assert not allowed and "authentication is required" in why
    assert bus.calls[-1].body[3] == 0  # no AllowUserInteraction
    await auth.check(":1.5", "org.trustroam.configure", interactive=True, uid=1000)
    assert bus.calls[-1].body[3] == 1


async def test_the_message_flag_decides_interaction():
    seen = []

    class Recorder:
        bus = None

        async def check(self, sender, action, *, interactive=False, uid=None):
            seen.append(interactive)
            return False, "no"

    helper = Helper(profiles_dir=None, extra_profiles=[], secrets=SecretSource(None, None),
                    backend=Backend.USERSPACE)
    iface = HelperInterface(helper, Recorder())  # type: ignore[arg-type]
    for flags in (MessageFlag.NONE, MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION):
        token = CALLER.set(call_msg("Connect", flags))
        try:
            with pytest.raises(DBusError):
                await iface._authorize("org.trustroam.connect", 1000)
        finally:
            CALLER.reset(token)
    assert seen == [False, True]


async def test_polkit_that_never_answers_is_bounded_and_named(monkeypatch):
    monkeypatch.setattr(polkit_mod, "BUS_TIMEOUT", 0.05)
    bus = FakeBus(None)
    auth = Authorizer(bus, check_timeout=0.05)  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        allowed, why = await auth.check(":1.5", "org.trustroam.connect", uid=1000)
    assert not allowed and "polkit did not answer within 0.05 s" in why
    assert [m.member for m in bus.sent] == ["CancelCheckAuthorization"]
    assert bus._method_return_handlers == {}


class ScriptedBus:
    """Answers each call from a script of (error name or None, signature, body);
    "never" leaves the call pending, as a hung peer does."""

    def __init__(self, *script):
        self.script = list(script)
        self._method_return_handlers: dict[int, object] = {}
        self.serial = 0

    async def call(self, msg):
        self.serial += 1
        msg.serial = self.serial
        self._method_return_handlers[msg.serial] = object()  # as dbus-next keeps one
        step = self.script.pop(0)
        if step == "never":
            await asyncio.Event().wait()
        error, signature, body = step
        del self._method_return_handlers[msg.serial]
        if error:
            return Message(message_type=MessageType.ERROR, reply_serial=msg.serial,
                           error_name=error, signature="s", body=["no"])
        return Message(message_type=MessageType.METHOD_RETURN, reply_serial=msg.serial,
                       signature=signature, body=body)


async def test_an_unanswered_call_leaves_no_reply_handler_behind():
    bus = ScriptedBus("never")
    with pytest.raises(busio.PeerError, match=r"the peer did not answer within 0\.05 s"):
        await busio.call(bus, Message(destination=":1.5", path="/", member="X"), 0.05,
                         "the peer")
    assert bus._method_return_handlers == {}


@pytest.mark.parametrize(("script", "why"), [
    ([("org.freedesktop.DBus.Error.ServiceUnknown", "", [])], None),  # no logind
    ([("org.freedesktop.login1.NoSessionForPID", "", [])], "in no login session"),
    ([(None, "o", ["/s/1"]), (None, "v", [Variant("b", True)])], None),
    ([(None, "o", ["/s/1"]), (None, "v", [Variant("b", False)])], "not the active one"),
    (["never"], "logind did not answer"),
])
async def test_an_agents_session_must_be_active_where_logind_runs(monkeypatch, script, why):
    monkeypatch.setattr(busio, "BUS_TIMEOUT", 0.05)
    got = await busio.session_check(ScriptedBus(*script), Peer(":1.7", 1000, 4242))
    assert got == why if why is None else why in got


async def test_polkit_checks_in_flight_are_bounded_per_caller_and_the_rest_refused_at_once():
    """A caller whose polkit agent never answers (security review 2026-12-07,
    finding 4): its checks beyond a handful are refused without asking polkit,
    and another caller is still asked."""
    bus = FakeBus(None)  # polkit holds every check (an agent that never answers)
    auth = Authorizer(bus)  # type: ignore[arg-type]
    held = [asyncio.create_task(auth.check(f":1.{5 + i % 2}", "org.trustroam.configure",
                                           interactive=True, uid=1001))
            for i in range(50)]
    await asyncio.sleep(0)  # every task runs to its first wait
    await asyncio.sleep(0)
    done = [t for t in held if t.done()]
    assert len(bus.calls) == min(CHECKS_PER_UID, 2 * CHECKS_PER_NAME)
    assert len(done) == 50 - len(bus.calls)
    assert all(not t.result()[0] and "too many authorisation checks" in t.result()[1]
               for t in done)
    other = asyncio.create_task(auth.check(":1.9", "org.trustroam.connect", uid=1002))
    await asyncio.sleep(0)
    assert bus.calls[-1].body[0][1]["name"].value == ":1.9"  # still asked
    for t in [*held, other]:
        t.cancel()
    await asyncio.gather(*held, other, return_exceptions=True)
    assert len(auth.checks.names) == 0 and len(auth.checks.uids) == 0  # slots given back


async def test_polkit_limits_exceeded_is_a_refusal_logged_rate_limited(caplog):
    class Busy(FakeBus):
        async def call(self, msg):
            self.calls.append(msg)
            return Message(message_type=MessageType.ERROR, reply_serial=1,
                           error_name="org.freedesktop.DBus.Error.LimitsExceeded",
                           signature="s", body=["busy"])
    caplog.set_level(logging.DEBUG)
    polkit_mod.QUIET._start = -1e9  # a fresh window for this test
    auth = Authorizer(Busy())  # type: ignore[arg-type]
    results = [await auth.check(":1.5", "org.trustroam.connect", uid=1001) for _ in range(100)]
    assert all(not ok and "polkit is busy" in why for ok, why in results)
    assert len(caplog.records) <= polkit_mod.QUIET.burst


@pytest.mark.parametrize(("script", "why"), [
    ([("org.freedesktop.DBus.Error.ServiceUnknown", "", [])], None),  # no logind
    ([("org.freedesktop.login1.NoSessionForPID", "", [])], "in no login session"),
    ([(None, "o", ["/s/1"]), (None, "v", [Variant("(uo)", [1000, "/u/1000"])])], None),
    # uid 1000's process inside uid 7's session (a subordinate uid of uid 7's range)
    ([(None, "o", ["/s/1"]), (None, "v", [Variant("(uo)", [7, "/u/7"])])],
     "belongs to uid 7"),
])
async def test_an_agent_registers_only_from_a_session_of_its_own_uid(monkeypatch, script, why):
    monkeypatch.setattr(busio, "BUS_TIMEOUT", 0.05)
    got = await busio.session_owner_check(ScriptedBus(*script), Peer(":1.7", 1000, 4242))
    assert got == why if why is None else why in got


def test_every_error_told_to_a_caller_has_the_one_user_facing_base():
    """Review R9: one base with the one-line, secret-free contract, so the D-Bus face
    catches one type and a new error class cannot be forgotten in a tuple there."""
    import ast
    import inspect

    from app.agents.binding_store import StoreError
    from app.agents.ha_userspace import DataPlaneError
    from app.config import ConfigError
    from app.errors import UserFacingError
    from app.net.gate import GateError
    from app.service import dbus_api
    from app.service.helper import HelperError
    from app.service.profiles import ProfileError
    from app.service.secrets import AgentRefused, SecretError
    from app.service.state import StateError
    from app.vpn.charon import VpnError
    from app.vpn.credentials import CredentialError

    told = (HelperError, GateError, ConfigError, SecretError, VpnError, StateError,
            CredentialError, ProfileError, AgentRefused, StoreError, DataPlaneError)
    assert [c.__name__ for c in told if not issubclass(c, UserFacingError)] == []
    caught = {ast.unparse(h.type) for h in ast.walk(ast.parse(inspect.getsource(dbus_api)))
              if isinstance(h, ast.ExceptHandler) and h.type is not None}
    named = {c.__name__ for c in told} & {n.strip("() ") for t in caught for n in t.split(",")}
    assert named == set(), f"dbus_api catches {sorted(named)}: catch UserFacingError"


def test_history_page_counts_back_from_the_newest_and_refuses_bad_arguments():
    from app.api import ERROR_INVALID, HistoryEntry
    from app.service.dbus_api import HISTORY, MAX_HISTORY, history_page

    history = [HistoryEntry(float(i), "link-up", {}) for i in range(1000)]

    def times(offset, n):
        return [int(e.time) for e in history_page(history, offset, n)]

    assert times(0, 3) == [997, 998, 999]
    assert times(3, 2) == [995, 996]
    assert times(998, 5) == [0, 1]  # the oldest page is short
    assert times(1000, 5) == [] and times(999, 1) == [0]
    assert times(0, 2**32 - 1) == list(range(1000 - MAX_HISTORY, 1000))  # n capped
    assert history_page([], 0, 100) == []
    for offset, n, field in ((0, 0, "n:"), (HISTORY + 1, 1, "offset:"),
                             (2**32 - 1, 100, "offset:")):
        with pytest.raises(DBusError) as err:
            history_page(history, offset, n)
        assert err.value.type == ERROR_INVALID
        assert err.value.text.startswith(field), err.value.text


def test_history_page_reply_counts_every_entry_recorded_past_the_history_kept():
    """GetHistoryPage's ``recorded`` is the newest entry's number + 1, counting on when
    the helper's history (1000 kept) drops its oldest: what a reader of pages uses to
    drop the rows that moved from one page into the next."""
    helper = Helper(profiles_dir=None, extra_profiles=[], secrets=SecretSource(None, None),
                    backend=Backend.USERSPACE)
    helper._event("link-up", {"iface": "eth0"})
    iface = HelperInterface(helper, None)  # type: ignore[arg-type]
    page = HelperInterface.GetHistoryPage.__wrapped__  # the method itself, its reply
    assert page(iface, 0, 5)[0] == 1  # the one before the interface, counted
    for i in range(1200):
        helper._event("probe-sent", {"n": str(i)})
    recorded, rows = page(iface, 1, 2)
    assert recorded == 1201
    assert [r[2]["n"] for r in rows] == ["1197", "1198"]
