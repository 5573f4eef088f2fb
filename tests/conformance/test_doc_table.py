"""docs/conformance.md lists every conformance test, and only tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

HERE = Path(__file__).parent
DOC = HERE.parent.parent / "docs" / "conformance.md"


def _tests() -> set[str]:
    names = set()
    for f in HERE.glob("test_rfc*.py"):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_rfc"):
                names.add(node.name)
    return names


def test_every_rule_test_is_in_the_table_and_every_entry_exists():
    listed = set(re.findall(r"`(test_rfc\w+)`", DOC.read_text()))
    tests = _tests()
    assert tests - listed == set(), "missing from docs/conformance.md"
    assert listed - tests == set(), "docs/conformance.md names tests that do not exist"
