"""The probe's typed errors reach its caller as themselves under strict exception groups.

The probe through a real testnet is tested in tests/test_sim_testnet.py; here the document
is one with an empty mix layer, handed in place of a fetched one.
"""

from __future__ import annotations

import os

import pytest
from nacl.signing import SigningKey

from mixnode import loadgen, probe
from overlay import VOICE, NodeDescriptor, NodeRole, build_document, node_id_for, public_key

EPOCH = 7


def _node(role: NodeRole, layer: int, port: int) -> NodeDescriptor:
    ik = bytes(SigningKey(os.urandom(32)).verify_key)
    return NodeDescriptor(
        node_id=node_id_for(ik),
        name=f"n{port}",
        role=role,
        layer=layer,
        host="127.0.0.1",
        port=port,
        client_port=port + 100 if role is NodeRole.GATEWAY else None,
        identity_key=ik,
        epoch_keys={EPOCH: public_key(os.urandom(32)), EPOCH + 1: public_key(os.urandom(32))},
    )


async def test_a_document_without_a_route_is_a_probe_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = [_node(NodeRole.GATEWAY, 0, 4000), _node(NodeRole.GATEWAY, 0, 4001)]
    nodes += [_node(NodeRole.MIX, layer, 5000 + layer) for layer in (1, 3)]  # layer 2 empty
    doc = build_document(EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=nodes)
    monkeypatch.setattr(loadgen, "fetch_topology", lambda state: doc)
    with pytest.raises(probe.ProbeError, match="no route"):
        await probe.probe(None, probe.ProbeSettings(duration_s=1.0))  # type: ignore[arg-type]
