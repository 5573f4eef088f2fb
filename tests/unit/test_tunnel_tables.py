"""The tunnel engines' tables (which outer address an inner address maps to):
the compiled engine's hash table and the Python engine's dicts, against a model."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.net import ipip
from app.net.ipip import PythonEngine
from tests.requirements import require

if TYPE_CHECKING:
    from app.net.ipip import Engine


def _engines() -> Iterator[tuple[str, Engine]]:
    # Tables do not touch the descriptors; a UDP socket stands in for the raw one.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield "python", PythonEngine(-1, sock.fileno(), -1, 16, 12)
    if ipip._fastpath is not None:
        yield "compiled", ipip._fastpath.Engine(-1, -1, -1, 16, 12)
    sock.close()


def test_compiled_engine_is_built() -> None:
    require(ipip.compiled_engine_available(),
            "app.net._fastpath is not built (pip install -e . with a C compiler builds it)")


addresses = st.binary(min_size=4, max_size=4)
keys = st.one_of(st.none(), st.sampled_from([bytes([10, 20, 1, i]) for i in range(40)]))
ops = st.lists(st.tuples(st.sampled_from(["set", "del"]), keys, addresses,
                         st.integers(0, 65535), st.booleans()), max_size=300)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_tables_agree_with_a_model(
        operations: list[tuple[str, bytes | None, bytes, int, bool]]) -> None:
    for name, eng in _engines():
        routes: dict[bytes | None, tuple[bytes, int, bool]] = {}
        accepts: dict[bytes | None, tuple[bytes, bool]] = {}
        for op, key, addr, any_port, gre in operations:
            if op == "set":
                port = 0 if gre else any_port  # GRE entries have no UDP port
                eng.set_route(key, addr, port, gre)
                eng.set_accept(key, addr, gre)
                routes[key] = (addr, port, gre)
                accepts[key] = (addr, gre)
            else:
                eng.del_route(key)
                eng.del_accept(key)
                routes.pop(key, None)
                accepts.pop(key, None)
        for i in range(41):
            key = bytes([10, 20, 1, i])
            want = routes.get(key, routes.get(None))
            assert eng.route_of(key) == want, (name, key)
            assert eng.accept_of(key) == accepts.get(key, accepts.get(None)), (name, key)
        assert eng.route_of(None) == routes.get(None), name


def test_many_bindings_grow_and_shrink() -> None:
    """100 000 entries (the home agent's target), half removed, then re-added."""
    for name, eng in _engines():
        keys = [i.to_bytes(4, "big") for i in range(0x0A000000, 0x0A000000 + 100_000)]
        for k in keys:
            eng.set_route(k, k[::-1], 434)
        for k in keys[::2]:
            eng.del_route(k)
        for k in keys[::4]:
            eng.set_route(k, b"\x01\x02\x03\x04")
        assert eng.route_of(keys[1]) == (keys[1][::-1], 434, False), name
        assert eng.route_of(keys[2]) is None, name
        assert eng.route_of(keys[4]) == (b"\x01\x02\x03\x04", 0, False), name


@pytest.mark.parametrize("bad", [b"", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05", "10.0.0.1"])
def test_keys_and_addresses_are_four_bytes(bad: object) -> None:
    for _name, eng in _engines():
        if isinstance(eng, PythonEngine):
            continue  # its callers (UserspaceTunnel) pack addresses themselves
        with pytest.raises((ValueError, TypeError)):
            eng.set_route(bad, b"\x01\x02\x03\x04")  # type: ignore[arg-type]
        with pytest.raises((ValueError, TypeError)):
            eng.set_accept(b"\x01\x02\x03\x04", bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="port"):
            eng.set_route(b"\x01\x02\x03\x04", b"\x01\x02\x03\x04", 70000)


def test_gre_over_udp_is_refused() -> None:
    """GRE bindings are raw IP protocol 47; RFC 3519 UDP bindings carry IP-in-IP only."""
    for _name, eng in _engines():
        with pytest.raises(ValueError, match="GRE"):
            eng.set_route(b"\x01\x02\x03\x04", b"\x01\x02\x03\x04", 434, True)


def _open_socket_inodes() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:"):
                out.add(target)
    return out


@pytest.mark.parametrize("name", ["python", "compiled"])
def test_rfc3519_the_engine_keeps_its_own_udp_socket_not_the_descriptor_number(name: str
                                                                               ) -> None:
    """The registration socket that carries RFC 3519 tunnel data closes on a move and
    the next one gets the same descriptor number, bound to the new (unproven) address:
    the engine must hold its own reference to the socket it was given (a dup), never
    send from whatever the number names now; set_udp_fd(-1) lets it go."""
    engine = dict(_engines()).get(name)
    require(engine is not None,
            "app.net._fastpath is not built (pip install -e . with a C compiler builds it)")
    assert engine is not None
    old = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    old_inode = os.readlink(f"/proc/self/fd/{old.fileno()}")
    engine.set_udp_fd(old.fileno())
    old.close()
    assert old_inode in _open_socket_inodes(), "the engine let its socket go with the number"
    engine.set_udp_fd(-1)
    assert old_inode not in _open_socket_inodes()
