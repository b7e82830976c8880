"""The probe's typed errors reach its caller as themselves under strict exception groups.

The probe through a real testnet is tested in tests/test_sim_testnet.py; here the document
is one with an empty mix layer, handed in place of a fetched one.
"""

from __future__ import annotations

import pytest
from directory_support import make_node

from overlay import VOICE, NodeRole, build_document
from testbed import loadgen, probe

EPOCH = 7


async def test_a_document_without_a_route_is_a_probe_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    nodes = [make_node(i, NodeRole.GATEWAY, 0, EPOCH, 600)[0] for i in (0, 1)]
    nodes += [make_node(i, NodeRole.MIX, i - 1, EPOCH, 600)[0] for i in (2, 4)]  # no layer 2
    doc = build_document(EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=nodes)
    monkeypatch.setattr(loadgen, "fetch_topology", lambda state: doc)
    with pytest.raises(probe.ProbeError, match="no route"):
        await probe.probe(None, probe.ProbeSettings(duration_s=1.0))  # type: ignore[arg-type]
