"""A one-shot registration against a home agent, for the demo and for admins.

``python -m app.agents.sample_client --config ha.toml --home-address 10.20.1.10``
takes the mobile node's security association from the home agent's own
configuration (so only whoever can read that file can run it), registers a
co-located care-of address from this host, resynchronises once after a 133,
and prints the home agent's answer.  The real mobile node is trustroamd.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from ipaddress import AddressValueError, IPv4Address
from pathlib import Path

from app.agents.ha_config import ReplayStyle, load
from app.config import ConfigError
from app.mip import ident
from app.mip.auth import append_authenticator, verify
from app.mip.codes import describe
from app.mip.errors import DecodeError
from app.mip.extensions import ExtType
from app.mip.messages import RegFlags, RegistrationReply, RegistrationRequest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sample_client", description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--home-address", required=True)
    ap.add_argument("--lifetime", type=int, default=300)
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--wait", type=float, default=0.0,
                    help="keep trying this many seconds while the home agent is not listening")
    args = ap.parse_args(argv)
    try:
        cfg = load(args.config)
        hoa = IPv4Address(args.home_address)
    except ConfigError as exc:
        print(f"sample_client: {exc}", file=sys.stderr)
        return 2
    except AddressValueError:
        print(f"sample_client: --home-address {args.home_address!r} is not an IPv4 address",
              file=sys.stderr)
        return 2
    mn = cfg.by_home_address().get(hoa)
    if mn is None:
        print(f"sample_client: {hoa} is not a mobile node in {args.config}", file=sys.stderr)
        return 2
    target = ("127.0.0.1" if str(cfg.listen) == "0.0.0.0" else str(cfg.listen), cfg.port)
    offset, ha_nonce = 0.0, 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(args.timeout)
        sock.connect(target)
        coa = IPv4Address(sock.getsockname()[0])
        deadline = time.monotonic() + args.wait
        attempts = 0
        while attempts < 2:
            attempts += 1
            if mn.replay is ReplayStyle.TIMESTAMP:
                identification = ident.ntp_from_unix(time.time() + offset)
            else:
                identification = ident.nonce_ident(ha_nonce, int(time.time() * 1000))
            req = RegistrationRequest(RegFlags.D | RegFlags.T, args.lifetime, hoa, cfg.address,
                                      coa, identification)
            sock.send(append_authenticator(req.encode(), ExtType.MOBILE_HOME_AUTH, mn.spi,
                                           mn.key, mn.algorithm))
            try:
                rep = RegistrationReply.decode(sock.recv(4096))
            except TimeoutError:
                print(f"sample_client: no reply from home agent {target[0]}:{target[1]} "
                      f"within {args.timeout} s", file=sys.stderr)
                return 1
            except ConnectionRefusedError:
                if time.monotonic() < deadline:
                    attempts -= 1
                    time.sleep(0.05)  # the service is starting; nothing to await but it
                    continue
                print(f"sample_client: home agent {target[0]}:{target[1]} is not listening",
                      file=sys.stderr)
                return 1
            except DecodeError as exc:
                print(f"sample_client: malformed reply: {exc}", file=sys.stderr)
                return 1
            auth = rep.mobile_home_auth
            if auth is None or not verify(mn.algorithm, mn.key, auth.covered,
                                          auth.authenticator):
                print("sample_client: reply is not authenticated by the home agent",
                      file=sys.stderr)
                return 1
            print(f"{hoa} care-of {coa}: {describe(rep.code)}, lifetime {rep.lifetime}")
            if rep.code != 133:
                return 0 if rep.code in (0, 1) else 1
            offset = ident.clock_offset_from_mismatch(rep.identification, time.time())
            ha_nonce = ident.high(rep.identification)
    return 1


if __name__ == "__main__":
    sys.exit(main())
