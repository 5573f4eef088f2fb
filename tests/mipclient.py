"""A minimal mobile-node side for tests: builds signed requests, checks replies."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from app.mip import ident
from app.mip.auth import Algorithm, append_authenticator, verify
from app.mip.extensions import Extension, ExtType
from app.mip.messages import RegFlags, RegistrationReply, RegistrationRequest

KEY_A = bytes.fromhex("00112233445566778899aabbccddeeff")
KEY_B = bytes.fromhex("ffeeddccbbaa99887766554433221100")


@dataclass
class Mn:
    home_address: IPv4Address
    home_agent: IPv4Address
    key: bytes
    spi: int = 256
    algorithm: Algorithm = Algorithm.HMAC_MD5
    clock: Callable[[], float] = time.time
    clock_offset: float = 0.0
    ha_nonce: int = 0
    nonce_mode: bool = False
    _last: int = field(default=0, repr=False)

    def next_ident(self) -> int:
        if self.nonce_mode:
            self._last = ident.nonce_ident(self.ha_nonce, (self._last + 1) & 0xFFFFFFFF)
            return self._last
        i = ident.ntp_from_unix(self.clock() + self.clock_offset)
        self._last = max(i, self._last + 1)
        return self._last

    def request(self, coa: str | IPv4Address, *, lifetime: int = 600,
                flags: RegFlags = RegFlags.D | RegFlags.T, extensions: Sequence[Extension] = (),
                identification: int | None = None, home_agent: str | None = None,
                sign: bool = True, key: bytes | None = None, spi: int | None = None) -> bytes:
        req = RegistrationRequest(
            flags, lifetime, self.home_address,
            IPv4Address(home_agent) if home_agent else self.home_agent, IPv4Address(coa),
            self.next_ident() if identification is None else identification, tuple(extensions))
        data = req.encode()
        if not sign:
            return data
        return append_authenticator(data, ExtType.MOBILE_HOME_AUTH,
                                    self.spi if spi is None else spi,
                                    self.key if key is None else key, self.algorithm)

    def check_reply(self, data: bytes) -> RegistrationReply:
        rep = RegistrationReply.decode(data)
        auth = rep.mobile_home_auth
        assert auth is not None, "reply is not authenticated"
        assert verify(self.algorithm, self.key, auth.covered, auth.authenticator)
        return rep

    def learn(self, rep: RegistrationReply) -> None:
        """Resynchronise after a 133 (and keep the nonce of every nonce-mode reply)."""
        if self.nonce_mode:
            self.ha_nonce = ident.high(rep.identification)
        elif rep.code == 133:
            self.clock_offset = ident.clock_offset_from_mismatch(rep.identification,
                                                                 self.clock())
