"""Which link may ARP for the home address (RFC 5944 4.6) follows the machine's
actions alone: after every step the driver's permit, fed only the actions, says
what the machine decided (mode h's open path, or a claim of the proven home link)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from app.api import Mode
from app.mn.home_arp import HomeArpPermit
from tests.support.world import Branch, World

IFACES = ("eth0", "eth1")


@dataclass
class Checked(World):
    permit: HomeArpPermit = field(default_factory=HomeArpPermit)
    steps: int = 0

    def apply(self, actions: list) -> None:
        for a in actions:
            self.permit.note(a)
        super().apply(actions)
        self.steps += 1
        p, claimed = self.m.open_path, self.m.home_claimed
        for iface in IFACES:
            decided = (p is not None and p.iface == iface and p.mode is Mode.HOME) or (
                claimed == iface)
            assert self.permit(iface) == decided, (self.now, iface, self.m.mode, actions)


@dataclass
class CheckedBranch(Checked, Branch):
    pass


@pytest.mark.parametrize("walk", [
    ["home", "pub", "home", "t1", "home", "evil", "home", "cafe"],
    ["pub", "home", "nat", "home", "t1gw", "evil", "home"],
])
@pytest.mark.parametrize("setup", [0.3, 0.001, 5.0])
def test_rfc5944_4_6_the_home_arp_permit_is_what_the_actions_say(walk, setup):
    w = Checked(setup=setup)
    for net in walk:
        w.move(net)
        w.run(0.02)
        w.run(50)
    assert w.steps > 20


def test_rfc5944_4_6_a_claim_that_goes_unanswered_ends_the_permit():
    w = CheckedBranch()
    w.move("pub")
    w.run(20)
    w.move("home")
    w.run(30)
    assert w.m.mode is Mode.COLOCATED and not w.permit("eth0")
