"""The untrusted side's VPN: strongSwan's charon over VICI (RFC 5266 3.3, 3.4, 4).

``config`` (pure): the profile's ``[vpn]`` table and the VICI messages;
``events`` (pure): typed events and the translation of charon's events;
``charon``: the adapter (``Charon``) the helper's driver awaits.
"""
