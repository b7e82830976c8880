"""Known-answer vectors: every hop's bytes must match tests/vectors/sphinx_vectors.json."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from overlay import (
    Deliver,
    DeliverReply,
    Discard,
    Forward,
    Geometry,
    Hop,
    ProcessResult,
    Surb,
    SurbKeys,
    create_drop,
    create_forward,
    create_reply,
    create_surb,
    open_reply,
    process_packet,
    public_key,
)

VECTORS_DIR = Path(__file__).parent / "vectors"
VECTORS = json.loads((VECTORS_DIR / "sphinx_vectors.json").read_text())["vectors"]


class StreamRng:
    """The stream the vectors file describes, written out again from its description."""

    def __init__(self, seed: bytes) -> None:
        self.seed, self.counter, self.buf = seed, 0, b""

    def __call__(self, n: int) -> bytes:
        while len(self.buf) < n:
            block = hashlib.blake2b(
                self.counter.to_bytes(8, "big"), key=self.seed, person=b"pn-test-rng-v1"
            )
            self.buf += block.digest()
            self.counter += 1
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def _h(value: Any) -> bytes:
    return bytes.fromhex(value)


def _check_result(result: ProcessResult, want: dict[str, Any]) -> None:
    assert type(result).__name__ == want["type"]
    assert result.delay_us == want["delay_us"]
    assert result.replay_tag == _h(want["replay_tag"])
    match result:
        case Forward():
            assert result.next_hop == _h(want["next_hop"])
        case Deliver():
            assert (result.mailbox, result.message) == (_h(want["mailbox"]), _h(want["message"]))
        case DeliverReply():
            assert result.mailbox == _h(want["mailbox"])
            assert result.surb_id == _h(want["surb_id"])
            assert result.payload == _h(want["payload"])
        case Discard():
            pass


def test_vectors_cover_the_brief() -> None:
    names = {v["name"] for v in VECTORS}
    for geo in ("voice", "bulk"):
        for kind in ("forward-5hop", "forward-3hop", "surb-5hop", "drop-5hop"):
            assert f"{geo}-{kind}" in names


@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector(vec: dict[str, Any]) -> None:
    geometry = Geometry.from_dict(vec["geometry"])
    assert geometry.to_dict() == vec["geometry"]
    for node in vec["nodes"]:
        assert public_key(_h(node["private_key"])) == _h(node["public_key"])
    path = [
        Hop(_h(n["node_id"]), _h(n["public_key"]), d)
        for n, d in zip(vec["nodes"], vec["delays_us"], strict=True)
    ]
    rng = StreamRng(_h(vec["rng_seed"]))
    if vec["kind"] == "forward":
        packet = create_forward(geometry, path, _h(vec["mailbox"]), _h(vec["message"]), rng=rng)
    elif vec["kind"] == "drop":
        packet = create_drop(geometry, path, rng=rng)
    else:
        surb, keys = create_surb(geometry, path, _h(vec["mailbox"]), rng=rng)
        assert surb.to_bytes() == _h(vec["surb"])
        want_keys = vec["surb_keys"]
        assert keys == SurbKeys(
            _h(want_keys["surb_id"]), _h(want_keys["key"]), tuple(map(_h, want_keys["hop_keys"]))
        )
        first_hop, packet = create_reply(
            geometry, Surb.from_bytes(geometry, surb.to_bytes()), _h(vec["message"])
        )
        assert first_hop == path[0].node_id
    assert packet == _h(vec["packet"])
    assert len(vec["hops"]) == len(path)
    for node, hop in zip(vec["nodes"], vec["hops"], strict=True):
        assert packet == _h(hop["packet"])
        assert len(packet) == geometry.packet_len
        result = process_packet(geometry, _h(node["private_key"]), packet)
        _check_result(result, hop["result"])
        if isinstance(result, Forward):
            packet = result.packet
    last = vec["hops"][-1]["result"]
    assert (
        last["type"]
        == {"forward": "Deliver", "drop": "Discard", "surb": "DeliverReply"}[vec["kind"]]
    )
    if vec["kind"] == "forward":
        assert last["message"] == vec["message"] and last["mailbox"] == vec["mailbox"]
    if vec["kind"] == "surb":
        assert last["surb_id"] == vec["surb_keys"]["surb_id"]
        assert open_reply(geometry, keys, _h(last["payload"])) == _h(vec["message"])


def test_generator_reproduces_the_file() -> None:
    spec = importlib.util.spec_from_file_location("_gen_vectors", VECTORS_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == (VECTORS_DIR / "sphinx_vectors.json").read_text()
    assert module.main(["--check"]) == 0
