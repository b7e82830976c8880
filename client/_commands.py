"""The caller's own subcommands of ``phantom-call``: init, card, contact, calls.

Each handler turns off core dumps first (``client.profile.disable_core_dumps``), then
works on the profile directory (``--dir``). Exit codes: 0 ok, 1 no authority gave a
verifiable topology document, 2 a bad argument, network file, card or contact (the
message says what is wanted), 4 a wrong passphrase (nothing changed), 130 Ctrl-C
("interrupted", no traceback; a file is written whole or not at all), 141 the reader of
the output went away (``| head``; quietly, as a command killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import functools
import getpass
import io
import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import segno

from overlay import PhantomError, hex_fingerprint, whole_number

from .calllog import CallLogError
from .card import Card, CardError, decode_card_text, name_problem
from .contacts import MAX_AUTO_DELETE_DAYS, AddOutcome, Contact, ContactError, TrustState
from .enrol import EnrolError, NetworkFileError, choose_gateway, fetch_topology, load_network
from .identity import format_safety_number, safety_number
from .profile import (
    CONTROL_SOCKET,
    PASSPHRASE_ENV,
    PassphraseError,
    Profile,
    ProfileError,
    create_profile,
    default_profile_dir,
    disable_core_dumps,
    lock_profile,
    open_profile,
    profile_dir_problem,
    profile_exists,
)

if TYPE_CHECKING:
    Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PASSPHRASE = 4
EXIT_PIPE = 128 + 13  # the shell's status of a command killed by SIGPIPE
EXIT_INTERRUPTED = 128 + 2  # the shell's status of a command stopped by Ctrl-C (SIGINT)
MAX_PASSPHRASE_BYTES = 4096
LOCK_WAIT_S = 10.0  # seconds a command waits for another one using the same profile

_Handler: TypeAlias = Callable[[argparse.Namespace], int]


def wall_clock() -> float:
    """Unix seconds now: the one wall-clock read of ``client/`` (no call runs here). A
    topology document's validity window and the call log's times are wall-clock by nature."""
    return time.time()


class CommandError(PhantomError):
    """A command cannot go on: the message says what to fix; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def _guarded(handler: _Handler) -> _Handler:
    """Core dumps off, then ``handler``; a typed error becomes its message and exit code."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        disable_core_dumps()
        if isinstance(sys.stdout, io.TextIOWrapper):  # a name the output cannot encode
            sys.stdout.reconfigure(errors="backslashreplace")  # shows as \xeb, not a traceback
        if args.dir is None:
            args.dir = default_profile_dir()
        try:
            code = handler(args)
            sys.stdout.flush()  # a closed pipe shows here, not in a traceback at exit
            return code
        except BrokenPipeError:
            # The reader went away (| head): stop quietly; the exit flush must not fail too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_PIPE
        except KeyboardInterrupt:  # Ctrl-C (at the passphrase, waiting for the lock, ...)
            code, message = EXIT_INTERRUPTED, "interrupted"
        except PassphraseError as exc:
            code, message = EXIT_PASSPHRASE, str(exc)
        except CommandError as exc:
            code, message = exc.code, str(exc)
        except NetworkFileError as exc:
            code, message = EXIT_USAGE, str(exc)
        except EnrolError as exc:
            code, message = EXIT_FAILED, str(exc)
        except (ProfileError, CardError, ContactError, CallLogError) as exc:
            code, message = EXIT_USAGE, str(exc)
        except OSError as exc:  # a path the system refuses (too long, no permission, ...)
            where = "" if exc.filename is None else f"{exc.filename}: "
            code, message = EXIT_USAGE, f"{where}{exc.strerror or exc}"
        finally:
            lock = getattr(args, "profile_lock", None)
            if lock is not None:
                os.close(lock)  # releases the flock
                args.profile_lock = None
        print(f"phantom-call: error: {message}", file=sys.stderr)
        return code

    return run


def listener_answers(path: Path) -> bool:
    """True if a listener answers on the control socket ``path`` (``phantom-call listen``
    runs on that profile); False if nothing is there or nobody answers (a stale socket).
    OSError for anything else (no permission, ...)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(2.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    finally:
        probe.close()
    return True


# -- passphrases ---------------------------------------------------------------------------


def read_passphrase(args: argparse.Namespace, *, new: bool = False) -> bytes:
    """The passphrase: the first line of ``--passphrase-file``, else ``$PHANTOM_PASSPHRASE``,
    else asked on the terminal (twice when ``new``). CommandError if none can be had."""
    if args.passphrase_file is not None:
        where = f"--passphrase-file: {args.passphrase_file}"
        try:
            with open(args.passphrase_file, "rb") as f:
                text = f.read(MAX_PASSPHRASE_BYTES + 1).split(b"\n", 1)[0].rstrip(b"\r")
        except OSError as exc:
            raise CommandError(f"{where}: {exc.strerror}") from None
        if not text:
            raise CommandError(f"{where}: the first line is empty")
        return text
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return os.fsencode(env)  # the variable's bytes as given, even if not UTF-8
    if not sys.stdin.isatty():
        raise CommandError(
            f"no passphrase: give --passphrase-file FILE, set {PASSPHRASE_ENV}, "
            "or run on a terminal" + (" (or --no-passphrase)" if new else "")
        )
    typed = getpass.getpass("profile passphrase: ")
    if new and getpass.getpass("again: ") != typed:
        raise CommandError("the two passphrases differ")
    if not typed:
        raise CommandError("the passphrase is empty")
    return typed.encode()


def _open(args: argparse.Namespace) -> Profile:
    """The profile of ``--dir``, locked until the command ends (``lock_profile``)."""
    args.profile_lock = lock_profile(args.dir, LOCK_WAIT_S)
    return open_profile(args.dir, lambda: read_passphrase(args))


# -- init ----------------------------------------------------------------------------------


@_guarded
def cmd_init(args: argparse.Namespace) -> int:
    """Check everything, reach the network, then write the profile (nothing on failure)."""
    problem = profile_dir_problem(args.dir, args.force)
    if problem is not None:
        raise CommandError(f"--dir: {problem}")
    if args.no_passphrase and args.passphrase_file is not None:
        raise CommandError("--no-passphrase and --passphrase-file: give one or the other")
    name = args.name or ""
    problem = name_problem(name)
    if problem is not None:
        raise CommandError(f"--name: {problem}")
    passphrase = None if args.no_passphrase else read_passphrase(args, new=True)
    pin = None if args.network_fingerprint is None else bytes.fromhex(args.network_fingerprint)
    raw, bundle = load_network(args.network, pin)
    doc = fetch_topology(bundle, wall_clock())
    gateway = choose_gateway(doc)
    # As every writer does (``_open``): never replace a profile another command is using.
    # create_profile checks the directory again under the lock.
    args.profile_lock = lock_profile(args.dir, LOCK_WAIT_S)
    if args.force and listener_answers(args.dir / CONTROL_SOCKET):
        raise CommandError(f"a listener is running on {args.dir}: stop it before replacing "
                           "its profile", EXIT_FAILED)  # fmt: skip
    replaced = profile_exists(args.dir)
    profile = create_profile(args.dir, raw, gateway.node_id, passphrase,
                             name=name, force=args.force)  # fmt: skip
    if replaced:
        print("replaced the profile that was here: a new identity, and no contacts, calls or "
              "security log yet; add your contacts' cards again, and send them your new card "
              "(they will see a changed safety number)", file=sys.stderr)  # fmt: skip
    if passphrase is None:
        print(
            "WARNING: --no-passphrase: contacts, call log and keys are stored unencrypted; "
            "anyone who reads this directory can impersonate you and see whom you call",
            file=sys.stderr,
        )
    pinned = "pinned" if args.network_fingerprint else "NOT pinned: trust on first use"
    print(f"profile in {args.dir} (mode 0700, files 0600)")
    print(f"network fingerprint {bundle.fingerprint.hex()} ({pinned})")
    print(f"gateway {gateway.name} ({gateway.node_id.hex()}), chosen among "
          f"{len(doc.gateways)} of epoch {doc.epoch}")  # fmt: skip
    print(f"your identity fingerprint {format_safety_number(profile.identity.public.fingerprint)}")
    print("share your card with: phantom-call card")
    return EXIT_OK


# -- card ----------------------------------------------------------------------------------


@_guarded
def cmd_card(args: argparse.Namespace) -> int:
    profile = _open(args)
    text = profile.card().to_text(profile.identity)
    print(text)
    if args.qr:
        # Half blocks (two rows per line) where the output can encode them; else ANSI
        # colours on spaces, which any terminal's encoding can carry.
        try:
            "\u2580\u2584\u2588".encode(sys.stdout.encoding or "ascii")
            compact = True
        except (UnicodeEncodeError, LookupError):
            compact = False
        segno.make(text, error="m").terminal(out=sys.stdout, compact=compact)
    return EXIT_OK


# -- contacts ------------------------------------------------------------------------------

_STATE_TEXT = {
    TrustState.VERIFIED: "verified: safety number compared",
    TrustState.UNVERIFIED: "unverified: safety number not compared yet",
    TrustState.CHANGED: "SAFETY NUMBER CHANGED: compare it again before calling",
}


def _describe(contact: Contact) -> str:
    days = contact.auto_delete_days
    keep = f"calls auto-deleted after {days} d" if days else "calls kept"
    shown = f" (card name {contact.card.name!r})" if contact.card.name else ""
    return f"{contact.name}{shown}: {_STATE_TEXT[contact.state]}; {keep}"


@_guarded
def cmd_contact_add(args: argparse.Namespace) -> int:
    profile = _open(args)
    raw = decode_card_text(args.card)
    card = Card.from_bytes(raw)
    if card.network_fingerprint != profile.network.fingerprint:
        raise CardError(
            f"it is for network {card.network_fingerprint.hex()[:16]}…, this profile's is "
            f"{profile.network.fingerprint.hex()[:16]}…"
        )
    if card.identity == profile.identity.public:
        raise CardError("it is your own card")
    book = profile.load_contacts()
    outcome = book.add(args.name, raw, auto_delete_days=args.auto_delete_days)
    profile.save_contacts(book)
    if outcome is AddOutcome.KEY_CHANGED:
        print(
            f"WARNING: the safety number with {args.name} has changed: this card's identity "
            "key is not the one added before. They may have a new device or reinstalled, or "
            "someone may be posing as them. The contact is no longer verified; compare the "
            f"new safety number (phantom-call contact verify {args.name}) before calling.",
            file=sys.stderr,
        )
    elif outcome is AddOutcome.UPDATED:
        print(f"updated {args.name}: same identity, new address; verification kept")
    else:
        print(f"added {args.name}")
    print(_describe(book.get(args.name)))
    return EXIT_OK


@_guarded
def cmd_contact_list(args: argparse.Namespace) -> int:
    book = _open(args).load_contacts()
    if not len(book):
        print("no contacts (add one: phantom-call contact add NAME CARD)")
    for contact in book:
        print(_describe(contact))
    return EXIT_OK


@_guarded
def cmd_contact_remove(args: argparse.Namespace) -> int:
    profile = _open(args)
    book = profile.load_contacts()
    gone = book.remove(args.name)
    log = profile.open_call_log(wall_clock())
    if gone.auto_delete_days is not None:
        # Its auto-delete goes with it: delete its calls now rather than keep them for ever.
        forgotten = log.forget(args.name)
        profile.save_call_log(log)
        profile.save_contacts(book)
        print(f"removed {args.name} and, as its calls were auto-deleted, its {forgotten} "
              "call(s) from the log")  # fmt: skip
        return EXIT_OK
    profile.save_contacts(book)
    kept = len(log.records(args.name))
    print(f"removed {args.name} (its {kept} call(s) stay in the log)")
    return EXIT_OK


@_guarded
def cmd_contact_verify(args: argparse.Namespace) -> int:
    profile = _open(args)
    book = profile.load_contacts()
    contact = book.get(args.name)
    groups = format_safety_number(safety_number(profile.identity.public, contact.card.identity))
    words = groups.split()
    print(f"safety number with {args.name}:")
    for row in range(0, len(words), 4):
        print("  " + " ".join(words[row : row + 4]))
    if args.confirm:
        book.verify(args.name)
        profile.save_contacts(book)
        print(f"{args.name} is now verified")
    else:
        print(_describe(contact))
        print(
            f"compare it with {args.name} in person or over a channel you trust; if every "
            f"digit matches: phantom-call contact verify {args.name} --confirm"
        )
    return EXIT_OK


@_guarded
def cmd_contact_set(args: argparse.Namespace) -> int:
    profile = _open(args)
    book = profile.load_contacts()
    contact = book.set_auto_delete(args.name, args.auto_delete_days)
    profile.save_contacts(book)
    profile.open_call_log(wall_clock())  # a new limit applies now, as it will at every open
    print(_describe(contact))
    return EXIT_OK


@_guarded
def cmd_calls(args: argparse.Namespace) -> int:
    profile = _open(args)
    log = profile.open_call_log(wall_clock())
    if args.contact is not None and not log.records(args.contact):
        profile.load_contacts().get(args.contact)  # a removed contact's kept calls still show
    if not log.records(args.contact):
        print("no calls" + (f" with {args.contact}" if args.contact else "") + " in the log")
    for r in log.records(args.contact):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.time_s))
        kind = f"{r.direction.value:8}  {r.result.value:9}"
        print(f"{when}  {kind}  {r.duration_s:6d} s  {r.contact}")
    return EXIT_OK


