"""``trustroam-fa``: run the reference foreign agent."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from app.agents.fa_config import ForeignAgentConfig, load
from app.agents.fa_core import ForeignAgent
from app.agents.fa_server import ForeignAgentServer
from app.agents.fa_userspace import UserspaceForeignAgentPlane, interface_address
from app.config import ConfigError

PROG = "trustroam-fa"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description="Reference Mobile IPv4 foreign agent.")
    ap.add_argument("--config", "-c", type=Path, default=Path("/etc/trustroam/fa.toml"))
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = ap.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load(args.config)
        return asyncio.run(_run(config))
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


async def _run(config: ForeignAgentConfig) -> int:
    have = interface_address(config.interface)
    if have is None:
        raise ConfigError(config.source, "foreign_agent.interface",
                          f"{config.interface!r} has no IPv4 address on this host")
    if have != str(config.care_of_address):
        raise ConfigError(config.source, "foreign_agent.care_of_address",
                          f"{config.care_of_address} is not on {config.interface} ({have} is)")
    try:
        plane = (UserspaceForeignAgentPlane(config.interface, str(config.care_of_address),
                                            gre=config.gre)
                 if config.dataplane == "userspace" else None)
        server = ForeignAgentServer(ForeignAgent(config), plane)
        server.start()
    except OSError as exc:
        print(f"{PROG}: cannot start on {config.interface}: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, server.close)
    await server.wait_closed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
