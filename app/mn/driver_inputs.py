"""What the mobile node's driver queues for its one task (``app.mn.driver``): each
input to the machines, in arrival order, from sockets, charon, timers and callers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from ipaddress import IPv4Address

from app.api import Policy
from app.mn import access_mode as am
from app.mn.mode_events import VpnNat
from app.mn.reply_path import Path
from app.net.links import LinkSnapshot
from app.vpn.events import VpnEvent


@dataclass(frozen=True, slots=True)
class Received:
    """A registration reply (or anything else) read on one of the registration sockets."""

    data: bytes
    path: Path = Path.LINK
    """The socket it came in on: the link's, or the TIA's (through the VPN)."""


@dataclass(frozen=True, slots=True)
class Tick:
    """The one timer fired: the machines' deadlines are due."""


@dataclass(frozen=True, slots=True)
class Stop:
    """Deregister and end; ``done`` when nothing of ours stands at the home agent."""

    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True)
class VpnInput:
    """charon's event, or what the VPN link read of it."""

    event: VpnEvent | VpnNat


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """The user's policy."""

    policy: Policy


@dataclass(frozen=True, slots=True)
class VpnEcho:
    """The VPN probe's echo answered."""

    gateway: IPv4Address
    rtt: float


Input = (LinkSnapshot | Received | am.AgentAdvert | am.Resumed | Tick | Stop | VpnInput
          | PolicyInput | VpnEcho)
