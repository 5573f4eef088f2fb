"""The one error type the Mobile IP codec raises."""

from __future__ import annotations


class DecodeError(ValueError):
    """Bytes that are not a valid Mobile IPv4 message.

    Every decoder in :mod:`app.mip` raises this and nothing else on hostile
    input.  ``offset`` is where in the buffer the problem was found, so a log
    line can say "offset 28: extension 32 runs past the end of the message".
    """

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"offset {offset}: {message}")
        self.reason = message
        self.offset = offset


class UnknownExtensionError(DecodeError):
    """A non-skippable extension (type < 128) this codec does not know.

    RFC 5944 section 1.9: the whole message must then be discarded, unlike
    an unknown skippable extension, which is skipped.
    """

    def __init__(self, ext_type: int, offset: int) -> None:
        super().__init__(f"unknown non-skippable extension type {ext_type}", offset)
        self.ext_type = ext_type
