"""Files a VPN profile names are read as root only if they are what they claim to be
(security review 2026-12-07, finding 6): a FIFO, /dev/zero, /etc/shadow or a
symbolic link is refused at once, naming the profile key; so through charon's
load and the helper's Connect, before its lock."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import FileRefused, read_regular_file
from app.vpn import credentials
from app.vpn.charon import Charon, VpnConfigError
from app.vpn.profile import AuthMethod, VpnConfig
from tests.fake_vici import FakeVici
from tests.requirements import require_root

CERT = b"-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nMC4=\n-----END PRIVATE KEY-----\n"
SHADOW = Path("/etc/shadow")


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO nobody writes to.  At the end a writer opens and closes it once, so a
    reader that did block (today's code) is released and no thread is left hanging."""
    path = tmp_path / "ca.fifo"
    os.mkfifo(path, 0o644)
    yield path
    release(path)


def release(fifo: Path) -> None:
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def returns(fn: Callable[[], Any]) -> Any:
    """``fn()``'s result or exception, from a thread that must end: a read that
    blocks fails the test (after a generous bound, not a speed limit)."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:  # handed back to the test
            out.append(exc)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the read blocked"
    return out[0]


def file(tmp_path: Path, name: str, data: bytes, mode: int) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def bad_paths(tmp_path: Path, fifo: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, what the message says)."""
    real = file(tmp_path, "real.pem", CERT, 0o644)
    (tmp_path / "link.pem").symlink_to(real)
    (tmp_path / "linkdir").symlink_to(tmp_path)
    return {"fifo": (fifo, "is not a regular file"),
            "dev-zero": (Path("/dev/zero"), "is not a regular file"),
            "symlink": (tmp_path / "link.pem", "is a symbolic link"),
            "symlinked-dir": (tmp_path / "linkdir" / "real.pem", "through a symbolic link"),
            "shadow": (SHADOW, "readable by")}


# -- the one reading function -----------------------------------------------------

def test_read_regular_file_refuses_a_fifo_at_once(fifo):
    got = returns(lambda: read_regular_file(fifo, 100))
    assert isinstance(got, FileRefused) and str(got) == f"{fifo} is not a regular file"


def test_read_regular_file_refuses_dev_zero_without_reading_it():
    got = returns(lambda: read_regular_file(Path("/dev/zero"), 100))
    assert isinstance(got, FileRefused) and str(got) == "/dev/zero is not a regular file"


def test_read_regular_file_refuses_a_symlink_anywhere_in_the_path(tmp_path):
    real = file(tmp_path, "real.pem", CERT, 0o644)
    (tmp_path / "link.pem").symlink_to(real)
    (tmp_path / "dir").symlink_to(tmp_path)
    with pytest.raises(FileRefused, match="is a symbolic link"):
        read_regular_file(tmp_path / "link.pem", follow_symlinks=False)
    with pytest.raises(FileRefused, match=r"through a symbolic link \(.*/dir\)"):
        read_regular_file(tmp_path / "dir" / "real.pem", follow_symlinks=False)
    assert read_regular_file(real, follow_symlinks=False) == CERT


def test_read_regular_file_owner_mode_and_size_rules(tmp_path):
    require_root("chown to another user")
    f = file(tmp_path, "f", CERT, 0o644)
    assert read_regular_file(f, root_owned=True) == CERT
    with pytest.raises(FileRefused, match="readable by group or others"):
        read_regular_file(f, private=True)
    f.chmod(0o664)
    with pytest.raises(FileRefused, match=r"writable by group or others \(mode 0664\)"):
        read_regular_file(f, root_owned=True)
    f.chmod(0o644)
    os.chown(f, 65534, 65534)
    with pytest.raises(FileRefused, match="is not owned by root"):
        read_regular_file(f, root_owned=True)
    with pytest.raises(FileRefused, match="is larger than 10 bytes"):
        read_regular_file(f, 10)
    with pytest.raises(FileRefused, match="is a directory"):
        read_regular_file(tmp_path)


def test_etc_shadow_is_refused_as_a_key_and_as_a_certificate():
    require_root("/etc/shadow is root's")
    with pytest.raises(credentials.CredentialError) as exc:
        credentials.read_private_key(SHADOW)
    assert str(exc.value) == ("vpn.key_file: /etc/shadow is readable by group or others "
                              "(mode 0640); chmod 600 it")
    with pytest.raises(credentials.CredentialError) as exc:
        credentials.read_certificate("vpn.ca_file", SHADOW)
    assert str(exc.value).startswith("vpn.ca_file: /etc/shadow is not readable by everyone")


