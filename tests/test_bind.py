"""Start-up binding: a node's packet port must be its own, and bind failures name the field."""

from __future__ import annotations

import errno
import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mixnode._worker import _udp_sockets_on_port, bind_sharded
from mixnode.config import ConfigError, bind_error, host_problem


def _close(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()


def test_a_second_node_on_the_same_port_is_refused() -> None:
    first = bind_sharded("127.0.0.1", 0, 2)
    port = first[0].getsockname()[1]
    try:
        with pytest.raises(OSError) as err:
            bind_sharded("127.0.0.1", port, 2)
        assert err.value.errno == errno.EADDRINUSE
        with pytest.raises(OSError):  # the wildcard overlaps every address
            bind_sharded("0.0.0.0", port, 1)
        other = bind_sharded("127.0.0.2", port, 1)  # another address: no overlap
        _close(other)
    finally:
        _close(first)
    _close(bind_sharded("127.0.0.1", port, 2))  # free again once the first node is gone


def test_a_port_held_without_reuse_port_is_refused() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held:
        held.bind(("127.0.0.1", 0))
        with pytest.raises(OSError) as err:
            bind_sharded("127.0.0.1", held.getsockname()[1], 1)
        assert err.value.errno == errno.EADDRINUSE


@pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="Linux only")
def test_the_port_table_lists_every_socket_on_the_port() -> None:
    """The check that closes the window between the probe and the bind sees a joiner."""
    socks = bind_sharded("127.0.0.1", 0, 2)
    port = socks[0].getsockname()[1]
    joiner = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    joiner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        joiner.bind(("127.0.0.1", port))  # what a racing second node would do
        listed = _udp_sockets_on_port(port)
        assert listed is not None
        inodes = {os.fstat(s.fileno()).st_ino for s in [*socks, joiner]}
        assert {inode for _, inode in listed} == inodes
        assert {address for address, _ in listed} == {"127.0.0.1"}
    finally:
        joiner.close()
        _close(socks)


@pytest.mark.parametrize(
    ("exc", "field"),
    [
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "node.listen_host"),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), "node.listen_host"),
        (OSError(errno.EADDRINUSE, "Address already in use"), "node.listen_port"),
        (OSError(errno.EACCES, "Permission denied"), "node.listen_port"),
        (OSError(errno.EINVAL, "Invalid argument"), "node.listen_host"),
    ],
)
def test_bind_errors_name_the_field(exc: OSError, field: str) -> None:
    err = bind_error("node.listen_host", "node.listen_port", "h", 1, exc)
    assert isinstance(err, ConfigError) and str(err).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("127.0.0.1", True),
        ("0.0.0.0", True),
        ("localhost", True),
        ("mix-1.example.net", True),
        ("mix-1.example.net.", True),
        ("999.1.1.1", False),  # from the issue: a dotted quad that is not an address
        ("::1", False),  # IPv6 is not supported
        ("fe80::1%eth0", False),
        ("1.2.3", False),
        ("01.2.3.4", False),
        ("a..b", False),
        ("-x.example", False),
        ("x" * 64 + ".example", False),
        ("two words", False),
        ("http://x", False),
    ],
)
def test_host_syntax(host: str, ok: bool) -> None:
    assert (host_problem(host) is None) is ok


@given(st.ip_addresses())
def test_any_ip_literal_is_accepted_iff_ipv4(address: object) -> None:
    text = str(address)
    assert (host_problem(text) is None) is (":" not in text)
