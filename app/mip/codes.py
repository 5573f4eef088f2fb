"""Registration Reply codes (RFC 5944 section 3.4, RFC 3024, RFC 3519, RFC 2794)."""

from __future__ import annotations

from enum import IntEnum


class ReplyCode(IntEnum):
    ACCEPTED = 0
    ACCEPTED_NO_SIMULTANEOUS = 1
    # Denied by the foreign agent.
    FA_UNSPECIFIED = 64
    FA_PROHIBITED = 65
    FA_INSUFFICIENT_RESOURCES = 66
    FA_MN_AUTH_FAILED = 67
    FA_HA_AUTH_FAILED = 68
    FA_LIFETIME_TOO_LONG = 69
    FA_POORLY_FORMED_REQUEST = 70
    FA_POORLY_FORMED_REPLY = 71
    FA_ENCAPSULATION_UNAVAILABLE = 72
    FA_VJ_UNAVAILABLE = 73
    FA_REVERSE_TUNNEL_UNAVAILABLE = 74
    FA_REVERSE_TUNNEL_MANDATORY = 75
    FA_MN_TOO_DISTANT = 76
    FA_INVALID_COA = 77
    FA_REGISTRATION_TIMEOUT = 78
    FA_DELIVERY_STYLE_UNSUPPORTED = 79
    FA_HOME_NETWORK_UNREACHABLE = 80
    FA_HA_HOST_UNREACHABLE = 81
    FA_HA_PORT_UNREACHABLE = 82
    FA_HA_UNREACHABLE = 88
    FA_MISSING_NAI = 97
    FA_MISSING_HOME_AGENT = 98
    FA_MISSING_HOME_ADDRESS = 99
    # Denied by the home agent.
    HA_UNSPECIFIED = 128
    HA_PROHIBITED = 129
    HA_INSUFFICIENT_RESOURCES = 130
    HA_MN_AUTH_FAILED = 131
    HA_FA_AUTH_FAILED = 132
    HA_IDENTIFICATION_MISMATCH = 133
    HA_POORLY_FORMED_REQUEST = 134
    HA_TOO_MANY_BINDINGS = 135
    HA_UNKNOWN_HA_ADDRESS = 136
    HA_REVERSE_TUNNEL_UNAVAILABLE = 137
    HA_REVERSE_TUNNEL_MANDATORY = 138
    HA_ENCAPSULATION_UNAVAILABLE = 139
    HA_UDP_ENCAPSULATION_UNAVAILABLE = 142


_MEANINGS: dict[int, str] = {
    0: "registration accepted",
    1: "registration accepted, but simultaneous mobility bindings unsupported",
    64: "reason unspecified",
    65: "administratively prohibited",
    66: "insufficient resources",
    67: "mobile node failed authentication",
    68: "home agent failed authentication",
    69: "requested lifetime too long",
    70: "poorly formed request",
    71: "poorly formed reply",
    72: "requested encapsulation unavailable",
    73: "requested Van Jacobson compression unavailable",
    74: "requested reverse tunnel unavailable",
    75: "reverse tunnel is mandatory and 'T' bit not set",
    76: "mobile node too distant",
    77: "invalid care-of address",
    78: "registration timeout",
    79: "delivery style not supported",
    80: "home network unreachable",
    81: "home agent host unreachable",
    82: "home agent port unreachable",
    88: "home agent unreachable",
    97: "missing NAI",
    98: "missing home agent",
    99: "missing home address",
    128: "reason unspecified",
    129: "administratively prohibited",
    130: "insufficient resources",
    131: "mobile node failed authentication",
    132: "foreign agent failed authentication",
    133: "identification mismatch",
    134: "poorly formed request",
    135: "too many simultaneous mobility bindings",
    136: "unknown home agent address",
    137: "requested reverse tunnel unavailable",
    138: "reverse tunnel is mandatory and 'T' bit not set",
    139: "requested encapsulation unavailable",
    142: "UDP encapsulation unavailable",
}


def meaning(code: int) -> str:
    """The RFC's words for a reply code, or "unknown code" for unassigned ones."""
    return _MEANINGS.get(code, "unknown code")


def is_accepted(code: int) -> bool:
    return code in (0, 1)


def describe(code: int) -> str:
    """One line for logs and the UI, e.g. "denied by home agent: identification mismatch (133)"."""
    if is_accepted(code):
        return f"{meaning(code)} ({code})"
    if 64 <= code <= 127:
        who = "foreign agent"
    elif 128 <= code <= 255:
        who = "home agent"
    else:
        who = "unknown agent"
    return f"denied by {who}: {meaning(code)} ({code})"
