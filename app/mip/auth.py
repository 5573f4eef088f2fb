"""Registration authenticators (RFC 5944 section 3.5.1, RFC 3344/2002 keyed-MD5).

The data covered is the registration message, every extension before the
authentication extension, and that extension's Type, Length and SPI.  The
Authenticator itself and the UDP header are not covered.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from enum import Enum

AUTHENTICATOR_LEN = 16


class Algorithm(Enum):
    HMAC_MD5 = "hmac-md5"
    """RFC 5944's default: HMAC-MD5 (RFC 2104)."""
    KEYED_MD5 = "keyed-md5"
    """Legacy "prefix+suffix" mode: MD5(key || data || key)."""


def compute(algorithm: Algorithm, key: bytes, data: bytes) -> bytes:
    if algorithm is Algorithm.HMAC_MD5:
        return hmac.digest(key, data, "md5")
    return hashlib.md5(key + data + key, usedforsecurity=False).digest()


def verify(algorithm: Algorithm, key: bytes, data: bytes, authenticator: bytes) -> bool:
    """Constant-time check, so timing reveals nothing about a forged authenticator."""
    return hmac.compare_digest(compute(algorithm, key, data), authenticator)


def append_authenticator(
    message: bytes, ext_type: int, spi: int, key: bytes, algorithm: Algorithm
) -> bytes:
    """Append an authentication extension (type 32, 33 or 34) that covers ``message``."""
    head = message + struct.pack("!BBI", ext_type, 4 + AUTHENTICATOR_LEN, spi)
    return head + compute(algorithm, key, head)
