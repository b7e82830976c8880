"""Hostile directory input: one bad authority, peer or node must not stop anyone.

Parsers of untrusted bytes raise only DirectoryError (a DirectoryFieldError naming the
field); a client asks the next authority after any failure; an authority counts what a
peer or node sent wrong and still signs its document; keys that are not usable points
are refused where descriptors are accepted and where documents are read.
"""

from __future__ import annotations

import json
import os
import random
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from directory_support import make_network, make_node
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult
from nacl.exceptions import RuntimeError as NaclRuntimeError
from nacl.signing import SigningKey

from mixnode.config import AuthoritySection, DirAuthConfig, DirectorySection
from mixnode.daemon import AuthorityDirectory
from mixnode.dirauth import Authority, AuthorityEvent, RunningAuthority, parse_signature_reply
from mixnode.directory_client import DirectoryClient, FetchEvent, publish_report
from overlay import (
    VOICE,
    DirectoryError,
    DirectoryFieldError,
    InvalidKeyError,
    NodeDescriptor,
    NodeRole,
    SignedDocument,
    TopologyDocument,
    build_document,
    canonical_json,
    descriptor_host_problem,
    ed25519_key_problem,
    generate_private_key,
    load_json,
    node_id_for,
    public_key,
    sign_document,
    verify_descriptor,
    verify_document,
    x25519_key_problem,
)
from overlay._topology import _SIG_DESC

EPOCH = 40
EPOCH_S = 600
P = 2**255 - 19

# libsodium's blocklist of X25519 public keys (crypto_scalarmult/curve25519/ref10/
# x25519_ref10.c, has_small_order), little-endian: 0, 1, the two points of order 8,
# p - 1, p and p + 1. libsodium ignores bit 255, so each has a second encoding.
SMALL_ORDER = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (P - 1).to_bytes(32, "little"),
    P.to_bytes(32, "little"),
    (P + 1).to_bytes(32, "little"),
]
SMALL_ORDER_ALL = SMALL_ORDER + [k[:31] + bytes([k[31] | 0x80]) for k in SMALL_ORDER]


# --------------------------------------------------------------------------------------
# Helpers


def _x25519() -> bytes:
    return public_key(generate_private_key())


def _node(i: int, role: NodeRole, layer: int) -> tuple[NodeDescriptor, bytes]:
    return make_node(i, role, layer, EPOCH, EPOCH_S)


NETWORK = make_network(EPOCH, EPOCH_S)
DOC = build_document(
    EPOCH, epoch_length_s=EPOCH_S, geometry=VOICE, descriptors=[d for d, _ in NETWORK]
)
DOC_BYTES = DOC.to_bytes()
AUTH_SEEDS = [bytes([i + 1]) * 32 for i in range(3)]
AUTH_KEYS = [bytes(SigningKey(s).verify_key) for s in AUTH_SEEDS]
NOW = DOC.valid_after + 1
# Fuzz tests: no deadline, and the first draw of st.text (Unicode tables) may be slow.
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _envelope(doc: bytes, seeds: list[bytes]) -> bytes:
    return SignedDocument(doc, tuple(sign_document(doc, s) for s in seeds)).to_bytes()


def _with_key(obj: dict[str, object], path: list[str | int], value: object) -> dict[str, object]:
    """A deep copy of ``obj`` with the value at ``path`` replaced."""
    out = json.loads(json.dumps(obj))
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return out  # type: ignore[no-any-return]


def _signed_descriptor_body(d: dict[str, object], seed: bytes) -> bytes:
    """A POST body for a descriptor dict that the constructor would refuse, signed."""
    data = canonical_json(d)
    sig = SigningKey(seed).sign(_SIG_DESC + data).signature
    return canonical_json({"descriptor": data.decode("ascii"), "signature": sig.hex()})


def _raises_only_directory_error(parse: Callable[[bytes], object], data: bytes) -> None:
    try:
        parse(data)
    except DirectoryError as exc:
        assert str(exc)  # every refusal says why
    # Any other exception fails the test.


# --------------------------------------------------------------------------------------
# Hostile bytes: mutations of valid input and the shapes named in the issue


