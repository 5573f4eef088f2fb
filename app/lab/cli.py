"""``trustroam-lab``: the network-namespace world TrustRoam is developed and tested in."""

from __future__ import annotations

import argparse
import json
import os
import sys

from app.lab import demo
from app.lab.topology import default
from app.lab.world import Lab, LabError

PROG = "trustroam-lab"


def main(argv: list[str] | None = None) -> int:
    nets = ", ".join(default().access)
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the lab")
    up.add_argument("--at", default="home", help=f"where the MN starts ({nets})")
    up.add_argument("--nm", action="store_true",
                    help="run the real NetworkManager in the MN (private system bus) "
                         "instead of dhclient")
    up.add_argument("--nat-fully-random", action="store_true",
                    help="the NAT picks a random port for every new mapping")
    up.add_argument("--gw-outside-only", action="store_true",
                    help="the VPN gateways are unreachable from the intranet")
    up.add_argument("--portal", action="store_true",
                    help="pub's router is a captive portal (sign-in page, no IKE until "
                         "a form is posted)")
    up.add_argument("--gw-pool-nat", action="store_true",
                    help="the VPN gateways NAT their address pools towards the intranet "
                         "(RFC 5266 4: the home agent sees the gateway, not the TIA)")
    sub.add_parser("down", help="remove everything the lab created, even after a crash")
    mv = sub.add_parser("move", help="re-plug the mobile node into another access network")
    mv.add_argument("net", help=nets)
    st = sub.add_parser("status", help="what is up")
    st.add_argument("--json", action="store_true")
    dm = sub.add_parser("demo", help="the trusted side end to end: HA, FA, trustroamd and "
                                     "the tray, moves home -> t1 -> fa1 -> t2 -> pub -> home "
                                     "(no display: the tray under Xvfb, with screenshots)")
    dm.add_argument("--stay", action="store_true", help="keep everything running afterwards")
    ex = sub.add_parser("exec", help="run a command in a lab node: exec NODE -- CMD...")
    ex.add_argument("node")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print(f"{PROG}: needs root (network namespaces)", file=sys.stderr)
        return 2
    lab = Lab()
    try:
        if args.command == "up":
            took = lab.up(at=args.at, nm=args.nm, gw_inside=not args.gw_outside_only,
                          portal=args.portal, gw_pool_nat=args.gw_pool_nat)
            if args.nat_fully_random:
                lab.set_nat(fully_random=True)
            print(f"lab up in {took:.2f} s; mobile node on {args.at!r}")
        elif args.command == "down":
            removed = lab.down()
            print(f"removed {len(removed)} items" if removed else "nothing to remove")
        elif args.command == "move":
            lab.move(args.net)
            print(f"mobile node moved to {args.net!r}")
        elif args.command == "status":
            status = lab.status()
            if args.json:
                print(json.dumps(status, indent=2))
            else:
                _print_status(status)
        elif args.command == "demo":
            return demo.run(stay=args.stay)
        elif args.command == "exec":
            cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not cmd:
                print(f"{PROG}: exec needs a command after --", file=sys.stderr)
                return 2
            os.execvp("ip", ["ip", "netns", "exec", args.node, *cmd])
    except LabError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `trustroam-lab status | head -1`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _print_status(status: dict[str, object]) -> None:
    if not status["up"]:
        print("lab is down")
        return
    print(f"mobile node on {status['mn_net']!r}, addresses {status['mn_addresses']}")
    procs = status["processes"]
    assert isinstance(procs, dict)
    for name, info in procs.items():
        print(f"  {name:<16} pid {info['pid']:<8} {'running' if info['alive'] else 'DEAD'}")


if __name__ == "__main__":
    sys.exit(main())
