"""The contact book: cards kept under names, their verification, their safety numbers.

    >>> from client.card import Card
    >>> from client.identity import Identity
    >>> me, ada = Identity.generate(), Identity.generate()
    >>> card = Card.make(ada, gateway_id=bytes(16), mailbox_id=bytes(16),
    ...                  network_fingerprint=bytes(32))
    >>> book = ContactBook()
    >>> book.add("ada", card.to_bytes(ada))
    <AddOutcome.NEW: 'new'>
    >>> book.verify("ada").verified, book.get("ada").state
    (True, <TrustState.VERIFIED: 'verified'>)

A contact is a name, the card it was added with, whether the user has compared the safety
number (``verified``), whether its identity key changed since it was last added
(``key_changed``: seed 6.1 wants this shown before any call), and an optional number of
days after which its calls leave the call log (``auto_delete_days``). The book is sans-IO:
the profile (``client.profile``) stores it encrypted.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from overlay import PhantomError

from .card import Card, CardError

MAX_CONTACT_NAME = 64  # characters of a contact's local name
MAX_AUTO_DELETE_DAYS = 36_500  # about 100 years


class ContactError(PhantomError):
    """A contact name that is not there, or not usable; the message says which."""


class TrustState(StrEnum):
    """What the user knows about a contact's identity key, shown wherever it appears."""

    UNVERIFIED = "unverified"  # added, safety number not compared yet
    VERIFIED = "verified"  # the user compared the safety number and confirmed it
    CHANGED = "changed"  # re-added with another identity key: compare again


class AddOutcome(StrEnum):
    """What :meth:`ContactBook.add` did."""

    NEW = "new"
    UPDATED = "updated"  # same identity key, new card (gateway or mailbox moved): trust kept
    KEY_CHANGED = "key-changed"  # another identity key: verification cleared


