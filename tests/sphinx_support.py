"""Helpers shared by the Sphinx tests: a seeded rng, a pool of nodes, a path walker."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from overlay import Forward, Geometry, Hop, ProcessResult, process_packet, public_key


class SeededRng:
    """A reproducible ``rng``: keyed BLAKE2b over a counter, read as one stream."""

    def __init__(self, seed: bytes) -> None:
        self._seed = hashlib.blake2b(seed, digest_size=32).digest()
        self._counter = 0
        self._buf = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buf) < n:
            self._buf += hashlib.blake2b(
                self._counter.to_bytes(8, "big"), key=self._seed, person=b"pn-test-rng-v1"
            ).digest()
            self._counter += 1
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


@dataclass(frozen=True, slots=True)
class Node:
    node_id: bytes
    private_key: bytes
    public_key: bytes


def make_nodes(count: int, label: bytes = b"nodes") -> list[Node]:
    """``count`` nodes with distinct ids and fixed keys."""
    rng = SeededRng(label)
    nodes = []
    for _ in range(count):
        sk = rng(32)
        nodes.append(Node(rng(16), sk, public_key(sk)))
    return nodes


NODES = make_nodes(16)
BY_ID = {n.node_id: n for n in NODES}


def make_path(delays: list[int], first: int = 0) -> list[Hop]:
    """A path over distinct nodes of :data:`NODES`, starting at index ``first``."""
    picked = [NODES[(first + i) % len(NODES)] for i in range(len(delays))]
    return [Hop(n.node_id, n.public_key, d) for n, d in zip(picked, delays, strict=True)]


def walk(geometry: Geometry, path: list[Hop], packet: bytes) -> list[ProcessResult]:
    """Process ``packet`` at each hop of ``path``; checks it follows the path exactly."""
    results: list[ProcessResult] = []
    for i, hop in enumerate(path):
        result = process_packet(geometry, BY_ID[hop.node_id].private_key, packet)
        results.append(result)
        assert result.delay_us == hop.delay_us
        if i + 1 < len(path):
            assert isinstance(result, Forward)
            assert result.next_hop == path[i + 1].node_id
            assert len(result.packet) == geometry.packet_len
            packet = result.packet
        else:
            assert not isinstance(result, Forward)
    return results
