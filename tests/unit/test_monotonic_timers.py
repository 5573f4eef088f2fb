"""Timers on a monotonic clock, wall time only for the identification (RFC 5944 5.7).

The driver feeds the machines a monotonic ``now``; the registration client maps
it to wall seconds for the timestamp identification only.  A wall clock that
steps (NTP after a resume) moves no retransmission or renewal deadline, and the
identification follows the wall clock.
"""

from __future__ import annotations

from app.agents.ha_core import HomeAgent
from app.mip import ident
from app.mip.messages import RegistrationRequest
from app.mn.registration import Registered, RegistrationClient, RegistrationConfig
from tests.support.identities import T0, config
from tests.support.world import COA, client, pump

MONO = 5_000.0
"""A monotonic clock's reading: nothing like the Unix time."""
HOUR = 3600.0


def walled(step: list[float]) -> RegistrationClient:
    cfg: RegistrationConfig = client().config
    return RegistrationClient(cfg, wall=lambda now: now - MONO + T0 + step[0])


def sent_time(c: RegistrationClient) -> float:
    d = c.datagrams_to_send()[-1]
    return ident.unix_from_ntp(RegistrationRequest.decode(d.data).identification)


def test_rfc5944_5_7_a_wall_clock_step_moves_no_deadline_but_the_identification():
    step = [0.0]
    c = walled(step)
    c.register(COA, MONO)
    assert abs(sent_time(c) - T0) < 1  # the identification is wall time
    retransmit = c.get_timer()
    assert retransmit is not None and retransmit - MONO < 10  # monotonic, not wall
    step[0] = HOUR  # NTP steps the wall clock
    assert c.get_timer() == retransmit
    c.handle_timer(retransmit)
    assert abs(sent_time(c) - (T0 + HOUR + (retransmit - MONO))) < 1


def test_rfc5944_5_7_the_binding_and_its_renewal_stay_on_the_monotonic_clock():
    step = [0.0]
    c, ha = walled(step), HomeAgent(config())
    c.register(COA, MONO)
    # The home agent's clock is wall time: it takes the request's identification.
    for d in c.datagrams_to_send():
        out = ha.handle_request(d.data, (COA, 434), T0 + 0.01)
        c.receive(out.reply, MONO + 0.01)
    ev = c.next_event()
    assert isinstance(ev, Registered) and ev.expires_at == MONO + 100
    renew = c.get_timer()
    assert renew is not None and renew - MONO == 75
    step[0] = HOUR  # (a step back keeps the identification rising: 5.7.1's floor)
    assert c.get_timer() == renew and c.binding is not None
    assert c.binding.expires_at == MONO + 100
    c.handle_timer(renew)
    assert abs(sent_time(c) - (T0 + HOUR + 75)) < 1


def test_without_a_wall_mapping_now_is_the_wall_time():
    c, ha = client(), HomeAgent(config())
    c.register(COA, T0)
    assert isinstance(pump(c, ha, T0)[0], Registered)
