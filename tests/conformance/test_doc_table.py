"""docs/conformance.md lists every rule-named test (``test_rfc...`` anywhere under
tests/), and only tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

HERE = Path(__file__).parent
DOC = HERE.parent.parent / "docs" / "conformance.md"


def _tests() -> set[str]:
    names = set()
    for f in HERE.parent.rglob("test_*.py"):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
                    node.name.startswith("test_rfc")):
                names.add(node.name)
            elif isinstance(node, ast.Assign):  # e.g. a rule-based state machine's TestCase
                names.update(t.id for t in node.targets
                             if isinstance(t, ast.Name) and t.id.startswith("test_rfc"))
    return names


def test_every_rule_test_is_in_the_table_and_every_entry_exists():
    listed = set(re.findall(r"`(?:[\w/.]+::)?(test_rfc\w+)`", DOC.read_text()))
    tests = _tests()
    assert tests - listed == set(), "missing from docs/conformance.md"
    assert listed - tests == set(), "docs/conformance.md names tests that do not exist"
