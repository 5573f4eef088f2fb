"""The gate's marks agree with what charon is told to put on its packets."""

from __future__ import annotations

import re
from pathlib import Path

from app.lab import charon as lab_charon
from app.net.gate_rules import CHARON_MARK

ROOT = Path(__file__).resolve().parents[2]


def _fwmark(text: str) -> int:
    block = re.search(r"socket-default\s*\{[^}]*fwmark\s*=\s*(0x[0-9a-fA-F]+|\d+)", text)
    assert block is not None, "no socket-default fwmark"
    return int(block.group(1), 0)


def test_the_shipped_strongswan_snippet_marks_charons_ike_as_the_gate_expects():
    snippet = (ROOT / "packaging" / "strongswan" / "trustroam.conf").read_text()
    assert _fwmark(snippet) == CHARON_MARK


def test_the_labs_charon_marks_its_ike_as_the_gate_expects(tmp_path):
    assert _fwmark(lab_charon.strongswan_conf(tmp_path, None, "trmn0")) == CHARON_MARK
