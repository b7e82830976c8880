"""Topology documents: canonical bytes, threshold signatures, epochs, path selection."""

from __future__ import annotations

import json
import math
import os
import pickle
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nacl.signing import SigningKey

from overlay import (
    BULK,
    DEFAULT_MAX_DELAY_US,
    VOICE,
    DirectoryError,
    DocumentSignature,
    NodeDescriptor,
    NodeRole,
    NoRouteError,
    SignedDocument,
    TopologyDocument,
    UsageError,
    build_document,
    epoch_at,
    epoch_start,
    exp_delay_us,
    exponential,
    generate_private_key,
    loop_route,
    node_id_for,
    parse_epoch,
    public_key,
    sample_path,
    select_path,
    sign_descriptor,
    sign_document,
    uniform01,
    uniform_index,
    verify_descriptor,
    verify_document,
)

EPOCH = 40


def _node(name: str, role: NodeRole, layer: int, port: int) -> tuple[NodeDescriptor, bytes]:
    seed = os.urandom(32)
    ik = bytes(SigningKey(seed).verify_key)
    desc = NodeDescriptor(
        node_id=node_id_for(ik),
        name=name,
        role=role,
        layer=layer,
        host="127.0.0.1",
        port=port,
        client_port=port + 100 if role is NodeRole.GATEWAY else None,
        identity_key=ik,
        epoch_keys={
            EPOCH: public_key(generate_private_key()),
            EPOCH + 1: public_key(generate_private_key()),
        },
    )
    return desc, seed


def _network(per_layer: int = 2) -> list[NodeDescriptor]:
    nodes = [_node(f"gw{i}", NodeRole.GATEWAY, 0, 4000 + i)[0] for i in range(2)]
    for layer in (1, 2, 3):
        nodes += [
            _node(f"m{layer}{i}", NodeRole.MIX, layer, 5000 + 10 * layer + i)[0]
            for i in range(per_layer)
        ]
    return nodes


def _doc(per_layer: int = 2) -> TopologyDocument:
    return build_document(
        EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=_network(per_layer)
    )


def _auths(n: int) -> list[bytes]:
    return [os.urandom(32) for _ in range(n)]


def _pub(seed: bytes) -> bytes:
    return bytes(SigningKey(seed).verify_key)


def test_document_round_trip_is_canonical_and_deterministic() -> None:
    nodes = _network()
    a = build_document(EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=nodes)
    b = build_document(EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=nodes[::-1])
    assert a.to_bytes() == b.to_bytes()
    data = a.to_bytes()
    back = TopologyDocument.from_bytes(data)
    assert back == a and back.to_bytes() == data
    assert (a.valid_after, a.valid_until) == (EPOCH * 600, EPOCH * 600 + 600)
    assert [len(layer) for layer in a.layers] == [2, 2, 2] and len(a.gateways) == 2
    obj = json.loads(data)
    assert list(obj) == sorted(obj)
    assert obj["geometry_digest"] == VOICE.digest.hex()
    # Whitespace or key order changes are refused: what was signed is what is parsed.
    with pytest.raises(DirectoryError, match="canonical"):
        TopologyDocument.from_bytes(json.dumps(obj, indent=1).encode())


def test_descriptor_signature() -> None:
    desc, seed = _node("m", NodeRole.MIX, 1, 5000)
    sig = sign_descriptor(desc, seed)
    assert verify_descriptor(desc.to_bytes(), sig) == desc
    forged = desc.to_bytes().replace(b'"port":5000', b'"port":5001')
    with pytest.raises(DirectoryError, match="does not verify"):
        verify_descriptor(forged, sig)
    other_seed = os.urandom(32)
    with pytest.raises(UsageError):
        sign_descriptor(desc, other_seed)
    with pytest.raises(DirectoryError, match="node_id"):
        NodeDescriptor(bytes(16), "x", NodeRole.MIX, 1, "h", 1, None, desc.identity_key, {})


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("layer", 0, "layer"),
        ("port", 0, "port"),
        ("role", "relay", "role"),
        ("node_id", "00" * 16, "node_id"),
        ("identity_key", "ZZ" * 32, "identity_key"),
        ("extra", 1, "unknown field"),
    ],
)
def test_descriptor_bad_fields(field: str, value: object, match: str) -> None:
    desc, _ = _node("m", NodeRole.MIX, 1, 5000)
    d = desc.to_dict() | {field: value}
    with pytest.raises(DirectoryError, match=match):
        NodeDescriptor.from_dict(d)


