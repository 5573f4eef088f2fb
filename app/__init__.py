"""TrustRoam: Mobile IPv4 inside, IKEv2/MOBIKE VPN outside (RFC 5266)."""

# The one version: the wheel's metadata (pyproject.toml reads it), trustroamctl
# --version, the tray's --version, the helper's D-Bus Version property; the
# Debian packages' (debian/changelog) must equal it (debian/rules checks).
__version__ = "0.1.0"
