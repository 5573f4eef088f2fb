"""Hostile bytes: decoders raise DecodeError and nothing else."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.mip.errors import DecodeError
from tests import fuzzing

FUZZ_INPUTS = 100_000


def test_100k_random_and_mutated_inputs():
    ok, bad = fuzzing.run(FUZZ_INPUTS)
    # Both outcomes must be exercised, or the fuzzer is not reaching the decoders.
    assert ok > 1000 and bad > 1000
    assert ok + bad == FUZZ_INPUTS * len(fuzzing.DECODERS)


@settings(max_examples=3000)
@given(st.binary(max_size=300))
def test_hypothesis_bytes(data):
    for decode in fuzzing.DECODERS:
        try:
            decode(data)
        except DecodeError as exc:
            assert exc.offset >= 0 and str(exc).startswith("offset ")