def cmd_security_log(args: argparse.Namespace) -> int:
    """``phantom-call security-log``: the stored security events, oldest first."""
    events = _open(args).load_security_events()
    if not events and not args.json:
        print("no security events in the log")
    for contact, r in events:
        if args.json:
            print(json.dumps({"contact": contact, **r.to_dict()}))
            continue
        when = "unknown time" if r.at is None else time.strftime(
            "%Y-%m-%d %H:%M", time.localtime(r.at))  # fmt: skip
        verdict = "approved" if r.approved else "refused"
        print(f"{when}  {r.event.value:19}  {r.mode_from.name} -> {r.mode_to.name}  "
              f"{verdict:8}  {contact}")  # fmt: skip
    return EXIT_OK


# -- the parser ----------------------------------------------------------------------------


def _profile_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", type=Path, default=None,
                   help="profile directory (default: $XDG_CONFIG_HOME/phantom-call, "
                        "else ~/.config/phantom-call)")  # fmt: skip
    p.add_argument("--passphrase-file", metavar="FILE", default=None,
                   help=f"read the passphrase from FILE's first line (else ${PASSPHRASE_ENV}, "
                        "else asked on the terminal)")  # fmt: skip


_DAYS = whole_number(1, MAX_AUTO_DELETE_DAYS)
_DAYS_OR_OFF = whole_number(1, MAX_AUTO_DELETE_DAYS, what="'off' or a number of days")