def _json_paths(obj: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    paths = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            paths += _json_paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            paths += _json_paths(v, (*prefix, i))
    return paths


HOSTILE_VALUES: st.SearchStrategy[object] = st.one_of(
    st.sampled_from(
        [
            "\u00e9",
            "caf\u00e9",
            "\u2028",
            "\x00",
            -1,
            0,
            2**64,
            2**63,
            10**300,
            1e308,
            True,
            None,
            [],
            {},
            "",
            "00" * 32,
            "ff" * 64,
            [[[[[[[[[[1]]]]]]]]]],
            {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {}}}}}}}}},
        ]
    ),
    st.text(max_size=20),
    st.integers(),
    st.floats(allow_nan=False),
)


HOSTILE_TEXT = [  # JSON text that no Python value serializes to
    b"[" * 3000 + b"]" * 3000,
    b'{"a":' * 3000 + b"1" + b"}" * 3000,
    b"9" * 5000,
    b"1e999999",
    b"NaN",
    b'"\\u00e9"',
    b'"\\ud800"',
]
_MARK = "\x01hostile\x01"


@st.composite
def hostile_tree(draw: st.DrawFn, base: dict[str, object]) -> bytes:
    """``base`` with one value (anywhere in the tree) replaced by a hostile one."""
    paths = [p for p in _json_paths(base) if p]
    path = draw(st.sampled_from(paths))
    if draw(st.booleans()):
        return canonical_json(_with_key(base, list(path), draw(HOSTILE_VALUES)))
    text = canonical_json(_with_key(base, list(path), _MARK))
    return text.replace(canonical_json(_MARK), draw(st.sampled_from(HOSTILE_TEXT)))


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with bytes flipped, cut, inserted, or raw hostile text spliced in."""
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "splice"]))
    at = draw(st.integers(0, len(valid)))
    if kind == "truncate":
        return valid[:at]
    if kind == "flip":
        i = min(at, len(valid) - 1)
        return valid[:i] + bytes([valid[i] ^ draw(st.integers(1, 255))]) + valid[i + 1 :]
    if kind == "insert":
        return valid[:at] + draw(st.binary(min_size=1, max_size=8)) + valid[at:]
    raw = draw(
        st.sampled_from(
            [
                b"\\u00e9",
                b"[" * 5000,
                b"[" * 50 + b"]" * 50,
                b"{" * 2000 + b"}" * 2000,
                b"9" * 5000,
                b"1e999999",
                b"NaN",
                b"-Infinity",
                b'"\\ud800"',
                b"\xc3\xa9",
            ]
        )
    )
    return valid[:at] + raw + valid[at:]


def _hostile(valid_obj: dict[str, object], valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=400), mutated(valid), hostile_tree(valid_obj))


DOC_OBJ = json.loads(DOC_BYTES)
HONEST_ENVELOPE = _envelope(DOC_BYTES, AUTH_SEEDS[1:])


@st.composite
def hostile_envelope(draw: st.DrawFn) -> bytes:
    """What a hostile authority (holding a real authority key) may serve."""
    which = draw(st.sampled_from(["envelope", "document", "raw"]))
    if which == "raw":
        return draw(st.binary(max_size=400))
    if which == "envelope":
        env = json.loads(HONEST_ENVELOPE)
        return draw(st.one_of(mutated(HONEST_ENVELOPE), hostile_tree(env)))
    # A hostile document, signed with the hostile authority's own (real) key, so that
    # only the threshold stands between it and the client.
    doc = draw(_hostile(DOC_OBJ, DOC_BYTES))
    text = doc.decode("latin-1")
    sig = sign_document(doc, AUTH_SEEDS[0])
    return canonical_json({"document": text, "signatures": [sig.to_dict()]})


# --------------------------------------------------------------------------------------
# Parsers raise only DirectoryError


@given(_hostile(DOC_OBJ, DOC_BYTES))
@settings(FUZZ, max_examples=300)
def test_document_parser_raises_only_directory_errors(data: bytes) -> None:
    _raises_only_directory_error(TopologyDocument.from_bytes, data)


@given(hostile_envelope())
@settings(FUZZ, max_examples=300)
def test_envelope_parser_raises_only_directory_errors(data: bytes) -> None:
    def parse_and_verify(raw: bytes) -> object:
        return SignedDocument.from_bytes(raw).verify(AUTH_KEYS, 1, geometry=VOICE)

    _raises_only_directory_error(SignedDocument.from_bytes, data)
    _raises_only_directory_error(parse_and_verify, data)


DESC, DESC_SEED = NETWORK[2]
DESC_OBJ = json.loads(DESC.to_bytes())


@given(_hostile(DESC_OBJ, DESC.to_bytes()))
@settings(FUZZ, max_examples=300)
def test_descriptor_parser_raises_only_directory_errors(data: bytes) -> None:
    _raises_only_directory_error(NodeDescriptor.from_bytes, data)
    _raises_only_directory_error(lambda raw: verify_descriptor(raw, bytes(64)), data)


REPLY = canonical_json(
    {"digest": DOC.digest.hex(), "signature": sign_document(DOC_BYTES, AUTH_SEEDS[0]).to_dict()}
)


@given(_hostile(json.loads(REPLY), REPLY))
@settings(FUZZ, max_examples=200)
def test_signature_reply_parser_raises_only_directory_errors(data: bytes) -> None:
    _raises_only_directory_error(parse_signature_reply, data)


@given(st.binary(max_size=2000))
def test_load_json_on_arbitrary_bytes_raises_only_directory_errors(data: bytes) -> None:
    _raises_only_directory_error(lambda raw: load_json(raw, "x", max_bytes=1000), data)


@pytest.mark.parametrize("depth", [1, 4, 8])
def test_load_json_takes_nesting_up_to_the_bound(depth: int) -> None:
    text = b"[" * depth + b'"[{\\"]"' + b"]" * depth  # brackets inside strings do not count
    assert load_json(text, "x", max_bytes=100, max_depth=8) is not None


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"[" * 9 + b"]" * 9, "nested deeper than 8 levels"),
        (b'{"a":' * 9 + b"1" + b"}" * 9, "nested deeper than 8 levels"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 8 levels"),
        (b"[" * 100_000, "unbalanced"),
        (b'"' + b'\\"' * 100_000, "not ASCII JSON"),  # no quadratic string scan
        (b'["\xc3\xa9"]', "not ASCII JSON"),
        (b"[NaN]", "not ASCII JSON"),
        (b"[" + b"9" * 5000 + b"]", "not ASCII JSON"),  # more digits than int() takes
        (b" " * 1001, "larger than 1000 bytes"),
    ],
)
def test_load_json_refuses_hostile_shapes(data: bytes, problem: str) -> None:
    with pytest.raises(DirectoryFieldError, match=problem):
        load_json(data, "x", max_bytes=1000 if len(data) == 1001 else len(data))


# --------------------------------------------------------------------------------------
# Errors name the field


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (["nodes", 3, "epoch_keys", str(EPOCH)], "00" * 32, f"nodes[3].epoch_keys.{EPOCH}"),
        (["nodes", 1, "port"], 0, "nodes[1].port"),
        (["nodes", 4, "identity_key"], "00" * 32, "nodes[4].identity_key"),
        (["nodes", 0, "name"], "\x00", "nodes[0].name"),
        (["nodes", 2, "host"], 7, "nodes[2].host"),
        (["nodes", 2, "layer"], "1", "nodes[2].layer"),
        (["nodes", 0, "bogus"], 1, "nodes[0].bogus"),
        (["geometry", "max_hops"], 99, "geometry"),
        (["epoch"], -1, "epoch"),
    ],
)
def test_document_errors_name_the_field(path: list[str | int], value: object, field: str) -> None:
    bad = canonical_json(_with_key(DOC_OBJ, path, value))
    with pytest.raises(DirectoryFieldError) as info:
        TopologyDocument.from_bytes(bad)
    assert str(info.value).startswith(f"document.{field}: "), str(info.value)
    assert info.value.path == f"document.{field}"


@given(st.data())
@settings(FUZZ, max_examples=100)
def test_any_bad_node_field_is_named_with_its_index(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(DOC_OBJ["nodes"]) - 1))
    name = data.draw(st.sampled_from(sorted(DOC_OBJ["nodes"][i])))
    value: object = data.draw(st.sampled_from([None, [], {}, "\u00e9", -5, 2**70, "zz"]))
    bad = canonical_json(_with_key(DOC_OBJ, ["nodes", i, name], value))
    try:
        TopologyDocument.from_bytes(bad)
    except DirectoryFieldError as exc:
        # A refused value is named where it is (or, for a value that made the node sort
        # elsewhere, the document says it is not canonical).
        assert str(exc).startswith(f"document.nodes[{i}].") or "canonical" in str(exc), exc
    else:  # accepted: the value was already there, or is valid for the field
        unchanged = DOC_OBJ["nodes"][i][name] == value
        usable_host = name == "host" and descriptor_host_problem(value) is None
        assert unchanged or usable_host or (name == "name" and isinstance(value, str)), name


def test_envelope_errors_name_the_field() -> None:
    env = json.loads(HONEST_ENVELOPE)
    bad = canonical_json(_with_key(env, ["signatures", 1, "signature"], "zz"))
    with pytest.raises(DirectoryFieldError, match=r"^envelope\.signatures\[1\]\.signature: "):
        SignedDocument.from_bytes(bad)


# --------------------------------------------------------------------------------------
# Named regressions


def test_non_ascii_document_in_an_envelope_is_a_directory_error() -> None:
    env = canonical_json({"document": "caf\u00e9", "signatures": []})  # JSON escapes: ASCII
    with pytest.raises(DirectoryFieldError, match=r"^envelope\.document: "):
        SignedDocument.from_bytes(env)


def _client(served: dict[str, bytes | Exception]) -> DirectoryClient:
    def get(url: str, timeout_s: float) -> bytes:
        reply = served[url.split("/v1/")[0]]
        if isinstance(reply, Exception):
            raise reply
        return reply

    return DirectoryClient(list(served), AUTH_KEYS, 2, geometry=VOICE, clock=lambda: NOW, get=get)


def _honest_served(hostile: bytes | Exception, position: int) -> dict[str, bytes | Exception]:
    honest: list[bytes | Exception] = [
        _envelope(DOC_BYTES, [AUTH_SEEDS[1]]),
        _envelope(DOC_BYTES, [AUTH_SEEDS[2]]),
    ]
    replies = honest[:position] + [hostile] + honest[position:]
    return {f"http://a{i}": r for i, r in enumerate(replies)}


def test_non_ascii_document_from_one_authority_does_not_stop_the_fetch() -> None:
    client = _client(_honest_served(canonical_json({"document": "\u00e9", "signatures": []}), 0))
    assert client.fetch() == DOC
    # Authorities are asked at once: 1 of 2 signatures is refused, and the hostile reply
    # is counted if it arrived before the second honest one.
    assert client.counters[FetchEvent.DOCUMENT_REFUSED] in (1, 2)
    assert client.counters[FetchEvent.FETCHED] == 1


@pytest.mark.parametrize(
    "failure", [OSError("refused"), ValueError("bad url"), DirectoryError("too large")]
)
def test_an_authority_that_fails_to_answer_does_not_stop_the_fetch(failure: Exception) -> None:
    client = _client(_honest_served(failure, 1))
    assert client.fetch() == DOC
    assert client.counters[FetchEvent.AUTHORITY_FAILED] <= 1  # 0 if it came last


@given(hostile=hostile_envelope(), position=st.integers(0, 2))
@settings(FUZZ, max_examples=150)
def test_one_hostile_authority_among_honest_ones_cannot_stop_the_fetch(
    hostile: bytes, position: int
) -> None:
    client = _client(_honest_served(hostile, position))
    assert client.fetch() == DOC


def test_without_the_threshold_the_fetch_fails_and_says_why() -> None:
    served: dict[str, bytes | Exception] = {
        "http://a0": canonical_json({"document": "\u00e9", "signatures": []}),
        "http://a1": _envelope(DOC_BYTES, [AUTH_SEEDS[1]]),
        "http://a2": b"[" * 10_000 + b"]" * 10_000,
    }
    with pytest.raises(DirectoryError) as info:
        _client(served).fetch()
    message = str(info.value)
    assert "http://a0: envelope.document: expected a string of ASCII JSON" in message
    assert "http://a1: document has 1 valid authority signatures, 2 required" in message
    assert "http://a2: envelope: nested deeper than 8 levels" in message


# --------------------------------------------------------------------------------------
# Keys


@pytest.mark.parametrize("key", SMALL_ORDER_ALL, ids=lambda k: k.hex()[:8] + k.hex()[-2:])
def test_small_order_x25519_keys_are_refused_as_libsodium_does(key: bytes) -> None:
    assert x25519_key_problem(key) is not None
    with pytest.raises(NaclRuntimeError):
        crypto_scalarmult(generate_private_key(), key)


def test_non_canonical_x25519_keys_are_refused() -> None:
    key = _x25519()
    assert x25519_key_problem(key) is None
    high = key[:31] + bytes([key[31] | 0x80])
    assert "bit 255" in str(x25519_key_problem(high))
    for u in range(P, 2**255):
        assert x25519_key_problem(u.to_bytes(32, "little")) is not None
    for length in (0, 31, 33):
        assert "expected 32 bytes" in str(x25519_key_problem(bytes(length)))


@given(st.binary(min_size=32, max_size=32))
@settings(FUZZ, max_examples=500)
def test_x25519_check_agrees_with_libsodium(key: bytes) -> None:
    canonical = int.from_bytes(key, "little") < P
    try:
        crypto_scalarmult(generate_private_key(), key)
        sodium_ok = True
    except NaclRuntimeError:
        sodium_ok = False
    if canonical:
        assert (x25519_key_problem(key) is None) == sodium_ok
    else:
        assert x25519_key_problem(key) is not None


def test_small_order_points_of_the_twist_and_curve_are_all_found() -> None:
    # Among u in 0..p-1, exactly the five canonical blocklist values have small order;
    # check a neighbourhood of each and a random sample with libsodium as the oracle.
    rng = random.Random(7)
    values = {int.from_bytes(k, "little") for k in SMALL_ORDER if int.from_bytes(k, "little") < P}
    probes = {v + d for v in values for d in (-2, -1, 1, 2) if 0 <= v + d < P}
    probes |= {rng.randrange(P) for _ in range(200)}
    for u in values:
        assert x25519_key_problem(u.to_bytes(32, "little")) == "X25519 key is a low-order point"
    for u in probes - values:
        assert x25519_key_problem(u.to_bytes(32, "little")) is None, hex(u)
        crypto_scalarmult(generate_private_key(), u.to_bytes(32, "little"))  # sodium agrees


def _ed25519_not_on_curve() -> bytes:
    d = -121665 * pow(121666, P - 2, P) % P
    for y in range(2, 1000):
        x2 = (y * y - 1) * pow(d * y * y + 1, P - 2, P) % P
        if pow(x2, (P - 1) // 2, P) == P - 1:  # not a square: no x for this y
            return y.to_bytes(32, "little")
    raise AssertionError("no y found")


def _ed25519_mixed_order(key: bytes) -> bytes:
    # P + (0, -1) = (-x, -y): on the curve, order 2 * L, outside the prime-order subgroup.
    y = int.from_bytes(key, "little") & ((1 << 255) - 1)
    sign = key[31] >> 7
    return ((P - y) | ((1 - sign) << 255)).to_bytes(32, "little")


@pytest.mark.parametrize(
    "make",
    [
        lambda k: bytes(32),  # y = 0: order 4
        lambda k: (1).to_bytes(32, "little"),  # the neutral element
        lambda k: (P - 1).to_bytes(32, "little"),  # order 2
        lambda k: P.to_bytes(32, "little"),  # y = p: not canonical
        lambda k: _ed25519_not_on_curve(),
        _ed25519_mixed_order,
    ],
    ids=["zero", "identity", "order-2", "y=p", "not-on-curve", "mixed-order"],
)
def test_invalid_ed25519_identity_keys_are_refused(make: Callable[[bytes], bytes]) -> None:
    good = bytes(SigningKey(os.urandom(32)).verify_key)
    assert ed25519_key_problem(good) is None
    bad = make(good)
    assert ed25519_key_problem(bad) is not None
    desc, _ = _node(9, NodeRole.MIX, 1)
    obj = desc.to_dict() | {"identity_key": bad.hex(), "node_id": node_id_for(bad).hex()}
    with pytest.raises(InvalidKeyError, match=r"^descriptor\.identity_key: "):
        NodeDescriptor.from_dict(obj)


def test_a_signed_document_with_an_all_zero_epoch_key_is_refused_by_the_client() -> None:
    bad = canonical_json(_with_key(DOC_OBJ, ["nodes", 3, "epoch_keys", str(EPOCH)], "00" * 32))
    with pytest.raises(InvalidKeyError) as info:
        verify_document(bad, [sign_document(bad, s) for s in AUTH_SEEDS], AUTH_KEYS, 2)
    assert str(info.value) == (
        f"document.nodes[3].epoch_keys.{EPOCH}: X25519 key is a low-order point"
    )
    # Served by a threshold of authorities, it is refused and the last good document used.
    served: dict[str, bytes | Exception] = {
        "http://a0": _envelope(bad, AUTH_SEEDS),
        "http://a1": _envelope(DOC_BYTES, AUTH_SEEDS[1:]),
        "http://a2": _envelope(DOC_BYTES, AUTH_SEEDS[1:]),
    }
    assert _client(served).fetch() == DOC


# --------------------------------------------------------------------------------------
# The authority: uploads and peers


def _authority(tmp: Path, fetch: Callable[[str], bytes]) -> Authority:
    """An authority whose peer GETs return ``fetch(url)``."""
    seed = AUTH_SEEDS[0]
    cfg = DirAuthConfig(
        AuthoritySection("auth0", "127.0.0.1", 31999, tmp, 0.2, "voice"),
        DirectorySection(
            authorities=("http://127.0.0.1:31999", "http://127.0.0.1:31998"),
            authority_keys=tuple(AUTH_KEYS),
            threshold=2,
            epoch_length_s=EPOCH_S,
            genesis_s=0,
            mix_layers=3,
        ),
    )
    return Authority(cfg, seed, clock=lambda: NOW, fetch=lambda url, *_: fetch(url))


def _body(desc: NodeDescriptor, seed: bytes) -> bytes:
    return _signed_descriptor_body(json.loads(desc.to_bytes()), seed)


def test_authority_refuses_a_descriptor_with_a_low_order_epoch_key(tmp_path: Path) -> None:
    auth = _authority(tmp_path, lambda url: b"[]")
    desc, seed = NETWORK[2]
    for key in SMALL_ORDER_ALL:
        obj = _with_key(json.loads(desc.to_bytes()), ["epoch_keys", str(EPOCH)], key.hex())
        with pytest.raises(InvalidKeyError) as info:
            auth.submit(_signed_descriptor_body(obj, seed))
        assert str(info.value).startswith(f"descriptor.epoch_keys.{EPOCH}: ")
    assert auth.counters[AuthorityEvent.DESCRIPTOR_REFUSED] == len(SMALL_ORDER_ALL)
    assert auth.submit(_body(desc, seed)) == desc
    assert auth.counters[AuthorityEvent.DESCRIPTOR_ACCEPTED] == 1


def test_deeply_nested_peer_replies_do_not_stop_the_round(tmp_path: Path) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    auth = _authority(tmp_path, lambda url: nested)
    for desc, seed in NETWORK:
        auth.submit(_body(desc, seed))
    auth.sync_round()  # raised RecursionError before: no document was signed
    env = auth.signed(EPOCH)
    assert env is not None and env.document == DOC_BYTES
    assert auth.signed(EPOCH + 1) is not None
    # One descriptor list, one withdrawal list, two document signature replies and the
    # network bundle's signature per round, all refused and counted.
    assert auth.counters[AuthorityEvent.PEER_REPLY_REFUSED] == 5


def test_nested_or_non_ascii_upload_is_a_typed_refusal(tmp_path: Path) -> None:
    auth = _authority(tmp_path, lambda url: b"[]")
    for body, problem in [
        (b"[" * 50_000, "descriptor body: "),
        (b'{"descriptor":"\\u00e9","signature":"00"}', "descriptor body.descriptor: "),
        (b'{"descriptor":"{}","signature":"zz"}', "descriptor body.signature: "),
    ]:
        with pytest.raises(DirectoryFieldError, match=f"^{problem}"):
            auth.submit(body)
    assert auth.counters[AuthorityEvent.DESCRIPTOR_REFUSED] == 3


def test_hostile_peer_replies_never_stop_the_round() -> None:
    """Whatever one peer serves, the honest authority builds and signs its document."""
    good_list = canonical_json(
        [json.loads(_body(d, s)) for d, s in NETWORK[3:]]  # valid entries from the peer
    )
    with tempfile.TemporaryDirectory() as tmp:
        replies: dict[str, bytes] = {}
        auth = _authority(Path(tmp), lambda url: replies["sig" if "signature" in url else "list"])
        for desc, seed in NETWORK[:3]:
            auth.submit(_body(desc, seed))

        @given(
            listing=st.one_of(_hostile(json.loads(good_list), good_list), st.just(good_list)),
            reply=_hostile(json.loads(REPLY), REPLY),
        )
        @settings(FUZZ, max_examples=60)
        def run(listing: bytes, reply: bytes) -> None:
            replies.update(list=listing, sig=reply)
            auth.sync_round()
            env = auth.signed(EPOCH)
            assert env is not None
            doc = env.verify([auth.public_key], 1, geometry=VOICE)
            assert {d.node_id for d, _ in NETWORK[:3]} <= set(doc.by_id)

        run()


def test_an_upload_with_a_low_order_key_is_refused_over_http_and_counted(
    tmp_path: Path,
) -> None:
    """The real server: the node sees the reason, the operator sees the count."""
    auth = _authority(tmp_path, lambda url: b"[]")
    running = RunningAuthority(auth, "127.0.0.1", 0, 60.0).start()
    try:
        url = f"http://127.0.0.1:{running.port}"
        desc, seed = NETWORK[2]
        obj = _with_key(json.loads(desc.to_bytes()), ["epoch_keys", str(EPOCH)], "00" * 32)
        req = urllib.request.Request(
            f"{url}/v1/descriptor", data=_signed_descriptor_body(obj, seed), method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 400
        assert json.loads(info.value.read()) == {
            "error": f"descriptor.epoch_keys.{EPOCH}: X25519 key is a low-order point"
        }
        # What the node's publisher reports, in the authority's words.
        report = publish_report([url], _signed_descriptor_body(obj, seed))
        assert report.accepted == ()
        assert report.refused == (
            f"{url}: HTTP 400 descriptor.epoch_keys.{EPOCH}: X25519 key is a low-order point",
        )
        assert publish_report([url], _body(desc, seed)).accepted == (url,)
        with urllib.request.urlopen(f"{url}/v1/health", timeout=5) as resp:
            health = json.loads(resp.read())
        assert health["counters"][AuthorityEvent.DESCRIPTOR_REFUSED] == 2
        assert health["counters"][AuthorityEvent.DESCRIPTOR_ACCEPTED] == 1
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (OSError("refused"), "OSError: refused"),
        (b"[" * 5000 + b"]" * 5000, "publish reply: nested deeper than 8 levels"),
        (b'{"ok":1}', "publish reply: no 'accepted' field"),
    ],
)
def test_publishing_says_why_each_authority_did_not_accept(
    reply: bytes | Exception, reason: str
) -> None:
    def post(url: str, body: bytes, timeout_s: float) -> bytes:
        if url.startswith("http://good"):
            return b'{"accepted":"00"}'
        if isinstance(reply, Exception):
            raise reply
        return reply

    report = publish_report(["http://bad", "http://good"], b"{}", post=post)
    assert report.accepted == ("http://good",)
    assert report.refused == (f"http://bad: {reason}",)


async def test_the_node_says_why_no_authority_took_its_descriptor() -> None:
    """The daemon's publish names each authority and its reason, not a bare refusal."""
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    directory = object.__new__(AuthorityDirectory)
    directory.urls = [f"http://127.0.0.1:{port}"]
    with pytest.raises(DirectoryError, match=rf"127\.0\.0\.1:{port}: .*Error"):
        await directory.publish(b"{}", bytes(64))
