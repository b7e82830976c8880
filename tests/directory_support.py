"""Helpers shared by the directory tests: nodes with real keys, a small network."""

from __future__ import annotations

import os
import socket

from nacl.signing import SigningKey

from overlay import NodeDescriptor, NodeRole, generate_private_key, node_id_for, public_key


def make_node(
    i: int, role: NodeRole, layer: int, epoch: int, epoch_s: int
) -> tuple[NodeDescriptor, bytes]:
    """Node ``i`` on 127.0.0.1 (port 4000 + i) with real X25519 keys for ``epoch`` and the
    next one, published at the start of ``epoch``; and its identity seed."""
    seed = os.urandom(32)
    ik = bytes(SigningKey(seed).verify_key)
    desc = NodeDescriptor(
        node_id=node_id_for(ik),
        name=f"n{i}",
        role=role,
        layer=layer,
        host="127.0.0.1",
        port=4000 + i,
        client_port=6000 + i if role is NodeRole.GATEWAY else None,
        identity_key=ik,
        epoch_keys={e: public_key(generate_private_key()) for e in (epoch, epoch + 1)},
        published_at=epoch * epoch_s,
    )
    return desc, seed


def make_network(epoch: int, epoch_s: int) -> list[tuple[NodeDescriptor, bytes]]:
    """Two gateways and one mix in each of three layers."""
    specs = [(NodeRole.GATEWAY, 0)] * 2 + [(NodeRole.MIX, layer) for layer in (1, 2, 3)]
    return [make_node(i, r, layer, epoch, epoch_s) for i, (r, layer) in enumerate(specs)]


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
