from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.mip import ident

NOW = 1_800_000_000.25


def test_ntp_round_trip_precision():
    assert abs(ident.unix_from_ntp(ident.ntp_from_unix(NOW)) - NOW) < 1e-6
    assert ident.high(ident.ntp_from_unix(0.0)) == ident.NTP_UNIX_OFFSET


@given(st.floats(min_value=0, max_value=2_000_000_000))
def test_ntp_monotonic_in_time(t):
    assert ident.ntp_from_unix(t + 0.001) > ident.ntp_from_unix(t)


def test_window_and_ordering():
    i = ident.ntp_from_unix(NOW)
    assert ident.timestamp_acceptable(i, None, NOW)
    assert ident.timestamp_acceptable(i, None, NOW + 6.9)
    assert not ident.timestamp_acceptable(i, None, NOW + 7.1)
    assert not ident.timestamp_acceptable(i, None, NOW - 7.1)
    assert ident.timestamp_acceptable(i, None, NOW + 20, window=30)
    assert not ident.timestamp_acceptable(i, i, NOW)  # exact replay
    assert not ident.timestamp_acceptable(i - 1, i, NOW)
    assert ident.timestamp_acceptable(i + 1, i, NOW)


def test_other_ntp_era_is_refused():
    i = ident.ntp_from_unix(NOW) ^ (1 << 63)
    assert not ident.timestamp_acceptable(i, None, NOW)


def test_resync_after_mismatch():
    mn_clock = NOW - 300.0  # mobile node five minutes slow
    request = ident.ntp_from_unix(mn_clock)
    reply = ident.mismatch_reply_ident(request, NOW)
    assert ident.low(reply) == ident.low(request)
    offset = ident.clock_offset_from_mismatch(reply, mn_clock)
    assert abs(offset - 300.0) <= 1.0
    assert ident.timestamp_acceptable(ident.ntp_from_unix(mn_clock + offset), None, NOW)


def test_nonce_layout():
    assert ident.nonce_ident(0xAABBCCDD, 0x11223344) == 0xAABBCCDD11223344
