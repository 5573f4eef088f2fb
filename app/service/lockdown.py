"""The helper's own configuration file and the lockdown gate it may ask for.

``/etc/trustroam/trustroamd.toml`` (``trustroamd --config``), optional, root's:

    lockdown = true     # nothing leaves until a profile connects or an administrator
                        # releases the gate (ReleaseGate, ``trustroamctl release``)

Under lockdown the gate table is the first thing installed: at boot by
``trustroam-lockdown.service`` (``trustroamd --lockdown-only``, ordered before
``network-pre.target``: before any network is configured), and at every start
of the helper.  With no profile to connect it is the gate of no profile: only
DHCP leaves (no home agent to probe, no VPN gateway), and nothing comes in but
DHCP's answers and ICMP errors about what left.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from app.config import ConfigError, FileMissing, FileRefused, Section, parse_toml
from app.config import read_regular_file as _read
from app.net.gate import TABLE, GateError, GatePolicy, TrafficGate
from app.net.gate import run_nft as _run_nft
from app.net.mn_routes import TUNNEL

DEFAULT_CONFIG = Path("/etc/trustroam/trustroamd.toml")
NOBODY = IPv4Address("0.0.0.0")
"""No home agent and no home address: the gate's probe rules then match nothing
(the kernel sends nothing to 0.0.0.0 off the host, and no packet is from it but
DHCP's, which has its own rule)."""
NO_PROFILE = GatePolicy(NOBODY, NOBODY, TUNNEL)


@dataclass(frozen=True)
class HelperConfig:
    lockdown: bool = False


def load_config(path: Path) -> HelperConfig:
    """The helper's configuration (the defaults if the file does not exist); a bad
    file is refused with a message naming the file and the key."""
    try:
        data = _read(path, root_owned=True)
    except FileMissing:
        return HelperConfig()
    except FileRefused as exc:
        raise ConfigError(str(path), "", exc.reason) from None
    top = Section(str(path), "", parse_toml(data, str(path)))
    config = HelperConfig(lockdown=top.bool_("lockdown", False))
    top.done()
    return config


async def gate_present() -> bool:
    """A gate table is installed (a running or stopped helper's, or lockdown's)."""
    gate = TrafficGate(NO_PROFILE)
    try:
        await _run_nft(f"list table inet {TABLE}\n", gate.lib, gate.nft)
    except GateError:
        return False
    return True


async def install_lockdown_gate() -> bool:
    """The gate of no profile, shut, unless a gate is installed already (True if
    this installed it): a running helper's open path is never replaced here."""
    if await gate_present():
        return False
    await TrafficGate(NO_PROFILE).install()
    return True
