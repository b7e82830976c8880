"""Contact cards and the contact book: round trips, tampering, key changes, the CLI."""

from __future__ import annotations

import base64
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from profile_support import PASSPHRASE, make_profile, network_file

from client import _commands as commands
from client.calllog import CallDirection, CallRecord, CallResult
from client.card import CARD_PREFIX, Card, CardError, decode_card_text
from client.cli import main
from client.contacts import AddOutcome, ContactBook, ContactError, TrustState
from client.identity import Identity, format_safety_number, safety_number
from client.profile import open_profile

ME = Identity(bytes(range(32)), bytes(range(32, 64)))
CARD = Card.make(ME, gateway_id=bytes(range(16)), mailbox_id=bytes(range(16, 32)),
                 network_fingerprint=bytes(range(32)), name="Ada Ł.")  # fmt: skip
TEXT = CARD.to_text(ME)
RAW = CARD.to_bytes(ME)


def test_a_card_round_trips() -> None:
    assert TEXT.startswith(CARD_PREFIX) and TEXT.isascii()
    assert Card.from_text(TEXT) == CARD == Card.from_bytes(RAW)
    assert Card.from_text(f"  {TEXT}\n") == CARD  # pasted with whitespace around
    assert decode_card_text(TEXT) == RAW
    nameless = Card.make(ME, gateway_id=bytes(16), mailbox_id=bytes(16),
                         network_fingerprint=bytes(32))  # fmt: skip
    assert Card.from_text(nameless.to_text(ME)).name == ""


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(RAW) - 1), st.integers(1, 255))
def test_any_byte_changed_in_a_card_is_refused(index: int, flip: int) -> None:
    changed = bytearray(RAW)
    changed[index] ^= flip
    with pytest.raises(CardError):
        Card.from_bytes(bytes(changed))
    text = CARD_PREFIX + base64.b32encode(bytes(changed)).decode().rstrip("=")
    with pytest.raises(CardError):
        Card.from_text(text)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(len(CARD_PREFIX), len(TEXT) - 1),
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567a=!"),
)
def test_any_character_changed_in_a_card_text_is_refused(index: int, char: str) -> None:
    if TEXT[index] == char:
        return
    with pytest.raises(CardError):
        Card.from_text(TEXT[:index] + char + TEXT[index + 1 :])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_are_a_card_error(data: bytes) -> None:
    with pytest.raises(CardError):
        Card.from_bytes(data)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("hello", "expected text starting with 'phantom-card:1:'"),
        ("phantom-card:2:AAAA", "version '2' is not 1"),
        (TEXT[:-10], "cut or"),  # cut short: not a whole number of bytes, or too short
        (TEXT + "A" * 400, "longer than"),
        (CARD_PREFIX + "!!!!", "not base32"),
        (CARD_PREFIX, "it is empty"),
        (CARD_PREFIX + base64.b32encode(b"\x02" + RAW[1:]).decode().rstrip("="), "version 2"),
        (CARD_PREFIX + base64.b32encode(RAW[:-1]).decode().rstrip("="), "bytes for a name"),
        (
            CARD_PREFIX + base64.b32encode(RAW[:1] + bytes(64) + RAW[65:]).decode().rstrip("="),
            "identity signing key",
        ),
        (TEXT.lower().replace("phantom-card:1:".lower(), CARD_PREFIX), "base32"),
    ],
)
def test_a_malformed_card_names_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(CardError, match=problem) as err:
        Card.from_text(text)
    assert str(err.value).startswith("card: ")


def test_a_card_is_signed_by_the_identity_it_names_only() -> None:
    with pytest.raises(CardError, match="signed by the identity it names"):
        CARD.to_text(Identity.generate())
    with pytest.raises(CardError, match="longer than 64"):
        Card.make(ME, gateway_id=bytes(16), mailbox_id=bytes(16),
                  network_fingerprint=bytes(32), name="x" * 65)  # fmt: skip


def _card(identity: Identity, gateway: int = 0) -> bytes:
    return Card.make(identity, gateway_id=bytes([gateway]) * 16, mailbox_id=bytes(16),
                     network_fingerprint=bytes(32)).to_bytes(identity)  # fmt: skip


