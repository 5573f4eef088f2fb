"""Which VPN gateway last brought mode mc up, per profile and network, kept.

``app.mn.gateway_order`` tries that gateway first the next time the profile is
on that network; this keeps its memory across restarts in the helper's state
directory (``gateway-memory.json``, root-only, written atomically, as
``app.service.gateway_cache`` keeps the gateways' addresses).  Advisory: a file
that cannot be believed is ignored with a warning naming it (the order is then
the profile's), never an error that stops a connect.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from app.service.state import read_advisory, write_file

log = logging.getLogger(__name__)

FILE = "gateway-memory.json"
MAX_FILE = 65536
MAX_PROFILES = 16
MAX_NETWORKS = 64
"""Networks kept per profile (the least recently worked one goes)."""
MAX_TEXT = 253
VERSION = 1


class GatewayMemory:
    def __init__(self, directory: Path | None) -> None:
        """``directory``: the helper's state directory (None: nothing is kept)."""
        self.directory = directory
        self._doc: dict[str, dict[str, str]] | None = None

    def get(self, profile: str) -> dict[str, str]:
        """Network key -> the gateway that worked there last, for ``profile``."""
        return dict(self._load().get(profile, {}))

    def put(self, profile: str, network: str, gateway: str) -> None:
        """``gateway`` brought mc up on ``network``: kept (the newest last)."""
        if len(profile) > MAX_TEXT or len(network) > MAX_TEXT or len(gateway) > MAX_TEXT:
            return
        doc = self._load()
        nets = doc.pop(profile, {})
        doc[profile] = nets
        nets.pop(network, None)
        nets[network] = gateway
        while len(nets) > MAX_NETWORKS:
            del nets[next(iter(nets))]
        while len(doc) > MAX_PROFILES:
            del doc[next(iter(doc))]
        if self.directory is None:
            return
        data = json.dumps({"version": VERSION, "profiles": doc}) + "\n"
        try:
            write_file(self.directory, FILE, data.encode(), 0o600)
        except OSError as exc:
            log.warning("cannot keep the VPN gateway that worked in %s: %s",
                        self.directory / FILE, exc.strerror or exc)

    def _load(self) -> dict[str, dict[str, str]]:
        if self._doc is None:
            self._doc = self._read() if self.directory is not None else {}
        return self._doc

    def _read(self) -> dict[str, dict[str, str]]:
        assert self.directory is not None
        return read_advisory(self.directory, FILE, MAX_FILE, parse, {})


def parse(doc: object) -> dict[str, dict[str, str]]:
    """The file's contents; ValueError naming the field if it cannot be believed."""
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"version: must be {VERSION}")
    profiles = doc.get("profiles")
    if not isinstance(profiles, dict) or len(profiles) > MAX_PROFILES:
        raise ValueError(f"profiles: must be an object of at most {MAX_PROFILES} profiles")
    out: dict[str, dict[str, str]] = {}
    for name, nets in profiles.items():
        if not isinstance(nets, dict) or len(nets) > MAX_NETWORKS or len(name) > MAX_TEXT:
            raise ValueError(f"profiles.{name[:64]}: must be an object of at most "
                             f"{MAX_NETWORKS} networks")
        for net, gw in nets.items():
            if not isinstance(gw, str) or not gw or len(gw) > MAX_TEXT or len(net) > MAX_TEXT:
                raise ValueError(f"profiles.{name[:64]}.{net[:64]}: must be a gateway")
        out[name] = dict(nets)
    return out
