"""The VPN gateways' last addresses (app.service.gateway_cache): a name that does not
resolve at connect (no network yet at boot, a shut gate that lets no DNS out) takes
the addresses it last resolved to; a file that cannot be believed is ignored."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from ipaddress import IPv4Address
from typing import Any

from app.service.gateway_cache import FILE, GatewayCache
from app.service.profiles import resolve_gateways

A = IPv4Address


def resolver(answers: dict[str, list[str]]) -> Any:
    async def getaddrinfo(name: str, *a: Any, **kw: Any) -> list[Any]:
        if name not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (ip, 0)) for ip in answers[name]]
    return getaddrinfo


async def test_a_name_that_does_not_resolve_takes_its_last_addresses(tmp_path, monkeypatch):
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", resolver({"vpn.corp.example": ["192.0.2.7",
                                                                             "192.0.2.8"]}))
    got = await resolve_gateways(["vpn.corp.example"], cache=GatewayCache(tmp_path))
    assert got == (A("192.0.2.7"), A("192.0.2.8"))
    assert (tmp_path / FILE).stat().st_mode & 0o077 == 0  # root's alone

    monkeypatch.setattr(loop, "getaddrinfo", resolver({}))  # the gate lets no DNS out
    seen: list[tuple[str, str]] = []
    got = await resolve_gateways(["vpn.corp.example", "other.example"],
                                 cache=GatewayCache(tmp_path),  # a new helper: from the file
                                 on_unresolved=lambda n, why: seen.append((n, why)))
    assert got == (A("192.0.2.7"), A("192.0.2.8"))
    why = dict(seen)
    assert "last addresses used: 192.0.2.7, 192.0.2.8" in why["vpn.corp.example"]
    assert "last addresses" not in why["other.example"]  # never resolved: left out


async def test_without_a_state_directory_nothing_is_kept(monkeypatch):
    loop = asyncio.get_running_loop()
    cache = GatewayCache(None)
    monkeypatch.setattr(loop, "getaddrinfo", resolver({"gw.example": ["192.0.2.7"]}))
    assert await resolve_gateways(["gw.example"], cache=cache) == (A("192.0.2.7"),)
    monkeypatch.setattr(loop, "getaddrinfo", resolver({}))
    assert await resolve_gateways(["gw.example"], cache=GatewayCache(None)) == ()


def test_a_file_that_cannot_be_believed_is_ignored_naming_it(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    bad = [{"version": 2, "gateways": {}},
           {"version": 1, "gateways": {"gw": ["not an address"]}},
           {"version": 1, "gateways": {"gw": []}},
           {"version": 1, "gateways": ["gw"]}]
    for doc in bad:
        (tmp_path / FILE).write_text(json.dumps(doc))
        (tmp_path / FILE).chmod(0o600)
        assert GatewayCache(tmp_path).get("gw") == ()
    (tmp_path / FILE).write_text("{")
    assert GatewayCache(tmp_path).get("gw") == ()
    assert caplog.text.count(f"{tmp_path / FILE} ignored") == len(bad) + 1
    assert "gateways.gw: not an IPv4 address" in caplog.text


def test_the_file_stays_bounded(tmp_path):
    cache = GatewayCache(tmp_path)
    for i in range(100):
        cache.put(f"gw{i}.example", (A(f"192.0.2.{i + 1}"),))
    kept = GatewayCache(tmp_path)
    assert kept.get("gw0.example") == () and kept.get("gw99.example") == (A("192.0.2.100"),)


async def test_review8_the_cache_keeps_a_bounded_union_newest_first_not_the_last_answer(
        tmp_path, monkeypatch):
    """A split-horizon or hostile resolver's answer does not replace the addresses a
    name had: the cache keeps the union of recent answers, newest first, at most 8."""
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", resolver({"vpn.example": ["203.0.113.7"]}))
    await resolve_gateways(["vpn.example"], cache=GatewayCache(tmp_path))
    monkeypatch.setattr(loop, "getaddrinfo", resolver({"vpn.example": ["10.20.1.7"]}))
    await resolve_gateways(["vpn.example"], cache=GatewayCache(tmp_path))
    assert GatewayCache(tmp_path).get("vpn.example") == (A("10.20.1.7"), A("203.0.113.7"))
    cache = GatewayCache(tmp_path)
    for i in range(20):
        cache.put("vpn.example", (A(f"198.51.100.{i + 1}"),))
    got = GatewayCache(tmp_path).get("vpn.example")
    assert len(got) == 8 and got[0] == A("198.51.100.20")


async def test_review8_non_unicast_answers_are_refused_from_the_resolver_and_the_file(
        tmp_path, monkeypatch, caplog):
    loop = asyncio.get_running_loop()
    bad = ["127.0.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255", "240.0.0.1"]
    monkeypatch.setattr(loop, "getaddrinfo", resolver({"vpn.example": [*bad, "192.0.2.9"]}))
    got = await resolve_gateways(["vpn.example"], cache=GatewayCache(tmp_path))
    assert got == (A("192.0.2.9"),)
    assert GatewayCache(tmp_path).get("vpn.example") == (A("192.0.2.9"),)
    for b in bad:
        (tmp_path / FILE).write_text(json.dumps({"version": 1, "gateways": {"gw": [b]}}))
        (tmp_path / FILE).chmod(0o600)
        assert GatewayCache(tmp_path).get("gw") == ()
    assert "gateways.gw: not a unicast address" in caplog.text
