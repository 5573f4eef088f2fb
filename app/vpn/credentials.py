"""The files a VPN profile names (``ca_file``, ``cert_file``, ``key_file``), read as root.

Each is read the one way the helper reads a root-owned file
(``app.config.read_regular_file``): opened without blocking (a FIFO, a device or
a directory is refused at once, never opened for reading), at most
``MAX_VPN_FILE`` bytes, with no symbolic link anywhere in its path, and only if
root owns it and neither group nor others may write it.  Then:

* ``ca_file``, ``cert_file``: a certificate (PEM or DER), inside one of
  ``VPN_FILE_DIRS`` or else readable by everyone (root then reads nothing a local
  user could not read: ``/etc/shadow`` is refused);
* ``key_file``: a PEM private key that only root may read (``chmod 600``).

Refusals name the profile key (``vpn.ca_file: /dev/zero is not a regular file``),
never a file's content or the passphrase.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from app.config import FileRefused, read_regular_file
from app.errors import UserFacingError
from app.vpn.profile import SECRET_KEY_PASSPHRASE, VpnConfig
from app.vpn.vici_messages import Certificates

VPN_FILE_DIRS = (Path("/etc/trustroam"), Path("/etc/swanctl"), Path("/etc/ipsec.d"))
"""Where certificates that are not world-readable may live (root's own directories)."""
MAX_VPN_FILE = 1 << 20
"""A certificate or key is a few KiB; a CA bundle well under this."""

_PEM_CERT = re.compile(rb"-----BEGIN (X509 |TRUSTED )?CERTIFICATE-----")
_PEM_KEY = re.compile(rb"-----BEGIN (ENCRYPTED |RSA |EC )?PRIVATE KEY-----")


class CredentialError(UserFacingError):
    """A file the profile names cannot be used; ``key`` is the profile key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def read_certificate(key: str, path: Path) -> bytes:
    """``ca_file`` or ``cert_file`` (``key`` names it in errors)."""
    inside = _inside_vpn_dirs(path)
    try:
        data = read_regular_file(path, MAX_VPN_FILE, follow_symlinks=False, root_owned=True,
                                 public=not inside)
    except FileRefused as exc:
        hint = (f" (or put it in {', '.join(map(str, VPN_FILE_DIRS))})"
                if exc.reason.startswith("is not readable by everyone") else "")
        raise CredentialError(key, f"{exc}{hint}") from None
    if not (_PEM_CERT.search(data) or _is_der(data)):
        raise CredentialError(key, f"{path} is not a certificate (PEM or DER)")
    return data


def read_private_key(path: Path, key: str = "vpn.key_file") -> bytes:
    try:
        data = read_regular_file(path, MAX_VPN_FILE, follow_symlinks=False, private=True)
    except FileRefused as exc:
        raise CredentialError(key, str(exc)) from None
    if not _PEM_KEY.search(data):
        raise CredentialError(key, f"{path} is not a PEM private key")
    return data


def check(cfg: VpnConfig) -> bool:
    """Every file the profile names is readable and acceptable (``CredentialError``
    if not); returns whether the private key is encrypted (needs its passphrase)."""
    for key, path in (("vpn.ca_file", cfg.ca_file), ("vpn.cert_file", cfg.cert_file)):
        if path is not None:
            read_certificate(key, path)
    return cfg.key_file is not None and key_is_encrypted(read_private_key(cfg.key_file))


def read(cfg: VpnConfig, passphrase: str | None) -> tuple[Certificates, bytes | None]:
    """The certificates and the (decrypted) private key, for charon."""
    ca = read_certificate("vpn.ca_file", cfg.ca_file) if cfg.ca_file else None
    cert = read_certificate("vpn.cert_file", cfg.cert_file) if cfg.cert_file else None
    key = read_private_key(cfg.key_file) if cfg.key_file else None
    if key is not None and key_is_encrypted(key):
        if not passphrase:
            raise CredentialError(SECRET_KEY_PASSPHRASE, f"missing: {cfg.key_file} is "
                                                         "encrypted")
        key = _decrypt_key(key, passphrase, cfg.key_file)
    return Certificates(ca=ca, cert=cert), key


def key_is_encrypted(pem: bytes) -> bool:
    """Whether a PEM private key needs ``vpn_key_passphrase`` (PKCS#8
    "ENCRYPTED PRIVATE KEY", or a legacy key with "Proc-Type: 4,ENCRYPTED")."""
    return b"ENCRYPTED" in pem


def _inside_vpn_dirs(path: Path) -> bool:
    # Lexical: the reader refuses any symbolic link in the path, and the profile
    # any '..' (app.vpn.profile), so this is where the file really is.
    normal = Path(os.path.normpath(path))
    return any(normal.is_relative_to(d) for d in VPN_FILE_DIRS)


def _is_der(data: bytes) -> bool:
    """A DER SEQUENCE whose length is exactly the file's (an X.509 certificate)."""
    if len(data) < 4 or data[0] != 0x30:
        return False
    n = data[1]
    if n < 0x80:
        return 2 + n == len(data)
    width = n & 0x7F
    if not 1 <= width <= 4 or len(data) < 2 + width:
        return False
    return 2 + width + int.from_bytes(data[2:2 + width], "big") == len(data)


def _decrypt_key(data: bytes, passphrase: str, path: Path | None) -> bytes:
    """Decrypt a PEM key in memory with openssl; the passphrase goes through a pipe,
    never a file or the command line."""
    r, w = os.pipe()
    try:
        os.write(w, passphrase.encode() + b"\n")
        os.close(w)
        w = -1
        # Debian's openssl on PATH, fixed arguments: nothing from input reaches argv.
        out = subprocess.run(["openssl", "pkey", "-passin", f"fd:{r}"],  # noqa: S603, S607
                             input=data, capture_output=True, pass_fds=(r,), timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        raise CredentialError("vpn.key_file", f"cannot decrypt {path}: openssl failed"
                              ) from None
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    if out.returncode != 0 or b"PRIVATE KEY" not in out.stdout:
        raise CredentialError("vpn.key_file", f"cannot decrypt {path} with "
                                              f"{SECRET_KEY_PASSPHRASE} (wrong passphrase?)")
    return out.stdout
