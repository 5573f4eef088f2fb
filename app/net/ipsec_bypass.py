"""A per-socket IPsec bypass: what a socket sends and takes never goes through a VPN.

RFC 5266 3.4's direct registration request goes "without any VPN encapsulation",
and only a reply that came back the same way proves a trusted network.  With
kernel ESP, charon's XFRM policies decide by addresses alone which packets they
encrypt; a socket policy (``IP_XFRM_POLICY``) is looked up before them, as
strongSwan and NetworkManager do for their IKE sockets:

- out: ``XFRM_POLICY_ALLOW`` with no template, so nothing is applied, whatever
  charon's policies match;
- in: the same, and that is what the kernel can prove about a reply: in
  ``__xfrm_policy_check`` a socket policy without templates rejects any packet
  whose secpath holds a tunnel-mode SA (``secpath_has_nontransport``), i.e.
  anything that was decapsulated from ESP on its way in.  The arriving
  interface cannot tell it (kernel ESP re-injects the inner packet on the
  physical interface), nor can its addresses alone.

Needs CAP_NET_ADMIN.  A kernel without XFRM refuses the option; it has no IPsec
policy that could take the socket either (kernel-libipsec's ESP is a TUN device
the socket is not bound to).
"""

from __future__ import annotations

import errno
import socket
import struct

IP_XFRM_POLICY = 17
XFRM_POLICY_IN = 0
XFRM_POLICY_OUT = 1
XFRM_POLICY_ALLOW = 0
_USERPOLICY_INFO = struct.Struct("=16s16sHHHHHBBB3xiI8Q4QIIBBBB4x")
"""struct xfrm_userpolicy_info (linux/xfrm.h): selector, lifetime cfg and cur,
priority, index, dir, action, flags, share; 168 bytes on 64-bit kernels."""
NO_XFRM = (errno.ENOPROTOOPT, errno.EOPNOTSUPP)


def _policy(direction: int) -> bytes:
    # An IPv4 selector that matches everything; no templates: nothing applied.
    return _USERPOLICY_INFO.pack(b"", b"", 0, 0, 0, 0, socket.AF_INET, 0, 0, 0, 0, 0,
                                 *([0] * 8), *([0] * 4), 0, 0, direction,
                                 XFRM_POLICY_ALLOW, 0, 0)


def bypass_ipsec(sock: socket.socket) -> bool:
    """Both directions of ``sock`` bypass every IPsec policy; False where the kernel
    has no XFRM at all.  Any other failure is raised: a direct socket that charon's
    policies could take must not be used."""
    try:
        for direction in (XFRM_POLICY_OUT, XFRM_POLICY_IN):
            sock.setsockopt(socket.IPPROTO_IP, IP_XFRM_POLICY, _policy(direction))
    except OSError as exc:
        if exc.errno in NO_XFRM:
            return False
        raise
    return True