def test_the_book_keeps_trust_for_a_moved_contact_and_clears_it_for_a_new_key() -> None:
    book = ContactBook()
    ada = Identity.generate()
    assert book.add("ada", _card(ada)) is AddOutcome.NEW
    assert book.get("ada").state is TrustState.UNVERIFIED
    book.verify("ada")
    assert book.add("ada", _card(ada, gateway=1)) is AddOutcome.UPDATED  # moved gateway
    assert book.get("ada").state is TrustState.VERIFIED
    assert book.add("ada", _card(Identity.generate())) is AddOutcome.KEY_CHANGED
    assert book.get("ada").state is TrustState.CHANGED and not book.get("ada").verified
    book.verify("ada")
    assert book.get("ada").state is TrustState.VERIFIED
    with pytest.raises(ContactError, match="already the contact 'ada'"):
        book.add("ada2", book.get("ada").card_bytes)
    with pytest.raises(ContactError, match="no contact called 'bob'"):
        book.remove("bob")
    with pytest.raises(ContactError, match="1..64"):
        book.add("", _card(Identity.generate()))
    assert ContactBook.from_list(book.to_list()).to_list() == book.to_list()


# -- the command line -------------------------------------------------------------------


@pytest.fixture
def two(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, Path, str]:
    """Two profiles on one network: (my dir, my card, Bob's dir, Bob's card)."""
    monkeypatch.setenv("PHANTOM_PASSPHRASE", PASSPHRASE.decode())
    net = network_file()
    me = make_profile(tmp_path / "me", net, name="Me")
    bob = make_profile(tmp_path / "bob", net, name="Bob")
    return (
        me.directory,
        me.card().to_text(me.identity),
        bob.directory,
        bob.card().to_text(bob.identity),
    )


