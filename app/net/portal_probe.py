"""Is there a captive portal on this link?  One HTTP request tells (issue 19).

As NetworkManager's connectivity check: a GET of a known URL whose answer is a
known text.  That text means the network lets us out (a portal is not the
reason the VPN failed); a redirect, or any other page, means something on the
link answers in the server's place: a portal, whose address is the redirect's
target (or the probe URL, for a portal that serves its page in place).

The request leaves from the helper's own socket, marked :data:`PORTAL_MARK`
(the gate's ``portal`` chain lets that mark out only while a probe runs) and
bound to the physical link (SO_BINDTODEVICE), never through a tunnel.  A probe
URL given by name is resolved by a single DNS query to the link's resolver, from
a socket marked and bound the same way.

Pure parts (:func:`validate_probe_url`, :func:`parse_response`,
:func:`classify`, the DNS codec) are tested without a network.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from app.config import ConfigError

DEFAULT_PROBE_URL = "http://nmcheck.gnome.org/check_network_status.txt"
"""NetworkManager's connectivity URI on Debian/GNOME."""
DEFAULT_EXPECTED = "NetworkManager is online"
log = logging.getLogger("trustroam.portal")
PORTAL_MARK = 0x5454
"""SO_MARK of the probe's sockets: what the gate's ``portal`` chain lets out."""
PROBE_TIMEOUT = 3.0
"""Seconds for the whole probe (name, connect, answer)."""
MAX_ANSWER = 16 * 1024
MAX_URL = 2048
RESOLV_FILES = (Path("/run/systemd/resolve/resolv.conf"), Path("/run/NetworkManager/"
                "no-stub-resolv.conf"), Path("/etc/resolv.conf"))
"""Where the link's resolvers are listed (systemd-resolved's upstream list first: its
stub at 127.0.0.53 would send the query from a process the gate does not pass)."""


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """A validated probe URL: ``http://host[:port]/path``."""

    url: str
    host: str
    port: int
    path: str
    expected: str = DEFAULT_EXPECTED

    @property
    def address(self) -> ipaddress.IPv4Address | None:
        """The host as an IPv4 literal (no DNS needed), else None."""
        try:
            return ipaddress.IPv4Address(self.host)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the probe found: ``online``, ``portal`` (with its address) or ``unknown``."""

    kind: str
    portal_url: str = ""
    detail: str = ""


ONLINE = "online"
PORTAL = "portal"
UNKNOWN = "unknown"


def validate_probe_url(text: str, key: str = "portal_probe_url",
                       source: str = "trustroamd") -> ProbeTarget:
    """A probe URL or a ConfigError naming ``key``: plain HTTP (a portal cannot
    answer for an HTTPS server without a certificate error, which would hide it),
    a host, no user or password, printable, at most MAX_URL characters."""
    def bad(why: str) -> ConfigError:
        return ConfigError(source, key, why)

    if len(text) > MAX_URL:
        raise bad(f"longer than {MAX_URL} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in text):
        raise bad("contains spaces or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port or 80
    except ValueError as exc:
        raise bad(f"not a URL ({exc})") from None
    if parts.scheme != "http":
        raise bad(f"must be an http:// URL (a portal answers plain HTTP), got "
                  f"{parts.scheme or 'no'} scheme")
    if not parts.hostname:
        raise bad("has no host")
    if parts.username is not None or parts.password is not None:
        raise bad("must not hold a user name or password")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return ProbeTarget(text, parts.hostname, port, path)


def request_bytes(target: ProbeTarget) -> bytes:
    host = target.host if target.port == 80 else f"{target.host}:{target.port}"
    return (f"GET {target.path} HTTP/1.1\r\nHost: {host}\r\n"
            "User-Agent: TrustRoam-portal-probe/1\r\nAccept: */*\r\n"
            "Cache-Control: no-cache\r\nConnection: close\r\n\r\n").encode("ascii")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    location: str
    body: bytes


def parse_response(data: bytes) -> Answer:
    """Status, Location and body of an HTTP/1.x answer; ValueError if it is none."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = data.partition(b"\n\n")
    lines = head.decode("iso-8859-1").splitlines()
    if not lines:
        raise ValueError("empty answer")
    status_line = lines[0].split(None, 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/") \
            or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP answer: {lines[0][:60]!r}")
    location = ""
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "location":
            location = value.strip()
        elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        body = _dechunk(body)
    return Answer(int(status_line[1]), location, body)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


def portal_address(base: str, location: str) -> str | None:
    """A redirect's target as an absolute http(s) URL fit to show and open, or None
    (a hostile network chooses it: no other scheme, printable ASCII only -- no
    controls, no C1 or NBSP from the header's Latin-1 -- and no user part, which
    would show ``https://accounts.google.com@evil.example/`` as another site)."""
    if not location or len(location) > MAX_URL:
        return None
    url = urljoin(base, location)
    if any(not 0x21 <= ord(c) <= 0x7E for c in url):
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- a bad port raises here, not in the window
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname \
            or "@" in parts.netloc:
        return None
    return url


