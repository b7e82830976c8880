"""The caller's identity keys and the safety number (a known answer, the construction)."""

from __future__ import annotations

import hashlib

import pytest

from client.identity import (
    FINGERPRINT_ITERATIONS,
    Identity,
    IdentityError,
    IdentityPublic,
    format_safety_number,
    safety_number,
)

A = Identity(bytes(range(32)), bytes(range(32, 64)))
B = Identity(bytes(range(64, 96)), bytes(range(96, 128)))
A_PUBLIC = (
    "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254"
)
# Known answer: docs/calling.md, "Identity, contacts and safety numbers".
SAFETY_AB = "44727 85139 07012 17581 59947 84988 60965 70194 24506 30004 65667 97902"


def test_the_safety_number_of_two_fixed_identities_is_pinned() -> None:
    assert A.public.to_bytes().hex() == A_PUBLIC
    assert format_safety_number(safety_number(A.public, B.public)) == SAFETY_AB
    assert format_safety_number(safety_number(B.public, A.public)) == SAFETY_AB
    assert A.public.fingerprint == "447278513907012175815994784988"


def _spec_fingerprint(key: bytes) -> str:
    """The construction as docs/calling.md writes it, step by step."""
    h = hashlib.sha512(b"\x00\x01" + key + key).digest()
    for _ in range(5200):
        h = hashlib.sha512(h + key).digest()
    return "".join(f"{int.from_bytes(h[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def test_the_safety_number_is_the_documented_construction() -> None:
    assert FINGERPRINT_ITERATIONS == 5200
    for _ in range(3):
        x, y = Identity.generate().public, Identity.generate().public
        halves = sorted([_spec_fingerprint(x.to_bytes()), _spec_fingerprint(y.to_bytes())])
        assert safety_number(x, y) == "".join(halves) == safety_number(y, x)
        assert len(safety_number(x, y)) == 60


def test_another_key_gives_another_safety_number() -> None:
    c = Identity(bytes(range(32)), bytes(range(33, 65)))  # A's signing key, another DH key
    assert safety_number(A.public, B.public) != safety_number(c.public, B.public)


def test_identity_round_trips_and_signs() -> None:
    me = Identity.generate()
    assert Identity.from_bytes(me.to_bytes()).public == me.public
    assert IdentityPublic.from_bytes(me.public.to_bytes()) == me.public
    sig = me.sign(b"m")
    assert me.public.verify(b"m", sig) and not me.public.verify(b"n", sig)
    assert not B.public.verify(b"m", sig) and not me.public.verify(b"m", sig[:10])
    assert me.dh(B.public) == B.dh(me.public) != me.dh(A.public)
    assert "secret" in repr(me) and me.to_bytes().hex() not in repr(me)


@pytest.mark.parametrize(
    "data, problem",
    [
        (bytes(63), "expected 64 bytes, got 63"),
        (A.public.sign_public + bytes(32), "DH key"),  # u = 0: a low-order point
        (bytes(32) + A.public.dh_public, "signing key"),
    ],
)
def test_a_malformed_public_identity_is_refused(data: bytes, problem: str) -> None:
    with pytest.raises(IdentityError, match=problem):
        IdentityPublic.from_bytes(data)