def contact_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a contact, or None: 1..64 printable characters, no
    leading or trailing space."""
    if not 0 < len(name) <= MAX_CONTACT_NAME:
        return f"a contact name is 1..{MAX_CONTACT_NAME} characters"
    if not name.isprintable() or name != name.strip():
        return "a contact name is printable, without leading or trailing spaces"
    return None


def _check_days(days: int | None) -> None:
    if days is not None and not 1 <= days <= MAX_AUTO_DELETE_DAYS:
        raise ContactError(f"auto-delete is 1..{MAX_AUTO_DELETE_DAYS} days")


@dataclass(frozen=True, slots=True)
class Contact:
    """One contact: its ``card`` and what the user decided about it."""

    name: str
    card: Card
    card_bytes: bytes  # the signed card as received (kept to re-check it on load)
    verified: bool = False
    key_changed: bool = False
    auto_delete_days: int | None = None  # days a call stays in the log; None: kept

    @property
    def state(self) -> TrustState:
        """The trust state shown with the contact."""
        if self.key_changed:
            return TrustState.CHANGED
        return TrustState.VERIFIED if self.verified else TrustState.UNVERIFIED

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (the card as base64 of its signed bytes)."""
        return {
            "name": self.name,
            "card": base64.b64encode(self.card_bytes).decode(),
            "verified": self.verified,
            "key_changed": self.key_changed,
            "auto_delete_days": self.auto_delete_days,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Contact:
        """Parse :meth:`to_dict`'s form, re-verifying the card; ContactError naming the
        field for anything malformed (the store was written by us: this is a bug or
        tampering, never a user error)."""
        try:
            name, card_b64 = d["name"], d["card"]
            verified, changed, days = d["verified"], d["key_changed"], d["auto_delete_days"]
            if not isinstance(name, str) or not isinstance(card_b64, str):
                raise TypeError("name and card are strings")
            if not isinstance(verified, bool) or not isinstance(changed, bool):
                raise TypeError("verified and key_changed are booleans")
            if days is not None and not isinstance(days, int):
                raise TypeError("auto_delete_days is an integer or null")
            raw = base64.b64decode(card_b64, validate=True)
            return cls(name, Card.from_bytes(raw), raw, verified, changed, days)
        except (KeyError, TypeError, ValueError, CardError) as exc:
            raise ContactError(f"contact store: malformed contact: {exc}") from None


class ContactBook:
    """Contacts by name, in the order added. ContactError for an unknown name."""

    def __init__(self, contacts: Mapping[str, Contact] | None = None) -> None:
        self._contacts: dict[str, Contact] = dict(contacts or {})

    def __iter__(self) -> Iterator[Contact]:
        return iter(self._contacts.values())

    def __len__(self) -> int:
        return len(self._contacts)

    def get(self, name: str) -> Contact:
        """The contact called ``name``; ContactError if there is none."""
        try:
            return self._contacts[name]
        except KeyError:
            raise ContactError(f"no contact called {name!r} (see: contact list)") from None

    def add(
        self,
        name: str,
        card_bytes: bytes,
        *,
        auto_delete_days: int | None = None,
    ) -> AddOutcome:
        """Add the signed card ``card_bytes`` as ``name``, or replace that contact's card.

        The same identity key keeps the verification (the caller moved gateway); another
        one clears it and marks the contact CHANGED until verified again. Another
        contact with the same identity key is refused (one person, one name).
        CardError if the card does not verify; ContactError for a bad name or
        ``auto_delete_days`` outside 1..36500.
        """
        card = Card.from_bytes(card_bytes)
        problem = contact_name_problem(name)
        if problem is not None:
            raise ContactError(problem)
        _check_days(auto_delete_days)
        for other in self._contacts.values():
            if other.name != name and other.card.identity == card.identity:
                raise ContactError(f"this card's identity is already the contact {other.name!r}")
        old = self._contacts.get(name)
        days = auto_delete_days
        if days is None and old is not None:
            days = old.auto_delete_days
        new = Contact(name, card, card_bytes, auto_delete_days=days)
        if old is None:
            outcome = AddOutcome.NEW
        elif old.card.identity == card.identity:
            new = replace(new, verified=old.verified, key_changed=old.key_changed)
            outcome = AddOutcome.UPDATED
        else:
            new = replace(new, key_changed=True)
            outcome = AddOutcome.KEY_CHANGED
        self._contacts[name] = new
        return outcome

    def set_auto_delete(self, name: str, days: int | None) -> Contact:
        """Delete ``name``'s calls from the log after ``days`` days from now on (None: keep
        them); ContactError for an unknown name or ``days`` outside 1..36500."""
        _check_days(days)
        contact = replace(self.get(name), auto_delete_days=days)
        self._contacts[name] = contact
        return contact

    def remove(self, name: str) -> Contact:
        """Remove and return the contact ``name``; ContactError if there is none."""
        contact = self.get(name)
        del self._contacts[name]
        return contact

    def verify(self, name: str) -> Contact:
        """Mark ``name`` verified (the user compared the safety number): clears CHANGED."""
        contact = replace(self.get(name), verified=True, key_changed=False)
        self._contacts[name] = contact
        return contact

    def retention_days(self) -> dict[str, int]:
        """``{name: days}`` of the contacts whose calls are auto-deleted."""
        return {c.name: c.auto_delete_days for c in self if c.auto_delete_days is not None}

    def to_list(self) -> list[dict[str, object]]:
        """JSON-ready form of every contact, in order."""
        return [c.to_dict() for c in self]

    @classmethod
    def from_list(cls, items: object) -> ContactBook:
        """Parse :meth:`to_list`'s form; ContactError for anything malformed."""
        if not isinstance(items, list):
            raise ContactError("contact store: expected a list of contacts")
        book = cls()
        for item in items:
            if not isinstance(item, dict):
                raise ContactError("contact store: expected an object per contact")
            contact = Contact.from_dict(item)
            book._contacts[contact.name] = contact
        return book