def test_threshold_n_of_m() -> None:
    data = _doc().to_bytes()
    seeds = _auths(3)
    keys = [_pub(s) for s in seeds]
    sigs = [sign_document(data, s) for s in seeds]
    assert verify_document(data, sigs[:2], keys, 2).epoch == EPOCH
    assert verify_document(data, sigs, keys, 3).epoch == EPOCH
    with pytest.raises(DirectoryError, match="1 valid authority signatures, 2 required"):
        verify_document(data, sigs[:1], keys, 2)


def test_duplicate_and_foreign_signatures_do_not_count() -> None:
    data = _doc().to_bytes()
    seeds = _auths(3)
    keys = [_pub(s) for s in seeds]
    one = sign_document(data, seeds[0])
    outsider = sign_document(data, os.urandom(32))
    with pytest.raises(DirectoryError, match="1 valid"):
        verify_document(data, [one, one, one], keys, 2)
    with pytest.raises(DirectoryError, match="1 valid"):
        verify_document(data, [one, outsider], keys, 2)
    # A signature claiming authority 1's key but made by authority 0 does not count.
    stolen = DocumentSignature(keys[1], one.signature)
    with pytest.raises(DirectoryError, match="1 valid"):
        verify_document(data, [one, stolen], keys, 2)
    # A signature over another document does not count for this one.
    other = sign_document(_doc().to_bytes(), seeds[1])
    with pytest.raises(DirectoryError, match="1 valid"):
        verify_document(data, [one, other], keys, 2)
    # The list of keys is a set: listing a key twice does not lower the bar.
    with pytest.raises(UsageError):
        verify_document(data, [one], [keys[0], keys[0]], 2)


def test_tampered_document_fails() -> None:
    doc = _doc()
    data = doc.to_bytes()
    seeds = _auths(2)
    sigs = [sign_document(data, s) for s in seeds]
    keys = [_pub(s) for s in seeds]
    tampered = data.replace(b'"port":5010', b'"port":5999')
    assert tampered != data
    with pytest.raises(DirectoryError, match="0 valid"):
        verify_document(tampered, sigs, keys, 1)


def test_wrong_geometry_fails_closed() -> None:
    seeds = _auths(1)
    keys = [_pub(seeds[0])]
    bulk = build_document(EPOCH, epoch_length_s=600, geometry=BULK, descriptors=_network())
    data = bulk.to_bytes()
    sig = sign_document(data, seeds[0])
    assert verify_document(data, [sig], keys, 1).geometry == BULK
    with pytest.raises(DirectoryError, match="geometry"):
        verify_document(data, [sig], keys, 1, geometry=VOICE)
    # A signed document whose geometry digest does not match its parameters is refused.
    obj = json.loads(data)
    obj["geometry_digest"] = VOICE.digest.hex()
    bad = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(DirectoryError, match="geometry_digest"):
        verify_document(bad, [sign_document(bad, seeds[0])], keys, 1)
    obj["geometry"]["user_payload"] = 385
    obj["geometry_digest"] = obj["geometry"]["digest"]
    bad = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(DirectoryError, match="geometry"):
        verify_document(bad, [sign_document(bad, seeds[0])], keys, 1)


def test_validity_window_and_envelope() -> None:
    doc = _doc()
    seed = os.urandom(32)
    env = SignedDocument(doc.to_bytes(), (sign_document(doc.to_bytes(), seed),))
    back = SignedDocument.from_bytes(env.to_bytes())
    assert back == env
    assert back.verify([_pub(seed)], 1, now=doc.valid_after + 1) == doc
    with pytest.raises(DirectoryError, match="not valid now"):
        back.verify([_pub(seed)], 1, now=doc.valid_until)
    with pytest.raises(DirectoryError):
        SignedDocument.from_bytes(b'{"document": 5}')


@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    with pytest.raises(DirectoryError):
        TopologyDocument.from_bytes(data)


def test_epoch_arithmetic() -> None:
    assert epoch_at(0, 600) == 0
    assert epoch_at(599.999, 600) == 0
    assert epoch_at(600, 600) == 1
    assert epoch_at(1000 + 1200, 600, genesis_s=1000) == 2
    assert epoch_start(2, 600, genesis_s=1000) == 2200
    with pytest.raises(UsageError):
        epoch_at(10, 0)


def test_build_leaves_out_nodes_without_the_epoch_key_and_keeps_newest() -> None:
    nodes = _network()
    stale, _ = _node("old", NodeRole.MIX, 1, 6000)
    stale = stale.restricted([EPOCH + 5])
    newer = nodes[2].restricted([EPOCH, EPOCH + 1])
    doc = build_document(EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=[*nodes, stale])
    assert stale.node_id not in doc.by_id
    doc2 = build_document(EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=[newer, *nodes])
    assert doc2.to_bytes() == doc.to_bytes()


