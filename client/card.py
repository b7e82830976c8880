"""The contact card: one line of text a caller pastes into the E2EE chat.

    >>> from client.identity import Identity
    >>> me = Identity(bytes(range(32)), bytes(range(32, 64)))
    >>> text = Card.make(me, gateway_id=bytes(16), mailbox_id=bytes(16),
    ...                  network_fingerprint=bytes(32), name="Ada").to_text(me)
    >>> text.startswith(CARD_PREFIX)
    True
    >>> card = Card.from_text(text)
    >>> card.identity == me.public, card.name
    (True, 'Ada')
    >>> Card.from_text(text[:-3] + "AAA")
    Traceback (most recent call last):
    ...
    client.card.CardError: card: the signature does not verify (changed, or not its identity's)

The text is ``phantom-card:1:`` and the RFC 4648 base32 (upper case, no padding) of:

    version (1 byte, 1) | identity public key (64: Ed25519 | X25519) | gateway id (16)
    | mailbox id (16) | network fingerprint (32) | name length (1) | name (UTF-8, 0..64)
    | Ed25519 signature (64) by the identity's signing key over
      "phantom-card-v1" 0x00 | every byte before the signature

so whoever holds the card can reach the caller (gateway and mailbox) on that network, and
check, with the safety number, that the identity is the one they meant. A card that is
malformed, of another version, or changed in any byte is refused with :class:`CardError`.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from overlay import MAILBOX_ID_LEN, NODE_ID_LEN, PhantomError

from .identity import IDENTITY_PUBLIC_LEN, SIGNATURE_LEN, Identity, IdentityError, IdentityPublic

CARD_VERSION = 1
CARD_PREFIX = f"phantom-card:{CARD_VERSION}:"
NETWORK_FINGERPRINT_LEN = 32  # bytes (overlay.NetworkBundle.fingerprint)
MAX_NAME_BYTES = 64  # UTF-8 bytes of the display-name suggestion
_SIG_CONTEXT = b"phantom-card-v1\x00"
_FIXED = 1 + IDENTITY_PUBLIC_LEN + NODE_ID_LEN + MAILBOX_ID_LEN + NETWORK_FINGERPRINT_LEN + 1
MIN_CARD_BYTES = _FIXED + SIGNATURE_LEN
MAX_CARD_BYTES = MIN_CARD_BYTES + MAX_NAME_BYTES
MAX_CARD_TEXT = len(CARD_PREFIX) + (MAX_CARD_BYTES * 8 + 4) // 5  # characters


class CardError(PhantomError):
    """A card that cannot be used; the message (``card: ...``) names what is wrong."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"card: {problem}")


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a card's display name, or None: at most 64 UTF-8 bytes,
    printable, no leading or trailing space."""
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"the name is longer than {MAX_NAME_BYTES} UTF-8 bytes"
    if not name.isprintable() or name != name.strip():
        return "the name must be printable, without leading or trailing spaces"
    return None


@dataclass(frozen=True, slots=True)
class Card:
    """A parsed card: who (``identity``), where (``gateway_id`` 16 B, ``mailbox_id`` 16 B),
    on which network (``network_fingerprint`` 32 B), and the suggested display ``name``."""

    identity: IdentityPublic
    gateway_id: bytes
    mailbox_id: bytes
    network_fingerprint: bytes
    name: str = ""

    def __post_init__(self) -> None:
        for what, value, size in (
            ("gateway id", self.gateway_id, NODE_ID_LEN),
            ("mailbox id", self.mailbox_id, MAILBOX_ID_LEN),
            ("network fingerprint", self.network_fingerprint, NETWORK_FINGERPRINT_LEN),
        ):
            if len(value) != size:
                raise CardError(f"the {what} is {len(value)} bytes, expected {size}")
        problem = name_problem(self.name)
        if problem is not None:
            raise CardError(problem)

    @classmethod
    def make(
        cls,
        identity: Identity,
        *,
        gateway_id: bytes,
        mailbox_id: bytes,
        network_fingerprint: bytes,
        name: str = "",
    ) -> Card:
        """The card of ``identity`` (CardError for a field of the wrong size or name)."""
        return cls(identity.public, gateway_id, mailbox_id, network_fingerprint, name)

    def _body(self) -> bytes:
        name = self.name.encode()
        return (
            bytes([CARD_VERSION])
            + self.identity.to_bytes()
            + self.gateway_id
            + self.mailbox_id
            + self.network_fingerprint
            + bytes([len(name)])
            + name
        )

    def to_bytes(self, identity: Identity) -> bytes:
        """The signed card bytes; CardError if ``identity`` is not the card's own (a card
        is signed by the identity it names)."""
        if identity.public != self.identity:
            raise CardError("it can only be signed by the identity it names")
        body = self._body()
        return body + identity.sign(_SIG_CONTEXT + body)

    def to_text(self, identity: Identity) -> str:
        """``phantom-card:1:`` + base32 of :meth:`to_bytes` (upper case, no padding)."""
        return CARD_PREFIX + base64.b32encode(self.to_bytes(identity)).decode().rstrip("=")

    @classmethod
    def from_bytes(cls, data: bytes) -> Card:
        """Parse and verify signed card bytes; CardError naming what is wrong."""
        if not data:
            raise CardError("it is empty")
        if data[0] != CARD_VERSION:
            raise CardError(f"version {data[0]} is not one this client reads ({CARD_VERSION})")
        if not MIN_CARD_BYTES <= len(data) <= MAX_CARD_BYTES:
            raise CardError(
                f"{len(data)} bytes, expected {MIN_CARD_BYTES}..{MAX_CARD_BYTES} (cut or padded?)"
            )
        name_len = data[_FIXED - 1]
        if len(data) != MIN_CARD_BYTES + name_len:
            raise CardError(
                f"{len(data)} bytes for a name of {name_len}, expected "
                f"{MIN_CARD_BYTES + name_len} (cut or padded?)"
            )
        body, signature = data[:-SIGNATURE_LEN], data[-SIGNATURE_LEN:]
        try:
            identity = IdentityPublic.from_bytes(body[1 : 1 + IDENTITY_PUBLIC_LEN])
        except IdentityError as exc:
            raise CardError(str(exc)) from None
        if not identity.verify(_SIG_CONTEXT + body, signature):
            raise CardError("the signature does not verify (changed, or not its identity's)")
        at = 1 + IDENTITY_PUBLIC_LEN
        gateway = body[at : at + NODE_ID_LEN]
        at += NODE_ID_LEN
        mailbox = body[at : at + MAILBOX_ID_LEN]
        at += MAILBOX_ID_LEN
        network = body[at : at + NETWORK_FINGERPRINT_LEN]
        try:
            name = body[_FIXED:].decode()
        except UnicodeDecodeError:
            raise CardError("the name is not UTF-8") from None
        return cls(identity, gateway, mailbox, network, name)

    @classmethod
    def from_text(cls, text: str) -> Card:
        """Parse a pasted card (surrounding whitespace is ignored); CardError naming the
        problem: the prefix, the base32, the length, the version, a key, the signature."""
        return cls.from_bytes(decode_card_text(text))


def decode_card_text(text: str) -> bytes:
    """The signed card bytes of a pasted card (not verified yet: :meth:`Card.from_bytes`).
    CardError for a wrong prefix, non-canonical base32 or an oversized text."""
    text = text.strip()
    if not text.startswith(CARD_PREFIX):
        if text.startswith("phantom-card:"):
            raise CardError(f"version {text.split(':')[1]!r} is not {CARD_VERSION}")
        raise CardError(f"expected text starting with {CARD_PREFIX!r}")
    encoded = text[len(CARD_PREFIX) :]
    if len(text) > MAX_CARD_TEXT:
        raise CardError(f"longer than {MAX_CARD_TEXT} characters")
    try:
        data = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
    except (binascii.Error, ValueError):
        raise CardError("not base32 (A-Z, 2-7) after the prefix: cut or mistyped?") from None
    if base64.b32encode(data).decode().rstrip("=") != encoded:
        raise CardError("not canonical base32 after the prefix: cut or mistyped?")
    return data
