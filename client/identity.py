"""A caller's long-term identity and the safety number two callers compare.

    >>> me, you = Identity.generate(), Identity.generate()
    >>> len(me.public.to_bytes()), IdentityPublic.from_bytes(me.public.to_bytes()) == me.public
    (64, True)
    >>> me.public.verify(b"hello", me.sign(b"hello"))
    True
    >>> me.dh(you.public) == you.dh(me.public)
    True
    >>> safety_number(me.public, you.public) == safety_number(you.public, me.public)
    True
    >>> len(format_safety_number(safety_number(me.public, you.public)).split())
    12

An identity is two independent keys: an Ed25519 signing key (its 32-byte seed) that signs
the contact card and what the identity vouches for, and an X25519 key (32-byte private
scalar) for Diffie-Hellman with a contact's identity. Its public half,
:class:`IdentityPublic`, is 64 bytes on the wire: the Ed25519 public key, then the X25519
public key. Both are made from ``os.urandom`` (injected ``rng``).

The safety number follows Signal's numeric fingerprint (libsignal
``NumericFingerprintGenerator``), with our own public key and identifier:

    h = SHA-512(version (2 bytes, big-endian) | key | identifier)
    5200 times: h = SHA-512(h | key)
    fingerprint = 6 groups: each 5 bytes of h (from byte 0), big-endian, mod 100000, 5 digits

where ``key`` and ``identifier`` are both the 64-byte :class:`IdentityPublic` (no phone
number: the key is its own stable identifier) and ``version`` is :data:`FINGERPRINT_VERSION`.
The safety number of two identities is their two 30-digit fingerprints, the smaller string
first: the same 60 digits on both phones, shown as 12 groups of 5. docs/calling.md,
"Identity, contacts and safety numbers", explains it for users; a known-answer test pins it.

Python cannot promise to wipe the private keys from memory; they are kept in this object
only and never printed (``repr`` hides them).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from nacl.bindings import crypto_scalarmult
from nacl.exceptions import BadSignatureError
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from overlay import PhantomError, Rng, ed25519_key_problem, x25519_key_problem

KEY_LEN = 32  # bytes of each private and public key
IDENTITY_PUBLIC_LEN = 2 * KEY_LEN  # bytes: Ed25519 public key | X25519 public key
IDENTITY_PRIVATE_LEN = 2 * KEY_LEN  # bytes: Ed25519 seed | X25519 private scalar
SIGNATURE_LEN = 64  # bytes of an Ed25519 signature
FINGERPRINT_VERSION = 1  # first two bytes hashed (Signal's version 0 hashes its 33-byte keys)
FINGERPRINT_ITERATIONS = 5200  # SHA-512 rounds, as Signal's
FINGERPRINT_DIGITS = 30  # digits of one identity's half of a safety number
SAFETY_NUMBER_DIGITS = 2 * FINGERPRINT_DIGITS  # 60, shown as 12 groups of 5


class IdentityError(PhantomError):
    """Malformed identity key bytes (the message names what is wrong)."""


@dataclass(frozen=True, slots=True)
class IdentityPublic:
    """The public half of an identity: Ed25519 ``sign_public`` and X25519 ``dh_public``
    (32 bytes each). IdentityError for a wrong length or a key that is no usable point."""

    sign_public: bytes
    dh_public: bytes

    def __post_init__(self) -> None:
        for name, key, problem in (
            ("signing key", self.sign_public, ed25519_key_problem),
            ("DH key", self.dh_public, x25519_key_problem),
        ):
            if not isinstance(key, bytes) or len(key) != KEY_LEN:
                raise IdentityError(f"identity {name}: expected {KEY_LEN} bytes")
            why = problem(key)
            if why is not None:
                raise IdentityError(f"identity {name}: {why}")

    def to_bytes(self) -> bytes:
        """The 64 wire bytes: ``sign_public | dh_public``."""
        return self.sign_public + self.dh_public

    @classmethod
    def from_bytes(cls, data: bytes) -> IdentityPublic:
        """Parse 64 bytes; IdentityError naming the length or the key that is wrong."""
        if len(data) != IDENTITY_PUBLIC_LEN:
            raise IdentityError(
                f"identity public key: expected {IDENTITY_PUBLIC_LEN} bytes, got {len(data)}"
            )
        return cls(bytes(data[:KEY_LEN]), bytes(data[KEY_LEN:]))

    @property
    def fingerprint(self) -> str:
        """This identity's 30-digit half of every safety number it is part of."""
        return fingerprint_digits(self)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """True if ``signature`` (64 bytes) is this identity's Ed25519 signature of
        ``message``; False for any other signature or length."""
        try:
            VerifyKey(self.sign_public).verify(message, signature)
        except (BadSignatureError, ValueError, TypeError):
            return False
        return True


