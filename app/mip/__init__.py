"""Mobile IPv4 wire format and crypto: pure functions on bytes, no I/O."""

from app.mip.auth import Algorithm, append_authenticator, compute, verify
from app.mip.codes import ReplyCode, describe, is_accepted, meaning
from app.mip.errors import DecodeError, UnknownExtensionError
from app.mip.extensions import (
    AuthExtension,
    Extension,
    ExtType,
    NaiExtension,
    SkippedExtension,
    UdpTunnelReply,
    UdpTunnelRequest,
)
from app.mip.icmp import AgentAdvertisement, AgentFlags, AgentSolicitation
from app.mip.messages import (
    MIP_PORT,
    RegFlags,
    RegistrationReply,
    RegistrationRequest,
    TunnelData,
    decode_message,
)

__all__ = [
    "MIP_PORT", "AgentAdvertisement", "AgentFlags", "AgentSolicitation", "Algorithm",
    "AuthExtension", "DecodeError", "ExtType", "Extension", "NaiExtension", "RegFlags",
    "RegistrationReply", "RegistrationRequest", "ReplyCode", "SkippedExtension", "TunnelData",
    "UdpTunnelReply", "UdpTunnelRequest", "UnknownExtensionError", "append_authenticator",
    "compute", "decode_message", "describe", "is_accepted", "meaning", "verify",
]