@pytest.mark.parametrize("case", ["fifo", "dev-zero", "symlink", "symlinked-dir", "shadow"])
@pytest.mark.parametrize("key", ["vpn.ca_file", "vpn.cert_file", "vpn.key_file"])
def test_each_profile_file_refuses_what_is_not_a_plain_root_file(tmp_path, fifo, key, case):
    require_root("root reads these files")
    path, words = bad_paths(tmp_path, fifo)[case]

    def read() -> bytes:
        if key == "vpn.key_file":
            return credentials.read_private_key(path)
        return credentials.read_certificate(key, path)
    got = returns(read)
    assert isinstance(got, credentials.CredentialError), got
    assert str(got).startswith(f"{key}: {path} ") and words in str(got), str(got)


def test_plain_root_files_pass_and_content_must_match_the_key(tmp_path):
    require_root("the files are root's")
    cert = file(tmp_path, "c.pem", CERT, 0o644)
    key = file(tmp_path, "k.pem", KEY, 0o600)
    assert credentials.read_certificate("vpn.ca_file", cert) == CERT
    assert credentials.read_private_key(key) == KEY
    with pytest.raises(credentials.CredentialError, match=r"^vpn\.ca_file: .* is not a cert"):
        credentials.read_certificate("vpn.ca_file", file(tmp_path, "t", b"root:x\n", 0o644))
    with pytest.raises(credentials.CredentialError, match=r"^vpn\.key_file: .* not a PEM priv"):
        credentials.read_private_key(file(tmp_path, "k2", CERT, 0o600))
    cert.chmod(0o640)  # not world-readable, and not in /etc/trustroam & co.
    with pytest.raises(credentials.CredentialError, match="or put it in /etc/trustroam"):
        credentials.read_certificate("vpn.ca_file", cert)


# -- through charon's load and the helper's Connect ---------------------------------

@pytest.mark.parametrize("case", ["fifo", "dev-zero", "symlink", "shadow"])
async def test_charon_load_refuses_the_file_naming_the_key_and_sends_nothing(
        tmp_path, fifo, case):
    require_root("root reads these files")
    path, words = bad_paths(tmp_path, fifo)[case]
    cfg = VpnConfig(gateways=("172.16.0.11",), identity="mn@lab",
                    auth=AuthMethod.EAP_MSCHAPV2, ca_file=path)
    fake = FakeVici(tmp_path / "charon.vici")
    a = Charon(str(fake.path), call_timeout=2.0)
    try:
        await a.start()
        with pytest.raises(VpnConfigError) as exc:
            await asyncio.wait_for(a.load(cfg, {"vpn_password": "pw"}), 10)
        assert str(exc.value).startswith(f"vpn.ca_file: {path} ") and words in str(exc.value)
        assert "load-conn" not in fake.names()
    finally:
        release(fifo)  # a reader blocked on it (today's code) ends before the loop does
        await a.close()
        fake.close()


# -- one way to read a root-owned file (code review 2026-12-07, 2.10) ---------------

def test_configuration_profile_and_key_files_are_read_the_same_way(tmp_path, fifo):
    """load_toml (ha.toml, fa.toml, --profile), the helper's load_profile and a
    ``key_file`` of ha.toml refuse a FIFO at once, as the VPN files do."""
    from app.agents import ha_config
    from app.config import ConfigError, load_toml
    from app.service.profiles import load_profile

    for read in (lambda: load_toml(fifo), lambda: load_profile(fifo)):
        got = returns(read)
        assert isinstance(got, ConfigError) and str(got) == f"{fifo}: is not a regular file"
    ha = file(tmp_path, "ha.toml",
              b'[home_agent]\naddress = "10.20.1.1"\nhome_network = "10.20.1.0/24"\n'
              b'[[mobile_nodes]]\nhome_address = "10.20.1.10"\n'
              b'spi = 256\nkey_file = "ca.fifo"\n', 0o644)
    got = returns(lambda: ha_config.load(ha))
    assert isinstance(got, ConfigError), got
    assert str(got).endswith(f"mobile_nodes[0].key_file: cannot read {fifo} is not a "
                             "regular file"), str(got)
