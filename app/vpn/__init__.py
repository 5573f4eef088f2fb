"""The untrusted side's VPN: strongSwan's charon over VICI (RFC 5266 3.3, 3.4, 4).

``profile`` (pure): the profile's ``[vpn]`` table, parsed, checked and written;
``vici_messages`` (pure): the VICI messages that load it into charon and drive it;
``credentials``: the certificate and key files it names, read as root;
``events`` (pure): typed events and the translation of charon's events;
``charon``: the adapter (``Charon``) the helper's driver awaits.
"""
