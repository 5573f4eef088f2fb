"""Registration Identification: NTP timestamps and nonces (RFC 5944 section 5.7).

Identification is 64 bits.  With timestamps it is an NTP time (seconds since
1900 in the high 32 bits, fraction in the low 32).  With nonces the high 32
bits are the home agent's nonce and the low 32 bits the mobile node's.  In
both styles the low 32 bits of a reply echo the request, which is how the
mobile node matches replies to requests.
"""

from __future__ import annotations

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_MASK32 = 0xFFFF_FFFF
DEFAULT_REPLAY_WINDOW = 7.0  # seconds, RFC 5944's suggested default


def ntp_from_unix(unix_time: float) -> int:
    """64-bit NTP timestamp for a Unix time."""
    seconds = int(unix_time)
    fraction = int((unix_time - seconds) * (1 << 32)) & _MASK32
    return (((seconds + NTP_UNIX_OFFSET) & _MASK32) << 32) | fraction


def unix_from_ntp(ident: int) -> float:
    """Unix time of a 64-bit NTP timestamp (era 0, good until 2036)."""
    return (ident >> 32) - NTP_UNIX_OFFSET + (ident & _MASK32) / (1 << 32)


def high(ident: int) -> int:
    return (ident >> 32) & _MASK32


def low(ident: int) -> int:
    return ident & _MASK32


def join(high32: int, low32: int) -> int:
    return ((high32 & _MASK32) << 32) | (low32 & _MASK32)


def _seconds_apart(a: int, b: int) -> int:
    """Signed difference a - b of two 32-bit NTP second counts, wrap-aware."""
    d = (a - b) & _MASK32
    return d - (1 << 32) if d >= (1 << 31) else d


def timestamp_acceptable(ident: int, last_accepted: int | None, now_unix: float,
                         window: float = DEFAULT_REPLAY_WINDOW) -> bool:
    """True when a timestamp identification is fresh and newer than the last one.

    Fresh: within ``window`` seconds of the home agent's clock.  Newer: strictly
    greater than the last accepted identification, so a captured request
    cannot be replayed even inside the window.
    """
    diff = unix_from_ntp(ident) - now_unix
    # Compare whole seconds wrap-aware first so an identification from another
    # NTP era cannot sneak through via float overflow.
    if abs(_seconds_apart(high(ident), high(ntp_from_unix(now_unix)))) > window + 1:
        return False
    if abs(diff) > window:
        return False
    return last_accepted is None or ident > last_accepted


def mismatch_reply_ident(request_ident: int, now_unix: float) -> int:
    """Identification of a 133 reply in timestamp mode: HA's seconds, request's low bits."""
    return join(high(ntp_from_unix(now_unix)), low(request_ident))


def clock_offset_from_mismatch(reply_ident: int, local_now_unix: float) -> float:
    """After a 133 reply, how far the mobile node's clock is behind the home agent's.

    The mobile node adds this to its clock for later identifications.
    """
    ha_seconds = high(reply_ident)
    return float(_seconds_apart(ha_seconds, high(ntp_from_unix(local_now_unix))))


def nonce_ident(ha_nonce: int, mn_nonce: int) -> int:
    """Identification in nonce mode: the HA's last nonce, then the MN's fresh one."""
    return join(ha_nonce, mn_nonce)
