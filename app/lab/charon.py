"""strongSwan charon instances for the lab: the two VPN gateways and the MN.

Each instance has its own directory under the lab's state dir: strongswan.conf,
swanctl.conf, a private ``/run`` (charon's pid file path is fixed) and the VICI
socket ``charon.vici`` that swanctl and the helper use.  kernel-libipsec gives
userspace ESP on a TUN device, for kernels without ESP.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.net.gate_rules import CHARON_MARK
from app.vpn.liveness import RETRANSMIT_BASE, RETRANSMIT_TIMEOUT, RETRANSMIT_TRIES

CHARON = "/usr/lib/ipsec/charon"
PLUGINS = ("random nonce openssl pem pkcs1 x509 pubkey revocation constraints aes sha1 sha2 "
           "hmac gmp curve25519 kdf md5 kernel-libipsec kernel-netlink socket-default vici "
           "eap-identity eap-md5 eap-mschapv2")
LAB_PSK = "trustroam-lab-psk"  # a lab credential, not a secret of any real deployment
INTRANET_TS = "10.0.0.0/8"


@dataclass(frozen=True)
class Gateway:
    node: str
    address: str
    pool: str
    inside: str
    """An address inside the intranet selector: kernel-libipsec routes each SA
    with a source address from the local traffic selector, and fails without one."""


GATEWAYS = (Gateway("tr-gw1", "172.16.0.11", "10.99.1.0/24", "10.98.0.11"),
            Gateway("tr-gw2", "172.16.0.12", "10.99.2.0/24", "10.98.0.12"))


def directory(state: Path, node: str) -> Path:
    return state / "charon" / node


MIP_TUNNEL = "trmn0"
"""The mobile node's Mobile IP tunnel: never an IKE source.  Its default route
(mode c or mc) otherwise makes charon pick the home address for a MOBIKE move
the instant a new link has its address but no route yet; every path probe then
fails and the IKE SA dies (charon 5.9.8, seen in the lab)."""


def strongswan_conf(d: Path, interfaces_use: str | None,
                    interfaces_ignore: str | None = None) -> str:
    """Every lab charon marks its IKE sockets as a desktop's must (the MN's gate lets
    only that mark reach the gateways; on the gateways the mark is inert)."""
    use = f"  interfaces_use = {interfaces_use}\n" if interfaces_use else ""
    if interfaces_ignore:
        use += f"  interfaces_ignore = {interfaces_ignore}\n"
    return f"""charon {{
  load_modular = no
  load = {PLUGINS}
  install_routes = yes
  retransmit_tries = {RETRANSMIT_TRIES}
  retransmit_timeout = {RETRANSMIT_TIMEOUT}
  retransmit_base = {RETRANSMIT_BASE}
  make_before_break = yes
{use}  plugins {{
    socket-default {{
      fwmark = {CHARON_MARK:#x}
    }}
    vici {{
      socket = unix://{d / "charon.vici"}
    }}
  }}
  filelog {{
    lab {{
      path = {d / "charon.log"}
      time_format = %H:%M:%S
      default = 1
      ike = 2
      cfg = 2
      flush_line = yes
    }}
  }}
  syslog {{
    daemon {{
      default = -1
    }}
  }}
}}
"""


def gateway_swanctl(gw: Gateway) -> str:
    return f"""connections {{
  mvpn {{
    version = 2
    local_addrs = {gw.address}
    pools = vpool
    mobike = yes
    proposals = aes128-sha256-x25519
    local {{
      auth = psk
      id = {gw.address}
    }}
    remote {{
      auth = psk
    }}
    children {{
      intranet {{
        local_ts = {INTRANET_TS}
        esp_proposals = aes128gcm16-x25519
      }}
    }}
  }}
}}
pools {{
  vpool {{
    addrs = {gw.pool}
  }}
}}
secrets {{
  ike-lab {{
    secret = {LAB_PSK}
  }}
}}
"""


POOL_NAT_TABLE = "tr_poolnat"


def pool_nat_rules(gw: Gateway, iface: str = "dmz", fully_random: bool = False) -> str:
    """nftables: ``gw`` masquerades its pool's traffic leaving by ``iface`` (to the
    intranet), so the home agent sees the gateway's address instead of the TIA
    (RFC 5266 4: "the TIA could be from a private address space associated with the
    VPN gateway"); ``fully_random``: a new port for each new mapping."""
    masq = "masquerade fully-random" if fully_random else "masquerade"
    return f"""table ip {POOL_NAT_TABLE} {{
  chain postrouting {{
    type nat hook postrouting priority srcnat;
    ip saddr {gw.pool} oifname "{iface}" {masq}
  }}
}}
"""


def prepare(state: Path, node: str, *, gateway: Gateway | None) -> Path:
    d = directory(state, node)
    for sub in ("run", "x509", "x509ca", "x509aa", "x509ocsp", "x509crl", "x509ac", "pubkey",
                "private", "rsa", "ecdsa", "bliss", "pkcs8", "pkcs12", "conf.d"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "strongswan.conf").write_text(
        strongswan_conf(d, "dmz" if gateway is not None else None,
                        None if gateway is not None else MIP_TUNNEL))
    (d / "swanctl.conf").write_text(gateway_swanctl(gateway) if gateway else "")
    return d


def command(d: Path) -> list[str]:
    """charon in the foreground with a private /run (ip netns exec gives a mount namespace)."""
    return ["sh", "-c", f"mount --bind {d / 'run'} /run && "
                        f"STRONGSWAN_CONF={d / 'strongswan.conf'} exec {CHARON}"]


def swanctl(d: Path, operation: str, *args: str) -> list[str]:
    """swanctl wants the operation first, then its options."""
    return ["swanctl", operation, "--uri", f"unix://{d / 'charon.vici'}", *args]
