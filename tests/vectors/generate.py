"""Regenerate the Sphinx known-answer vectors, byte for byte.

    python3 -m tests.vectors.generate           # rewrite tests/vectors/sphinx_vectors.json
    python3 -m tests.vectors.generate --check   # exit 1 if the file differs

Every random byte comes from :class:`SeededRng`, so the same code yields the same file.
A change to this file's output is a change to the wire format: bump SPHINX_VERSION.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

from overlay import (
    BULK,
    VOICE,
    Deliver,
    DeliverReply,
    Discard,
    Forward,
    Geometry,
    Hop,
    ProcessResult,
    create_drop,
    create_forward,
    create_reply,
    create_surb,
    open_reply,
    process_packet,
    public_key,
)

VECTORS_PATH = Path(__file__).with_name("sphinx_vectors.json")
RNG_PERSON = b"pn-test-rng-v1"  # BLAKE2b personalisation of the test stream
RNG_DESCRIPTION = (
    "rng(n) returns the next n bytes of the stream B(0) | B(1) | ..., where "
    "B(i) = BLAKE2b-512(data=i as 8-byte big-endian, key=rng_seed, person='pn-test-rng-v1')"
)
# Delays cover both ends of the 4-byte field and some ordinary values (microseconds).
DELAYS_US = (0, 4_294_967_295, 1_000, 250_000, 37_512)


class SeededRng:
    """Deterministic ``rng`` for tests: keyed BLAKE2b over a counter, read as one stream."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._buffer = b""

    def __call__(self, n: int) -> bytes:
        while len(self._buffer) < n:
            block = hashlib.blake2b(
                self._counter.to_bytes(8, "big"), key=self._seed, person=RNG_PERSON
            ).digest()
            self._buffer += block
            self._counter += 1
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out


def _seed(label: str) -> bytes:
    return hashlib.blake2b(label.encode(), digest_size=32, person=b"pn-test-seed-v1").digest()


def _nodes(label: str, count: int) -> list[dict[str, str]]:
    """Private key, public key and node id of each hop, derived from the case's label."""
    rng = SeededRng(_seed(label + "/nodes"))
    nodes = []
    for _ in range(count):
        sk = rng(32)
        nodes.append({"node_id": rng(16).hex(), "private_key": sk.hex(), "public_key": ""})
        nodes[-1]["public_key"] = public_key(sk).hex()
    return nodes


def _path(nodes: list[dict[str, str]], delays: list[int]) -> list[Hop]:
    return [
        Hop(bytes.fromhex(n["node_id"]), bytes.fromhex(n["public_key"]), d)
        for n, d in zip(nodes, delays, strict=True)
    ]


def result_to_json(result: ProcessResult) -> dict[str, object]:
    """The fields of one hop's result; a Forward's packet is the next hop's input."""
    match result:
        case Forward(next_hop, delay_us, _packet, tag):
            return {
                "type": "Forward",
                "next_hop": next_hop.hex(),
                "delay_us": delay_us,
                "replay_tag": tag.hex(),
            }
        case Deliver(mailbox, delay_us, message, tag):
            return {
                "type": "Deliver",
                "mailbox": mailbox.hex(),
                "delay_us": delay_us,
                "message": message.hex(),
                "replay_tag": tag.hex(),
            }
        case DeliverReply(mailbox, delay_us, surb_id, payload, tag):
            return {
                "type": "DeliverReply",
                "mailbox": mailbox.hex(),
                "delay_us": delay_us,
                "surb_id": surb_id.hex(),
                "payload": payload.hex(),
                "replay_tag": tag.hex(),
            }
        case Discard(delay_us, tag):
            return {"type": "Discard", "delay_us": delay_us, "replay_tag": tag.hex()}
    raise AssertionError(f"unexpected result {result!r}")