class Identity:
    """A long-term identity's private keys: the Ed25519 seed and the X25519 private key
    (32 bytes each). IdentityError for wrong lengths."""

    __slots__ = ("_signing", "_dh", "public")

    def __init__(self, sign_seed: bytes, dh_private: bytes) -> None:
        if len(sign_seed) != KEY_LEN or len(dh_private) != KEY_LEN:
            raise IdentityError(f"identity private keys are {KEY_LEN} bytes each")
        self._signing = SigningKey(sign_seed)
        self._dh = PrivateKey(dh_private)
        self.public = IdentityPublic(bytes(self._signing.verify_key), bytes(self._dh.public_key))

    @classmethod
    def generate(cls, rng: Rng = os.urandom) -> Identity:
        """A fresh identity: two independent 32-byte draws of ``rng``."""
        return cls(rng(KEY_LEN), rng(KEY_LEN))

    def to_bytes(self) -> bytes:
        """The 64 secret bytes ``sign_seed | dh_private`` (store them encrypted)."""
        return bytes(self._signing) + bytes(self._dh)

    @classmethod
    def from_bytes(cls, data: bytes) -> Identity:
        """The identity of :meth:`to_bytes`'s 64 bytes; IdentityError for another length."""
        if len(data) != IDENTITY_PRIVATE_LEN:
            raise IdentityError(f"identity private keys: expected {IDENTITY_PRIVATE_LEN} bytes")
        return cls(bytes(data[:KEY_LEN]), bytes(data[KEY_LEN:]))

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._signing.sign(message).signature

    def dh(self, peer: IdentityPublic) -> bytes:
        """X25519 of this identity's DH key with ``peer.dh_public``: 32 shared bytes
        (never all zero: the peer key was checked when it was parsed)."""
        return crypto_scalarmult(bytes(self._dh), peer.dh_public)

    def __repr__(self) -> str:
        return f"Identity(<secret>, public={self.public.to_bytes().hex()[:16]}…)"


def fingerprint_digits(identity: IdentityPublic) -> str:
    """The 30 digits of ``identity``'s half of a safety number (module docstring)."""
    key = identity.to_bytes()
    h = hashlib.sha512(FINGERPRINT_VERSION.to_bytes(2, "big") + key + key).digest()
    for _ in range(FINGERPRINT_ITERATIONS):
        h = hashlib.sha512(h + key).digest()
    return "".join(
        f"{int.from_bytes(h[i : i + 5], 'big') % 100_000:05d}" for i in range(0, 30, 5)
    )


def safety_number(a: IdentityPublic, b: IdentityPublic) -> str:
    """The 60-digit safety number of two identities, the same whichever side asks:
    their two fingerprints (:func:`fingerprint_digits`), the smaller first."""
    return "".join(sorted((fingerprint_digits(a), fingerprint_digits(b))))


def format_safety_number(digits: str) -> str:
    """``digits`` in groups of 5 separated by spaces (12 groups for a safety number)."""
    return " ".join(digits[i : i + 5] for i in range(0, len(digits), 5))
