"""The one base of the errors whose message a person reads (docs/ARCHITECTURE.md section 2).

The bottom layer: every other layer may import it, it imports nothing of ours.
"""

from __future__ import annotations


class UserFacingError(Exception):
    """A failure told to the user (a D-Bus caller, the journal, a terminal) as it is.

    The contract every subclass keeps: ``str(exc)`` is one line that names the file,
    field, key or peer concerned, and never holds a secret (a key, a PSK, a password)
    or a traceback.  ``app.service.dbus_api`` answers a caller with it unchanged; any
    other exception becomes "internal error" there.
    """


def reason(exc: BaseException) -> str:
    """What an OS or library error says, briefly (``strerror`` when it has one)."""
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