def _walk(
    geometry: Geometry, nodes: list[dict[str, str]], packet: bytes
) -> list[dict[str, object]]:
    """Process ``packet`` along ``nodes``, recording every hop's input and result."""
    hops: list[dict[str, object]] = []
    for i, node in enumerate(nodes):
        result = process_packet(geometry, bytes.fromhex(node["private_key"]), packet)
        hops.append({"packet": packet.hex(), "result": result_to_json(result)})
        if isinstance(result, Forward):
            if i + 1 == len(nodes) or result.next_hop.hex() != nodes[i + 1]["node_id"]:
                raise AssertionError("packet left the path")
            packet = result.packet
        elif i + 1 != len(nodes):
            raise AssertionError("packet stopped before the end of the path")
    return hops


def _message(label: str, length: int) -> bytes:
    return SeededRng(_seed(label + "/message"))(length)


def _case(geometry: Geometry, kind: str, hops: int, message_len: int) -> dict[str, object]:
    label = f"{geometry.name}-{kind}-{hops}hop"
    seed = _seed(label)
    nodes = _nodes(label, hops)
    delays = list(DELAYS_US[:hops])
    path = _path(nodes, delays)
    case: dict[str, object] = {
        "name": label,
        "kind": kind,
        "geometry": geometry.to_dict(),
        "rng_seed": seed.hex(),
        "nodes": nodes,
        "delays_us": delays,
    }
    rng = SeededRng(seed)
    if kind == "forward":
        mailbox = _message(label + "/mailbox", 16)
        message = _message(label, message_len)
        packet = create_forward(geometry, path, mailbox, message, rng=rng)
        case |= {"mailbox": mailbox.hex(), "message": message.hex(), "packet": packet.hex()}
        case["hops"] = _walk(geometry, nodes, packet)
    elif kind == "drop":
        packet = create_drop(geometry, path, rng=rng)
        case["packet"] = packet.hex()
        case["hops"] = _walk(geometry, nodes, packet)
    elif kind == "surb":
        mailbox = _message(label + "/mailbox", 16)
        message = _message(label, message_len)
        surb, keys = create_surb(geometry, path, mailbox, rng=rng)
        first_hop, packet = create_reply(geometry, surb, message)
        assert first_hop.hex() == nodes[0]["node_id"]
        case |= {
            "mailbox": mailbox.hex(),
            "message": message.hex(),
            "surb": surb.to_bytes().hex(),
            "surb_keys": {
                "surb_id": keys.surb_id.hex(),
                "key": keys.key.hex(),
                "hop_keys": [k.hex() for k in keys.hop_keys],
            },
            "packet": packet.hex(),
        }
        case["hops"] = hop_list = _walk(geometry, nodes, packet)
        last = hop_list[-1]["result"]
        assert isinstance(last, dict)
        opened = open_reply(geometry, keys, bytes.fromhex(str(last["payload"])))
        assert opened == message
    else:
        raise AssertionError(kind)
    return case


def build() -> str:
    """The whole vectors file as text."""
    cases = []
    for geometry in (VOICE, BULK):
        cases.append(_case(geometry, "forward", 5, geometry.user_payload))
        cases.append(_case(geometry, "forward", 3, 100))
        cases.append(_case(geometry, "forward", 1, 0))
        cases.append(_case(geometry, "surb", 5, 57))
        cases.append(_case(geometry, "surb", 3, geometry.user_payload))
        cases.append(_case(geometry, "drop", 5, 0))
        cases.append(_case(geometry, "drop", 2, 0))
    doc = {
        "description": "Sphinx known-answer vectors, from python3 -m tests.vectors.generate",
        "rng": RNG_DESCRIPTION,
        "vectors": cases,
    }
    return json.dumps(doc, indent=1) + "\n"


def write_or_check(argv: list[str] | None, doc: str, path: Path, build: Callable[[], str]) -> int:
    """A generator's command line: write ``build()`` to ``path``, or with ``--check`` exit 1
    if the file differs. ``doc``: the generator's module doc (its first line is the help)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        if path.read_text() != text:
            print(f"{path} is out of date", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return write_or_check(argv, __doc__, VECTORS_PATH, build)


if __name__ == "__main__":
    sys.exit(main())
