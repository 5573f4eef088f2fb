"""The lab's standard configurations: the home agent, the foreign agents and the
mobile node's profile and secrets, as ``demo``, the lab tests and the benchmarks
use them.  The keys are the lab's own, published here: never use them elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from app.lab.charon import GATEWAYS, INTRANET_TS, LAB_PSK

HOME = "10.20.1.10"
HA = "10.20.1.1"
CN = "10.20.1.99"
MN_HA_KEY = "00112233445566778899aabbccddeeff"
FA_HA_KEY = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
FA_CARE_OF = {"fa1": "10.40.1.1", "fa2": "10.40.2.1"}
FA_NODE = {"fa1": "tr-fa1", "fa2": "tr-fa2"}


def ha_toml(state_dir: Path, extra: str = "", replay: str = "timestamp") -> str:
    """``extra``: more ``[home_agent]`` keys (e.g. ``keepalive_interval = 2``);
    ``replay``: the mobile node's replay protection, "timestamp" or "nonce"."""
    fas = "".join(f'[[foreign_agents]]\ncare_of_address = "{coa}"\nspi = 900\n'
                  f'key = "hex:{FA_HA_KEY}"\n' for coa in FA_CARE_OF.values())
    return (f'[home_agent]\naddress = "{HA}"\nhome_network = "10.20.1.0/24"\n'
            f'state_dir = "{state_dir}"\ndataplane = "userspace"\n'
            # The lab measures handovers, not power-cut durability.
            'sync = "normal"\n' + extra +
            f'[[mobile_nodes]]\nhome_address = "{HOME}"\nspi = 256\nkey = "hex:{MN_HA_KEY}"\n'
            f'replay = "{replay}"\n'
            + fas)


def fa_toml(link: str = "fa1", advert_interval: float = 1.0) -> str:
    return (f'[foreign_agent]\ncare_of_address = "{FA_CARE_OF[link]}"\ninterface = "fa"\n'
            f"max_lifetime = 300\nadvert_interval = {advert_interval}\n"
            f'[[home_agents]]\naddress = "{HA}"\nspi = 900\nkey = "hex:{FA_HA_KEY}"\n')


VPN_IDENTITY = "mn@trustroam.lab"
"""The MN's IKE identity: the lab gateways take any identity that knows LAB_PSK
(and prove their own address, the profile's default remote identity)."""


def profile_toml(*, vpn_gateways: Sequence[str] = (), keep_alive_inside: bool = False) -> str:
    """The lab MN's profile; with ``vpn_gateways`` a ``[vpn]`` table (PSK auth) for
    the lab's gateways (``GATEWAYS``' addresses), tried in that order."""
    text = f"""home_address = "{HOME}"
home_network = "10.20.1.0/24"
home_agent = "{HA}"
spi = 256
interface = "eth0"
[probe]
initial_timeout = 1.0
retries = 1
"""
    if vpn_gateways:
        gws = ", ".join(f'"{g}"' for g in vpn_gateways)
        # The gateways' own selector and proposals (app.lab.charon): the intranet
        # is 10.0.0.0/8, and their ESP proposal asks for PFS.
        text += (f'[vpn]\ngateways = [{gws}]\nidentity = "{VPN_IDENTITY}"\nauth = "psk"\n'
                 f"keep_alive_inside = {str(keep_alive_inside).lower()}\n"
                 f'intranet = ["{INTRANET_TS}"]\nike_proposals = ["aes128-sha256-x25519"]\n'
                 'esp_proposals = ["aes128gcm16-x25519"]\n')
    return text


PROFILE_TOML = profile_toml()


def vpn_profile_toml(gateway: str = GATEWAYS[0].address, keep_alive_inside: bool = False
                     ) -> str:
    """The lab profile with mode mc through one lab gateway (172.16.0.11: tr-gw1)."""
    return profile_toml(vpn_gateways=(gateway,), keep_alive_inside=keep_alive_inside)


def write_helper_files(d: Path, profile: str, *, vpn_gateways: Sequence[str] = (),
                       keep_alive_inside: bool = False) -> tuple[Path, Path]:
    """A profiles directory holding ``profile`` and a root-only secrets file for it
    (``vpn_gateways``: the profile gets a ``[vpn]`` table for them).  The secrets
    file always holds the lab's PSK too: a test may write a VPN profile of its own."""
    profiles = d / "profiles"
    profiles.mkdir(parents=True, exist_ok=True)
    (profiles / f"{profile}.toml").write_text(
        profile_toml(vpn_gateways=vpn_gateways, keep_alive_inside=keep_alive_inside))
    secrets = d / "secrets.toml"
    secrets.write_text(f'[{profile}]\nmn_ha_key = "hex:{MN_HA_KEY}"\nvpn_psk = "{LAB_PSK}"\n')
    secrets.chmod(0o600)
    return profiles, secrets
