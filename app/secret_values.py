"""What a secret's value must be, checked before it is sent: one check for the tray's
dialogs (``ui.secrets``) and ``trustroamctl connect --ask`` (``app.ctl_ask``).

Messages name the field by its label and never quote the value."""

from __future__ import annotations

from app.api import SECRET_MN_HA_KEY


def secret_problem(key: str, value: str, label: str, *, optional: bool = False) -> str | None:
    """Why ``value`` cannot be the secret ``key`` (shown as ``label``), or None."""
    if not value:
        return None if optional else f"{label}: is empty"
    if key == SECRET_MN_HA_KEY:  # RFC 5944 3.5.1: the MN-HA key, given as hex
        if not value.startswith("hex:"):
            return f"{label}: must start with 'hex:' followed by hex digits"
        try:
            raw = bytes.fromhex(value[4:])
        except ValueError:
            return f"{label}: has characters that are not hex digits"
        if not 16 <= len(raw) <= 64:
            return f"{label}: is {len(raw)} bytes; it must be 16 to 64"
    return None