def test_path_has_one_mix_per_layer_and_gateways_at_ends() -> None:
    doc = _doc(per_layer=3)
    entry, exit_ = doc.gateways[0].node_id, doc.gateways[1].node_id
    seen: Counter[bytes] = Counter()
    for _ in range(600):
        path = select_path(doc, entry, exit_, 0.01)
        assert len(path) == 5 and path[0].node_id == entry and path[-1].node_id == exit_
        for layer, hop in enumerate(path[1:4], start=1):
            node = doc.node(hop.node_id)
            assert node.role is NodeRole.MIX and node.layer == layer
            assert hop.public_key == node.epoch_keys[EPOCH]
            seen[hop.node_id] += 1
    # Uniform over each layer's 3 nodes: each expected 200 times; allow a wide margin.
    assert len(seen) == 9 and all(120 < c < 280 for c in seen.values())


def test_path_routes_around_avoided_nodes() -> None:
    doc = _doc()
    entry, exit_ = doc.gateways[0].node_id, doc.gateways[1].node_id
    dead = {doc.layers[0][0].node_id, doc.layers[2][1].node_id}
    for _ in range(50):
        path = select_path(doc, entry, exit_, 0.0, avoid=dead)
        assert not dead & {h.node_id for h in path}
        assert all(h.delay_us == 0 for h in path)
    with pytest.raises(NoRouteError, match="layer 1"):
        select_path(doc, entry, exit_, 0.0, avoid=[n.node_id for n in doc.layers[0]])
    with pytest.raises(NoRouteError, match="entry"):
        select_path(doc, doc.layers[0][0].node_id, exit_, 0.0)
    with pytest.raises(NoRouteError, match="exit"):
        select_path(doc, entry, os.urandom(16), 0.0)


def test_loop_routes_go_through_every_other_layer_and_come_back() -> None:
    doc = _doc()
    gw, mix2 = doc.gateways[0].node_id, doc.layers[1][0].node_id
    assert loop_route(doc, gw) == [1, 2, 3, gw]
    assert loop_route(doc, mix2) == [3, 0, 1, mix2]
    with pytest.raises(NoRouteError, match="not in the topology document"):
        loop_route(doc, os.urandom(16))
    for _ in range(50):
        path = sample_path(doc, loop_route(doc, mix2), 0.01)
        assert [doc.node(h.node_id).layer for h in path] == [3, 0, 1, 2]
        assert path[-1].node_id == mix2
        assert all(h.public_key == doc.node(h.node_id).epoch_keys[EPOCH] for h in path)


def test_one_sampler_draws_layers_in_route_order_then_delays() -> None:
    doc = _doc(per_layer=3)
    entry, exit_ = doc.gateways[0].node_id, doc.gateways[1].node_id
    calls: list[int] = []

    def rng(n: int) -> bytes:  # a fixed stream: the same bytes give the same path
        calls.append(n)
        return bytes([len(calls) * 37 % 256]) * n

    first = select_path(doc, entry, exit_, 0.02, rng)
    # One byte per layer draw (a draw above 2 of 0..3 is redrawn), then 8 per hop delay.
    assert set(calls[:-5]) == {1} and len(calls) >= 8 and calls[-5:] == [8] * 5
    calls.clear()
    route = [entry, 1, 2, 3, exit_]
    assert sample_path(doc, route, 0.02, rng) == first
    with pytest.raises(NoRouteError, match="gateway layer"):
        sample_path(doc, [0], 0.0, avoid=[g.node_id for g in doc.gateways])
    with pytest.raises(NoRouteError, match="no layer 4"):
        sample_path(doc, [4], 0.0)
    with pytest.raises(NoRouteError, match="no key for epoch"):
        sample_path(doc, [entry], 0.0, epoch=EPOCH + 7)
    with pytest.raises(NoRouteError, match="exceeds the geometry"):
        sample_path(doc, [0, 1, 2, 3, 0, 1], 0.0)


def test_delay_distribution_is_exponential_with_the_mean() -> None:
    n = 20000
    mean_s = 0.05
    draws = [exp_delay_us(mean_s) for _ in range(n)]
    mean = sum(draws) / n / 1e6
    # Standard error of the mean of an exponential is mean / sqrt(n) (0.7 %); allow 5 sigma.
    assert abs(mean - mean_s) < 5 * mean_s / math.sqrt(n)
    # P(X > mean) = 1/e for an exponential.
    above = sum(d > mean_s * 1e6 for d in draws) / n
    assert abs(above - math.exp(-1)) < 0.02
    assert min(draws) >= 0
    with pytest.raises(UsageError):
        exp_delay_us(float("nan"))


