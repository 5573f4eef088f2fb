"""``trustroam-ha``: run the reference home agent, or list its binding cache."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import json
import logging
import signal
import sys
import time
from pathlib import Path

from app.agents import dataplane
from app.agents.binding_store import BindingStore, StoreError
from app.agents.bindings import Binding
from app.agents.ha_config import HomeAgentConfig, SyncMode, load
from app.agents.ha_core import HomeAgent
from app.agents.ha_server import HomeAgentServer
from app.config import ConfigError

PROG = "trustroam-ha"
EXIT_CONFIG = 2
EXIT_RUNTIME = 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Reference Mobile IPv4 home agent (RFC 5944, 3024, 3519).")
    p.add_argument("command", nargs="?", default="run", choices=["run", "bindings", "check"],
                   help="run the home agent (default), list its bindings, or only check "
                        "the configuration")
    p.add_argument("--config", "-c", type=Path, default=Path("/etc/trustroam/ha.toml"),
                   help="configuration file (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="bindings: machine-readable output")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load(args.config)
        if args.command == "check":
            print(f"{args.config}: OK, {len(config.mobile_nodes)} mobile nodes")
            return 0
        if args.command == "bindings":
            return _bindings(config, args.json)
        return asyncio.run(_run(config))
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        return 0


async def _run(config: HomeAgentConfig) -> int:
    plane = dataplane.select(config)
    store = BindingStore(config.state_dir, fsync_each_commit=config.sync is SyncMode.FULL)
    state = store.load()
    core = HomeAgent(config, state.bindings, state.replay)
    server = HomeAgentServer(core, store, plane)
    # The configuration and restored bindings live as long as the process:
    # keep the cyclic GC from walking them again and again (tens of ms each
    # time with 100k bindings).  Nothing on the request path builds cycles.
    gc.collect()
    gc.freeze()
    try:
        server.start(str(config.listen), config.port)
    except OSError as exc:
        hint = ""
        if config.port < 1024 and exc.errno == errno.EACCES:
            hint = (f" (port {config.port} needs root or CAP_NET_BIND_SERVICE; "
                    "set home_agent.port for an unprivileged run)")
        print(f"{PROG}: cannot listen on {config.listen}:{config.port}: {exc.strerror}{hint}",
              file=sys.stderr)
        store.close()
        return EXIT_RUNTIME
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, server.close)
    await server.wait_closed()
    logging.getLogger("trustroam.ha").info("stopped; %d bindings kept in %s",
                                           len(core.bindings), store.path)
    return 0


def _bindings(config: HomeAgentConfig, as_json: bool) -> int:
    store = BindingStore(config.state_dir, read_only=True)
    try:
        rows = sorted(store.load().bindings, key=lambda b: b.home_address)
    finally:
        store.close()
    now = time.time()
    live = [b for b in rows if b.expires_at > now]
    if as_json:
        print(json.dumps([_as_dict(b, now) for b in live], indent=2))
        return 0
    if not live:
        print("no bindings")
        return 0
    print(f"{'HOME ADDRESS':<16} {'CARE-OF ADDRESS':<16} {'LEFT':>6} {'FLAGS':<8} "
          f"{'TUNNEL':<24} NAI")
    for b in live:
        tunnel = (f"udp {b.source_address}:{b.source_port}" if b.udp_tunnel else "ip-in-ip")
        if b.nat_detected:
            tunnel += " nat"
        print(f"{b.home_address!s:<16} {b.care_of_address!s:<16} "
              f"{int(b.seconds_left(now)):>5}s {_flags(b):<8} {tunnel:<24} {b.nai or '-'}")
    return 0


def _flags(b: Binding) -> str:
    return "".join(f.name or "" for f in type(b.flags) if f in b.flags) or "-"


def _as_dict(b: Binding, now: float) -> dict[str, object]:
    return {
        "home_address": str(b.home_address),
        "care_of_address": str(b.care_of_address),
        "lifetime": b.lifetime,
        "seconds_left": round(b.seconds_left(now), 1),
        "registered_at": b.registered_at,
        "expires_at": b.expires_at,
        "flags": _flags(b),
        "reverse_tunnel": b.reverse_tunnel,
        "source": f"{b.source_address}:{b.source_port}",
        "nat_detected": b.nat_detected,
        "udp_tunnel": b.udp_tunnel,
        "keepalive_interval": b.keepalive_interval,
        "nai": b.nai,
    }


if __name__ == "__main__":
    sys.exit(main())