def test_contact_add_list_verify_remove(
    two: tuple[Path, str, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    me, my_card, bob_dir, bob_card = two
    d = ["--dir", str(me)]
    assert main(["contact", "add", "bob", bob_card, *d]) == 0
    assert "added bob" in capsys.readouterr().out
    assert main(["contact", "list", *d]) == 0
    out = capsys.readouterr().out
    assert "bob (card name 'Bob'): unverified: safety number not compared yet" in out
    assert main(["contact", "verify", "bob", *d]) == 0
    out = capsys.readouterr().out
    want = format_safety_number(
        safety_number(Card.from_text(my_card).identity, Card.from_text(bob_card).identity)
    )
    assert " ".join(out.split()[4:16]) == want and "--confirm" in out
    assert main(["contact", "verify", "bob", "--confirm", *d]) == 0
    assert "bob is now verified" in capsys.readouterr().out
    assert main(["contact", "list", *d]) == 0
    assert "bob (card name 'Bob'): verified" in capsys.readouterr().out
    # Bob sees the same safety number for me.
    assert main(["contact", "add", "me", my_card, "--dir", str(bob_dir)]) == 0
    assert main(["contact", "verify", "me", "--dir", str(bob_dir)]) == 0
    assert want in " ".join(capsys.readouterr().out.split())
    assert main(["contact", "remove", "bob", *d]) == 0
    assert main(["contact", "verify", "bob", *d]) == 2
    assert "no contact called 'bob'" in capsys.readouterr().err


def test_a_changed_identity_key_warns_and_clears_verification(
    two: tuple[Path, str, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    me, _, bob_dir, bob_card = two
    d = ["--dir", str(me)]
    assert main(["contact", "add", "bob", bob_card, *d]) == 0
    assert main(["contact", "verify", "bob", "--confirm", *d]) == 0
    capsys.readouterr()
    # Bob's profile made again (a new device): another identity, same network.
    assert main(["card", "--dir", str(bob_dir)]) == 0
    again = make_profile(tmp_path / "bob2", (bob_dir / "network.json").read_bytes())
    assert main(["contact", "add", "bob", again.card().to_text(again.identity), *d]) == 0
    captured = capsys.readouterr()
    assert "WARNING: the safety number with bob has changed" in captured.err
    assert "SAFETY NUMBER CHANGED" in captured.out
    assert main(["contact", "list", *d]) == 0
    assert "bob: SAFETY NUMBER CHANGED: compare it again" in capsys.readouterr().out


def test_contact_add_refuses_tampered_foreign_and_own_cards(
    two: tuple[Path, str, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    me, my_card, _, bob_card = two
    d = ["--dir", str(me)]
    i = len(bob_card) // 2
    tampered = bob_card[:i] + ("A" if bob_card[i] != "A" else "B") + bob_card[i + 1 :]
    assert main(["contact", "add", "bob", tampered, *d]) == 2
    assert "phantom-call: error: card: " in capsys.readouterr().err
    assert main(["contact", "add", "me", my_card, *d]) == 2
    assert "it is your own card" in capsys.readouterr().err
    other = make_profile(tmp_path / "other", network_file())
    assert main(["contact", "add", "x", other.card().to_text(other.identity), *d]) == 2
    assert "card: it is for network" in capsys.readouterr().err
    assert main(["contact", "list", *d]) == 0
    assert "no contacts" in capsys.readouterr().out


def test_card_prints_the_line_and_a_qr_code(
    two: tuple[Path, str, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    me, my_card, _, _ = two
    assert main(["card", "--dir", str(me)]) == 0
    assert capsys.readouterr().out.strip() == my_card
    assert main(["card", "--qr", "--dir", str(me)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == my_card and len(out) > 20 and any("█" in line or "▀" in line for line in out)


def test_contact_without_a_verb_names_the_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["contact"])
    assert exit_.value.code == 2
    assert "required: {add,list,remove,verify,set}" in capsys.readouterr().err


def test_removing_an_auto_deleted_contact_deletes_its_calls_instead_of_keeping_them(
    two: tuple[Path, str, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    me, _, _, bob_card = two
    d = ["--dir", str(me)]
    ada = Identity.generate()
    net = Card.from_text(bob_card).network_fingerprint
    ada_card = Card.make(ada, gateway_id=bytes(16), mailbox_id=bytes(16),
                         network_fingerprint=net)  # fmt: skip
    assert main(["contact", "add", "bob", bob_card, "--auto-delete-days", "7", *d]) == 0
    assert main(["contact", "add", "ada", ada_card.to_text(ada), *d]) == 0
    profile = open_profile(me, lambda: PASSPHRASE)
    now = int(time.time())
    for name in ("bob", "bob", "ada"):
        profile.append_call(
            CallRecord(now - 60, 10, CallDirection.OUTGOING, CallResult.ANSWERED, name), now
        )
    capsys.readouterr()
    assert main(["contact", "remove", "bob", *d]) == 0
    assert "its 2 call(s) from the log" in capsys.readouterr().out
    assert main(["contact", "remove", "ada", *d]) == 0
    assert "its 1 call(s) stay in the log" in capsys.readouterr().out
    log = open_profile(me, lambda: PASSPHRASE).open_call_log(now)
    assert [r.contact for r in log.records()] == ["ada"]  # bob's no longer outlive the rule


def test_calls_of_an_unknown_contact_is_an_error_but_a_removed_ones_kept_calls_show(
    two: tuple[Path, str, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    me, _, _, bob_card = two
    d = ["--dir", str(me)]
    ada_card = _foreign_card(Card.from_text(bob_card).network_fingerprint)
    assert main(["contact", "add", "bob", bob_card, *d]) == 0
    assert main(["contact", "add", "ada", ada_card, *d]) == 0
    now = int(time.time())
    record = CallRecord(now - 60, 10, CallDirection.OUTGOING, CallResult.ANSWERED, "ada")
    open_profile(me, lambda: PASSPHRASE).append_call(record, now)
    assert main(["contact", "remove", "ada", *d]) == 0
    capsys.readouterr()
    assert main(["calls", "--contact", "bobb", *d]) == 2  # was: "no calls", exit 0
    assert "no contact called 'bobb'" in capsys.readouterr().err
    assert main(["calls", "--contact", "bob", *d]) == 0
    assert capsys.readouterr().out.strip() == "no calls with bob in the log"
    assert main(["calls", "--contact", "ada", *d]) == 0  # removed; its calls stayed
    assert "outgoing  answered" in capsys.readouterr().out


def test_contact_set_changes_and_unsets_the_auto_delete(
    two: tuple[Path, str, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    me, _, _, bob_card = two
    d = ["--dir", str(me)]
    assert main(["contact", "add", "bob", bob_card, "--auto-delete-days", "7", *d]) == 0
    assert "calls auto-deleted after 7 d" in capsys.readouterr().out
    now = int(time.time())
    old = CallRecord(now - 3 * 86400, 10, CallDirection.OUTGOING, CallResult.ANSWERED, "bob")
    open_profile(me, lambda: PASSPHRASE).append_call(old, now)
    for off in ("off", "0", "OFF"):
        assert main(["contact", "set", "bob", "--auto-delete-days", off, *d]) == 0
        assert capsys.readouterr().out.strip().endswith("; calls kept")
        book = open_profile(me, lambda: PASSPHRASE).load_contacts()
        assert book.get("bob").auto_delete_days is None
    # A card added again keeps the setting (add without the option changes nothing).
    assert main(["contact", "add", "bob", bob_card, *d]) == 0
    assert "calls kept" in capsys.readouterr().out
    assert main(["contact", "set", "bob", "--auto-delete-days", "2", *d]) == 0
    assert "calls auto-deleted after 2 d" in capsys.readouterr().out
    log = open_profile(me, lambda: PASSPHRASE).open_call_log(now)
    assert log.records("bob") == []  # the 3-day-old call went with the new limit
    for bad, why in (("-1", "'off' or a number of days in 1..36500"), ("36501", "36500"),
                     ("never", "'off' or a number of days")):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(["contact", "set", "bob", "--auto-delete-days", bad, *d])
        assert exit_.value.code == 2 and why in capsys.readouterr().err
    assert main(["contact", "set", "nobody", "--auto-delete-days", "off", *d]) == 2
    assert "no contact called 'nobody'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["contact", "set", "bob", *d])  # the option is required
    assert "--auto-delete-days" in capsys.readouterr().err
    book = ContactBook()
    with pytest.raises(ContactError, match="no contact called"):
        book.set_auto_delete("x", None)


def _foreign_card(network_fingerprint: bytes) -> str:
    someone = Identity.generate()
    card = Card.make(someone, gateway_id=bytes(16), mailbox_id=bytes(16),
                     network_fingerprint=network_fingerprint)  # fmt: skip
    return card.to_text(someone)


def test_concurrent_commands_on_one_profile_lose_no_change(
    two: tuple[Path, str, Path, str],
) -> None:
    """Each command reads the contact book and writes it back: without a lock the last
    writer dropped the others' contacts while every command reported success."""
    me, my_card = two[0], two[1]
    net = Card.from_text(my_card).network_fingerprint
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, "-m", "client.cli", "contact", "add"]
    procs = [
        subprocess.Popen(
            [*argv, f"c{i}", _foreign_card(net), "--dir", str(me)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for i in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    book = open_profile(me, lambda: PASSPHRASE).load_contacts()
    assert sorted(c.name for c in book) == ["c0", "c1", "c2", "c3"]


def test_a_profile_busy_for_too_long_is_a_clear_error(
    two: tuple[Path, str, Path, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    me = two[0]
    monkeypatch.setattr(commands, "LOCK_WAIT_S", 0.2)
    held = os.open(me, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert main(["contact", "list", "--dir", str(me)]) == 2
        assert "another phantom-call command" in capsys.readouterr().err
    finally:
        os.close(held)
    assert main(["contact", "list", "--dir", str(me)]) == 0  # and the lock went with it
    assert main(["contact", "list", "--dir", str(me)]) == 0


def test_a_qr_code_on_an_ascii_only_output_is_drawn_in_ansi_colours(
    two: tuple[Path, str, Path, str],
) -> None:
    me, my_card = two[0], two[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "PYTHONIOENCODING": "ascii"}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-m", "client.cli", "card", "--qr", "--dir", str(me)],
        capture_output=True, env=env, timeout=60,
    )  # fmt: skip
    assert (out.returncode, out.stderr) == (0, b"")
    lines = out.stdout.decode("ascii").splitlines()
    assert lines[0] == my_card and len(lines) > 20 and "\x1b[" in lines[5]


def test_names_an_ascii_only_output_cannot_encode_are_escaped_not_a_traceback(
    two: tuple[Path, str, Path, str],
) -> None:
    me, my_card = two[0], two[1]
    someone = Identity.generate()
    card = Card.make(someone, gateway_id=bytes(16), mailbox_id=bytes(16), name="Zo\u00eb",
                     network_fingerprint=Card.from_text(my_card).network_fingerprint)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "PYTHONIOENCODING": "ascii"}  # fmt: skip
    for argv in (["add", "zo\u00eb", card.to_text(someone)], ["list"]):
        out = subprocess.run(
            [sys.executable, "-m", "client.cli", "contact", *argv, "--dir", str(me)],
            capture_output=True, env=env, timeout=60,
        )  # fmt: skip
        assert (out.returncode, out.stderr) == (0, b"")
        assert b"zo\\xeb (card name 'Zo\\xeb')" in out.stdout
