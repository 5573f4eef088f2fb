"""Editing a profile's TOML key by key (``trustroamctl profile set NAME key=value``).

Pure: text in, text out.  The profile parser (``app.mn.profile``) stays the
judge of what the result means; this module only places values.  A value takes
the type of the value it replaces (``lifetime=900`` stays an integer,
``vpn.gateways=a,b`` stays a list); for a key the profile does not have yet, a
TOML literal (``true``, ``30``, ``["a", "b"]``) is taken as such, a comma makes
a list of strings, anything else is a string.  An empty value removes the key.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

from app.config import toml_string

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


class EditError(ValueError):
    """An assignment that cannot be applied; the message names the key."""


def apply(text: str, assignments: list[str]) -> str:
    """``text`` with every ``key=value`` applied, as TOML."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EditError(f"the stored profile is not valid TOML: {exc}") from None
    for a in assignments:
        key, sep, value = a.partition("=")
        key = key.strip()
        if not sep or not key:
            raise EditError(f"{a!r}: write key=value (an empty value removes the key)")
        assign(doc, key, value)
    return dumps(doc)


def assign(doc: dict[str, Any], key: str, value: str) -> None:
    parts = key.split(".")
    if not all(_BARE.match(p) for p in parts):
        raise EditError(f"{key}: not a key (letters, digits, '_' and '-', tables joined "
                        "by '.')")
    table = doc
    for i, p in enumerate(parts[:-1]):
        sub = table.get(p)
        if sub is None:
            if not value:
                return  # removing from a table that is not there: nothing to do
            sub = table[p] = {}
        if not isinstance(sub, dict):
            raise EditError(f"{'.'.join(parts[:i + 1])}: is a value, not a table")
        table = sub
    last = parts[-1]
    if not value:
        table.pop(last, None)
        return
    if isinstance(table.get(last), dict):
        raise EditError(f"{key}: is a table; set its keys ({key}.<key>=value)")
    table[last] = _typed(key, value, table.get(last))


def _typed(key: str, value: str, old: object) -> object:
    if isinstance(old, bool):
        low = value.strip().lower()
        if low not in ("true", "false", "yes", "no", "on", "off"):
            raise EditError(f"{key}: must be true or false, got {value!r}")
        return low in ("true", "yes", "on")
    if isinstance(old, int):
        try:
            return int(value.strip())
        except ValueError:
            raise EditError(f"{key}: must be a whole number, got {value!r}") from None
    if isinstance(old, float):
        try:
            return float(value.strip())
        except ValueError:
            raise EditError(f"{key}: must be a number, got {value!r}") from None
    if isinstance(old, list):
        literal = _literal(value)
        if isinstance(literal, list):
            return literal
        return [x.strip() for x in value.split(",") if x.strip()]
    if isinstance(old, str):
        return value
    literal = _literal(value)
    if literal is not None and not isinstance(literal, dict):
        return literal
    if "," in value:
        return [x.strip() for x in value.split(",") if x.strip()]
    return value


def _literal(value: str) -> object:
    try:
        return tomllib.loads(f"v = {value}").get("v")
    except tomllib.TOMLDecodeError:
        return None


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise EditError(f"cannot write a {type(v).__name__} value")  # tomllib's dates


def _key(k: str) -> str:
    return k if _BARE.match(k) else toml_string(k)


def dumps(doc: dict[str, Any], prefix: str = "") -> str:
    """``doc`` as TOML: plain values first, then each table under its header."""
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for k, v in doc.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            lines.append(f"{_key(k)} = {_value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, t in tables:
        name = f"{prefix}{_key(k)}"
        out += f"\n[{name}]\n" + dumps(t, name + ".")
    for k, items in arrays:
        name = f"{prefix}{_key(k)}"
        for item in items:
            out += f"\n[[{name}]]\n" + dumps(item, name + ".")
    return out