def _days_or_off(text: str) -> int | None:
    """``--auto-delete-days`` of ``contact set``: N days, or None for 'off' / 0."""
    return None if text.strip().lower() in ("off", "0") else _DAYS_OR_OFF(text)


def add_caller_commands(sub: Subcommands) -> None:
    """Add ``init``, ``card``, ``contact``, ``calls`` and ``security-log`` to ``phantom-call``'s
    parser."""
    init = sub.add_parser("init", help="create this caller's profile on a network")
    init.add_argument("--network", required=True, metavar="FILE|URL",
                      help="network file, or an authority's URL (its /v1/network)")  # fmt: skip
    init.add_argument("--network-fingerprint", type=hex_fingerprint, default=None, metavar="HEX",
                      help="expected network fingerprint, 64 hex digits "
                           "(without it: trust on first use)")  # fmt: skip
    _profile_options(init)
    init.add_argument("--force", action="store_true",
                      help="replace a profile already in --dir: a new identity (contacts "
                           "must add your new card), and its contacts and call log are "
                           "emptied")  # fmt: skip
    init.add_argument("--no-passphrase", action="store_true",
                      help="store keys, contacts and call log unencrypted (warned)")  # fmt: skip
    init.add_argument("--name", default=None,
                      help="display name suggested on your card (default: none)")  # fmt: skip
    init.set_defaults(handler=cmd_init)

    card = sub.add_parser("card", help="print your contact card, to paste into the chat")
    _profile_options(card)
    card.add_argument("--qr", action="store_true", help="also print it as a QR code")
    card.set_defaults(handler=cmd_card)

    contact = sub.add_parser("contact", help="add, list, remove, verify or set contacts")
    # The metavar names the verbs in the error for a missing one (else "verb").
    verbs = contact.add_subparsers(dest="verb", required=True,
                                   metavar="{add,list,remove,verify,set}")  # fmt: skip
    add = verbs.add_parser("add", help="add a contact from their card (or replace its card)")
    add.add_argument("name", help="your name for the contact (1..64 characters)")
    add.add_argument("card", help="their card: the phantom-card:1:... line")
    add.add_argument("--auto-delete-days", type=_DAYS,
                     default=None, metavar="N",
                     help="delete this contact's calls from the log after N days "
                          "(default: kept; change it later with contact set)")  # fmt: skip
    for verb, handler, text in (
        ("list", cmd_contact_list, "list contacts with their verification state"),
        ("remove", cmd_contact_remove, "remove a contact"),
        ("verify", cmd_contact_verify, "show the safety number; --confirm marks it verified"),
    ):
        p = verbs.add_parser(verb, help=text)
        if verb != "list":
            p.add_argument("name", help="the contact's name")
        if verb == "verify":
            p.add_argument("--confirm", action="store_true",
                           help="you compared every digit: mark the contact verified")  # fmt: skip
        _profile_options(p)
        p.set_defaults(handler=handler)
    _profile_options(add)
    add.set_defaults(handler=cmd_contact_add)
    set_ = verbs.add_parser("set", help="change a contact's auto-delete of its calls")
    set_.add_argument("name", help="the contact's name")
    set_.add_argument("--auto-delete-days", type=_days_or_off, required=True, metavar="N|off",
                      help="delete this contact's calls from the log after N days "
                           f"(1..{MAX_AUTO_DELETE_DAYS}; older ones go at once), or 'off' "
                           "(or 0): keep them")  # fmt: skip
    _profile_options(set_)
    set_.set_defaults(handler=cmd_contact_set)

    calls = sub.add_parser("calls", help="the call log: time, direction, result, duration")
    calls.add_argument("--contact", default=None, metavar="NAME",
                       help="only the calls with this contact (also those a removed contact "
                            "left in the log; default: all)")  # fmt: skip
    _profile_options(calls)
    calls.set_defaults(handler=cmd_calls)
    security = sub.add_parser(
        "security-log",
        help="the security log: refused downgrades and mode changes, per contact",
        description="Events the calls of this device refused or approved: an offer or answer "
        "without the hybrid call keys (downgrade_refused), a mode switch asked and refused "
        "(mode_switch_refused) or made (mode_changed). Kept sealed in the profile; never sent.",
    )
    security.add_argument("--json", action="store_true", help="one JSON object per line")
    _profile_options(security)
    security.set_defaults(handler=cmd_security_log)