def test_randomness_is_injectable() -> None:
    zeros = lambda n: bytes(n)  # noqa: E731
    ones = lambda n: b"\xff" * n  # noqa: E731
    assert exp_delay_us(0.05, zeros) == 0
    assert exp_delay_us(0.05, ones) > 0.05 * 1e6 * 30  # u close to 1: the far tail
    assert uniform_index(5, zeros) == 0
    counts = Counter(uniform_index(3) for _ in range(3000))
    assert set(counts) == {0, 1, 2}


def test_one_draw_from_bytes_serves_delays_cover_and_backoff() -> None:
    """exp_delay_us is exponential in microseconds, rounded; both read 8 bytes per draw."""
    for raw in (bytes(8), b"\x80" + bytes(7), b"\xff" * 8, bytes(range(8)), b"\x01" * 8):
        u = (int.from_bytes(raw, "big") >> 11) / 2.0**53
        assert uniform01(lambda n, raw=raw: raw[:n]) == u  # type: ignore[misc]
        want = -0.05 * math.log1p(-u)
        assert exponential(0.05, lambda n, raw=raw: raw[:n]) == want  # type: ignore[misc]
        got = exp_delay_us(0.05, lambda n, raw=raw: raw[:n])  # type: ignore[misc]
        assert got == round(want * 1_000_000)
    reads: list[int] = []
    assert exponential(0.0, lambda n: reads.append(n) or bytes(n)) == 0.0 and reads == []
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(UsageError, match="finite number >= 0"):
            exponential(bad)


def test_documents_cross_process_boundaries() -> None:
    """Worker processes on one machine may receive a parsed document (not a wire format)."""
    doc = _doc()
    back = pickle.loads(pickle.dumps(doc))
    assert back == doc and back.to_bytes() == doc.to_bytes()
    assert back.by_id.keys() == doc.by_id.keys()


@pytest.mark.parametrize(
    "text", ["", "-1", "01", "1.0", "\u00b2", "\u0663", "9" * 20, "9" * 5000, "x"]
)
def test_parse_epoch_refuses_anything_but_plain_decimal(text: str) -> None:
    assert parse_epoch(text) is None


def test_parse_epoch_accepts_plain_decimal() -> None:
    assert [parse_epoch(t) for t in ("0", "7", str(2**63 - 1))] == [0, 7, 2**63 - 1]
    desc, _ = _node("m", NodeRole.MIX, 1, 5000)
    d = desc.to_dict()
    d["epoch_keys"] = {"\u00b2": "00" * 32}
    with pytest.raises(DirectoryError, match="bad epoch"):
        NodeDescriptor.from_dict(d)


def test_document_publishes_max_delay_and_paths_respect_it() -> None:
    doc = build_document(
        EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=_network(), max_delay_us=50_000
    )
    obj = json.loads(doc.to_bytes())
    assert obj["version"] == 2 and obj["max_delay_us"] == 50_000
    assert TopologyDocument.from_bytes(doc.to_bytes()).max_delay_us == 50_000
    assert pickle.loads(pickle.dumps(doc)).max_delay_us == 50_000
    assert _doc().max_delay_us == DEFAULT_MAX_DELAY_US == 10_000_000
    entry, exit_ = doc.gateways[0].node_id, doc.gateways[1].node_id
    # A mean far above the cap: every draw is capped, none exceeds what nodes accept.
    delays = [h.delay_us for _ in range(50) for h in select_path(doc, entry, exit_, 10.0)]
    assert max(delays) == 50_000
    assert exp_delay_us(0.05, lambda n: b"\xff" * n, max_us=1234) == 1234
    with pytest.raises(UsageError, match="max_delay_us"):
        build_document(EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=[], max_delay_us=-1)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"version": 1}, "document.version"),  # the format before max_delay_us
        ({"version": 3}, "document.version"),
        ({"max_delay_us": 2**32}, "document.max_delay_us"),
        ({"max_delay_us": -1}, "document.max_delay_us"),
        ({"max_delay_us": "10"}, "document.max_delay_us"),
        ({"max_delay_us": True}, "document.max_delay_us"),
        ({"max_delay_us": None}, "document.max_delay_us"),
    ],
)
def test_unknown_version_and_bad_max_delay_are_refused(
    change: dict[str, object], match: str
) -> None:
    obj = json.loads(_doc().to_bytes()) | change
    with pytest.raises(DirectoryError, match=match):
        TopologyDocument.from_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def test_a_version_1_document_without_max_delay_is_refused() -> None:
    obj = json.loads(_doc().to_bytes())
    del obj["max_delay_us"]
    obj["version"] = 1
    with pytest.raises(DirectoryError, match="document.version"):
        TopologyDocument.from_bytes(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())