def classify(target: ProbeTarget, answer: Answer) -> Verdict:
    """The expected text: online.  A redirect: a portal at its target.  Another page
    (or 511, RFC 6585): a portal serving its page in place of the probe URL's."""
    if answer.status == 200 and answer.body.strip().startswith(target.expected.encode()):
        return Verdict(ONLINE)
    if 300 <= answer.status < 400:
        where = portal_address(target.url, answer.location)
        if where is None:
            return Verdict(PORTAL, target.url, f"redirect {answer.status} to an unusable "
                           "address")
        return Verdict(PORTAL, where, f"redirect {answer.status}")
    if answer.status in (200, 511):
        return Verdict(PORTAL, target.url, f"status {answer.status} with another page")
    return Verdict(UNKNOWN, "", f"status {answer.status}")


# -- DNS (one A query, RFC 1035) ------------------------------------------------------


def dns_query(name: str, ident: int) -> bytes:
    labels = name.rstrip(".").split(".")
    if any(not label or len(label) > 63 for label in labels):
        raise ValueError(f"not a host name: {name!r}")
    qname = b"".join(bytes([len(lb)]) + lb.encode("idna") for lb in labels) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)


def dns_addresses(data: bytes, ident: int) -> list[ipaddress.IPv4Address]:
    """The A records of an answer to query ``ident`` (CNAMEs followed by the server);
    ValueError for anything malformed (a truncated record included)."""
    try:
        return _dns_addresses(data, ident)
    except struct.error as exc:
        raise ValueError(f"malformed DNS answer: {exc}") from None


def _dns_addresses(data: bytes, ident: int) -> list[ipaddress.IPv4Address]:
    if len(data) < 12:
        raise ValueError("short DNS answer")
    got_id, flags, qd, an, _, _ = struct.unpack("!HHHHHH", data[:12])
    if got_id != ident or not flags & 0x8000:
        raise ValueError("not the answer to our query")
    if flags & 0xF:
        raise ValueError(f"DNS error code {flags & 0xF}")
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    found = []
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, _, _, rdlen = struct.unpack("!HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            if pos + 4 > len(data):
                raise ValueError("truncated DNS record")
            found.append(ipaddress.IPv4Address(data[pos:pos + 4]))
        pos += rdlen
    return found


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        if pos >= len(data):
            raise ValueError("truncated DNS name")
        n = data[pos]
        if n & 0xC0 == 0xC0:
            return pos + 2
        if n == 0:
            return pos + 1
        pos += n + 1


def link_resolvers(files: tuple[Path, ...] = RESOLV_FILES) -> list[ipaddress.IPv4Address]:
    """The link's IPv4 resolvers from the first resolv.conf that lists one not on
    loopback (a local stub forwards from its own, unmarked, socket)."""
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        found = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    a = ipaddress.IPv4Address(parts[1])
                    if not a.is_loopback:
                        found.append(a)
        if found:
            return found
    return []


# -- I/O ----------------------------------------------------------------------------


def _socket(kind: int, iface: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, PORTAL_MARK)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
        s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


async def resolve(host: str, iface: str, resolvers: list[ipaddress.IPv4Address]
                  ) -> ipaddress.IPv4Address:
    """``host``'s first IPv4 address, asked of the link's resolvers in turn."""
    loop = asyncio.get_running_loop()
    errors = []
    for server in resolvers:
        ident = secrets.randbelow(0x10000)
        with _socket(socket.SOCK_DGRAM, iface) as s:
            try:
                await loop.sock_connect(s, (str(server), 53))
                await loop.sock_sendall(s, dns_query(host, ident))
                found = dns_addresses(await loop.sock_recv(s, 1500), ident)
            except (OSError, ValueError) as exc:
                errors.append(f"{server}: {exc}")
                continue
            if found:
                return found[0]
            errors.append(f"{server}: no address")
    raise OSError(f"cannot resolve {host}: " + ("; ".join(errors) or "no resolver on the link"))


async def fetch(target: ProbeTarget, iface: str, address: ipaddress.IPv4Address) -> bytes:
    loop = asyncio.get_running_loop()
    with _socket(socket.SOCK_STREAM, iface) as s:
        await loop.sock_connect(s, (str(address), target.port))
        await loop.sock_sendall(s, request_bytes(target))
        data = b""
        while len(data) < MAX_ANSWER:
            chunk = await loop.sock_recv(s, MAX_ANSWER - len(data))
            if not chunk:
                break
            data += chunk
        return data


async def probe(target: ProbeTarget, iface: str, *, timeout: float = PROBE_TIMEOUT,
                resolvers: list[ipaddress.IPv4Address] | None = None) -> Verdict:
    """One probe on ``iface``; never raises for what the network does (UNKNOWN)."""
    try:
        async with asyncio.timeout(timeout):
            address = target.address
            if address is None:
                address = await resolve(target.host, iface,
                                        link_resolvers() if resolvers is None else resolvers)
            data = await fetch(target, iface, address)
    except TimeoutError:
        return Verdict(UNKNOWN, "", f"no answer within {timeout:g} s")
    except OSError as exc:
        return Verdict(UNKNOWN, "", exc.strerror or str(exc))
    except Exception as exc:  # a hostile network's answer must not end the watch's task
        log.warning("captive portal probe on %s failed: %s", iface, exc)
        return Verdict(UNKNOWN, "", f"probe failed: {exc}")
    try:
        return classify(target, parse_response(data))
    except Exception as exc:
        return Verdict(UNKNOWN, "", str(exc))


DEFAULT_TARGET = validate_probe_url(DEFAULT_PROBE_URL)
