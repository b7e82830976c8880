"""The caller's profile directory: identity, network, gateway, mailbox, contacts, call log.

    profile = create_profile(path, network_file, bundle, gateway_id, passphrase=b"...")
    profile = open_profile(path, lambda: b"...")        # PassphraseError if wrong
    book = profile.load_contacts(); book.add("ada", card); profile.save_contacts(book)
    log = profile.open_call_log(now=time.time())         # auto-delete applied here

The directory is mode 0700 and every file in it 0600, each written atomically
(:func:`atomic_write`: a temporary file, fsync, rename, fsync of the directory), so a crash
leaves either the old file or the new one:

    profile.json    format, version, protection ("argon2id" or "none"): written last by
                    init, so a directory without it holds no profile
    network.json    the network file as verified at init (public, signed by the authorities)
    identity.json   sealed: identity private keys, mailbox key seed, gateway id, name
    contacts.json   sealed: the contact book (client.contacts)
    calls.json      sealed: the call log (client.calllog)
    channels.json   sealed: each contact's signaling channel state (chain keys, replay
                    window: client.identity_channel), written by ``listen`` after calls;
                    absent until the first call
    control.sock    while ``phantom-call listen`` runs: its control socket (0600)

A sealed file is JSON: ``{"format": "phantom-sealed", "version": 1, "kind": ..., "kdf":
{"name": "argon2id13", "opslimit", "memlimit", "salt"}, "box": base64(nonce | XSalsa20-
Poly1305)}``: the key is Argon2id (libsodium ``crypto_pwhash``, the parameters in the
header) of the passphrase; the plaintext names its kind, so one file cannot stand in for
another. With no passphrase (``--no-passphrase``) the same files are ``"phantom-plain"``
JSON, and a profile says which it is, so a plain file is never accepted in place of a
sealed one. A wrong passphrase fails to open ``identity.json`` before anything is written.

Python cannot promise that the keys and the passphrase leave no copy in memory (strings
and bytes are immutable, the collector moves nothing but frees late); what this module
can do it does: no key is written anywhere but these sealed files, and core dumps are
turned off for the caller's commands (:func:`disable_core_dumps`).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import fcntl
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils

from overlay import MailboxKey, NetworkBundle, PhantomError, SignedNetwork, UsageError, load_json

from ._signaling import MAX_SECURITY_RECORDS, SecurityRecord
from .calllog import CallLog, CallLogError, CallRecord
from .card import Card
from .contacts import ContactBook, ContactError
from .identity import Identity, IdentityError

PROFILE_VERSION = 1
PROFILE_FILE = "profile.json"
NETWORK_FILE = "network.json"
IDENTITY_FILE = "identity.json"
CONTACTS_FILE = "contacts.json"
CALLS_FILE = "calls.json"
CHANNELS_FILE = "channels.json"
SECURITY_FILE = "security.json"
CONTROL_SOCKET = "control.sock"
PROFILE_FILES = (PROFILE_FILE, NETWORK_FILE, IDENTITY_FILE, CONTACTS_FILE, CALLS_FILE,
                 CHANNELS_FILE, SECURITY_FILE, CONTROL_SOCKET)  # fmt: skip
DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_STORE_BYTES = 16 * 1024 * 1024  # bytes of one profile file read at most
KDF_NAME = "argon2id13"
# libsodium's "interactive" Argon2id cost: 2 passes over 64 MiB (about 0.1-0.5 s).
KDF_OPSLIMIT = nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE
KDF_MEMLIMIT = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE  # bytes
KDF_SALT_LEN = nacl.pwhash.argon2id.SALTBYTES  # 16 bytes
PASSPHRASE_ENV = "PHANTOM_PASSPHRASE"
_SEALED, _PLAIN = "phantom-sealed", "phantom-plain"
_PR_SET_DUMPABLE = 4  # linux/prctl.h


class ProfileError(PhantomError):
    """The profile cannot be created, opened or saved; the message names the file and
    what to do."""


class PassphraseError(ProfileError):
    """The passphrase does not open the profile (nothing was changed)."""


# -- files ---------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` so that a crash at any point leaves the old file or
    the new one, never a mix: write a temporary file beside it (created with ``mode``),
    fsync it, rename it over ``path``, fsync the directory. A file, hard link or symlink
    already at the temporary name is removed, never written through. OSError as raised
    (the temporary file is removed first)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # stale, or planted to make us overwrite another file
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STORE_BYTES + 1)
    except FileNotFoundError:
        raise ProfileError(
            f"{path}: missing, so the profile is incomplete: restore it from a backup "
            "(phantom-call init --force makes a new identity, which every contact must add)"
        ) from None
    except OSError as exc:
        raise ProfileError(f"{path}: {exc.strerror}") from None
    if len(data) > MAX_STORE_BYTES:
        raise ProfileError(f"{path}: larger than {MAX_STORE_BYTES} bytes")
    return data


def _json(path: Path, data: bytes) -> dict[str, object]:
    try:
        obj = load_json(data, str(path), max_bytes=MAX_STORE_BYTES)
    except PhantomError as exc:
        raise ProfileError(str(exc)) from None
    if not isinstance(obj, dict):
        raise ProfileError(f"{path}: expected a JSON object")
    return obj


def default_profile_dir() -> Path:
    """``$XDG_CONFIG_HOME/phantom-call`` (``~/.config/phantom-call`` without it)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "phantom-call"


# -- sealing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id parameters: ``opslimit`` passes, ``memlimit`` bytes, 16-byte ``salt``."""

    opslimit: int
    memlimit: int
    salt: bytes

    @classmethod
    def fresh(cls) -> KdfParams:
        """This version's cost with a new random salt."""
        return cls(KDF_OPSLIMIT, KDF_MEMLIMIT, os.urandom(KDF_SALT_LEN))

    def to_dict(self) -> dict[str, object]:
        return {
            "name": KDF_NAME,
            "opslimit": self.opslimit,
            "memlimit": self.memlimit,
            "salt": self.salt.hex(),
        }

    @classmethod
    def from_dict(cls, d: object, where: str) -> KdfParams:
        """ProfileError naming ``where`` for anything but this KDF within libsodium's range."""
        a = nacl.pwhash.argon2id
        try:
            if not isinstance(d, dict) or d.get("name") != KDF_NAME:
                raise ValueError(f"expected name {KDF_NAME!r}")
            ops, mem, salt = d["opslimit"], d["memlimit"], bytes.fromhex(d["salt"])
            # Bounded by libsodium's "sensitive" cost, so a changed header cannot make
            # opening the profile take hours or gigabytes.
            if not isinstance(ops, int) or not a.OPSLIMIT_MIN <= ops <= a.OPSLIMIT_SENSITIVE:
                raise ValueError(f"opslimit outside {a.OPSLIMIT_MIN}..{a.OPSLIMIT_SENSITIVE}")
            if not isinstance(mem, int) or not a.MEMLIMIT_MIN <= mem <= a.MEMLIMIT_SENSITIVE:
                raise ValueError(f"memlimit outside {a.MEMLIMIT_MIN}..{a.MEMLIMIT_SENSITIVE}")
            if len(salt) != KDF_SALT_LEN:
                raise ValueError(f"salt is {KDF_SALT_LEN} bytes")
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"{where}: kdf: {exc}") from None
        return cls(ops, mem, salt)


@dataclass(slots=True)
class Sealer:
    """Seals and opens the profile's files under one passphrase (None: plain files).

    The Argon2id key of each parameter set is derived once and kept here.
    """

    passphrase: bytes | None = field(repr=False)  # secret: never in a repr or a traceback
    params: KdfParams | None = None  # what new files are sealed with
    _keys: dict[KdfParams, bytes] = field(default_factory=dict, repr=False)

    def _key(self, params: KdfParams) -> bytes:
        assert self.passphrase is not None
        if params not in self._keys:
            self._keys[params] = nacl.pwhash.argon2id.kdf(
                nacl.secret.SecretBox.KEY_SIZE,
                self.passphrase,
                params.salt,
                opslimit=params.opslimit,
                memlimit=params.memlimit,
            )
        return self._keys[params]

    def seal(self, kind: str, payload: object) -> bytes:
        """The file bytes holding ``payload`` (JSON-ready) as ``kind``."""
        inner = json.dumps({"kind": kind, "data": payload}, sort_keys=True).encode()
        if self.passphrase is None:
            return json.dumps({"format": _PLAIN, "version": PROFILE_VERSION, "kind": kind,
                               "data": payload}, sort_keys=True, indent=1).encode()  # fmt: skip
        params = self.params or KdfParams.fresh()
        self.params = params
        box = nacl.secret.SecretBox(self._key(params)).encrypt(inner)
        header = {"format": _SEALED, "version": PROFILE_VERSION, "kind": kind}
        header |= {"kdf": params.to_dict(), "box": base64.b64encode(bytes(box)).decode()}
        return json.dumps(header, sort_keys=True, indent=1).encode()

    def open(self, kind: str, path: Path) -> object:
        """The payload of ``path`` sealed as ``kind``; PassphraseError if the passphrase
        does not open it, ProfileError naming the file for anything else."""
        d = _json(path, _read(path))
        want = _PLAIN if self.passphrase is None else _SEALED
        if d.get("format") != want or d.get("version") != PROFILE_VERSION:
            raise ProfileError(f"{path}: expected a {want} file of version {PROFILE_VERSION}")
        if d.get("kind") != kind:
            raise ProfileError(f"{path}: holds {d.get('kind')!r}, expected {kind!r}")
        if self.passphrase is None:
            return d.get("data")
        params = KdfParams.from_dict(d.get("kdf"), str(path))
        if self.params is None:
            self.params = params  # files saved later share it: one derivation per command
        try:
            box = base64.b64decode(str(d.get("box")), validate=True)
            inner = nacl.secret.SecretBox(self._key(params)).decrypt(box)
        except nacl.exceptions.CryptoError:
            raise PassphraseError(
                f"{path}: wrong passphrase (or the file was changed); nothing was changed"
            ) from None
        except ValueError:
            raise ProfileError(f"{path}: box: expected base64") from None
        obj = _json(path, inner)
        if obj.get("kind") != kind:
            raise ProfileError(f"{path}: holds {obj.get('kind')!r}, expected {kind!r}")
        return obj.get("data")


# -- the profile ---------------------------------------------------------------------------


@dataclass(slots=True)
class Profile:
    """An open profile: the keys, the network and the chosen gateway, and its stores."""

    directory: Path
    network: NetworkBundle
    identity: Identity
    mailbox_key: MailboxKey
    gateway_id: bytes  # 16 bytes, a gateway of the network
    name: str  # the display-name suggestion on the card
    sealer: Sealer = field(repr=False)

    @property
    def protected(self) -> bool:
        """True if the stores are sealed under a passphrase."""
        return self.sealer.passphrase is not None

    def card(self) -> Card:
        """This caller's card (``card.to_text(profile.identity)`` to share it)."""
        return Card.make(
            self.identity,
            gateway_id=self.gateway_id,
            mailbox_id=self.mailbox_key.mailbox_id,
            network_fingerprint=self.network.fingerprint,
            name=self.name,
        )

    def _save(self, file: str, kind: str, payload: object) -> None:
        try:
            atomic_write(self.directory / file, self.sealer.seal(kind, payload))
        except OSError as exc:
            raise ProfileError(f"{self.directory / file}: {exc.strerror}") from None

    def load_contacts(self) -> ContactBook:
        """The contact book; ProfileError if its file is malformed."""
        try:
            stored = self.sealer.open("contacts", self.directory / CONTACTS_FILE)
            return ContactBook.from_list(stored)
        except ContactError as exc:
            raise ProfileError(f"{self.directory / CONTACTS_FILE}: {exc}") from None

    def save_contacts(self, book: ContactBook) -> None:
        """Replace the stored contact book with ``book`` (atomically)."""
        self._save(CONTACTS_FILE, "contacts", book.to_list())

    def open_call_log(self, now: float) -> CallLog:
        """The call log, with each contact's auto-delete applied at ``now`` (unix seconds;
        the file is rewritten if a record went)."""
        try:
            log = CallLog.from_list(self.sealer.open("calls", self.directory / CALLS_FILE))
        except CallLogError as exc:
            raise ProfileError(f"{self.directory / CALLS_FILE}: {exc}") from None
        if log.purge(now, self.load_contacts().retention_days()):
            self.save_call_log(log)
        return log

    def save_call_log(self, log: CallLog) -> None:
        """Replace the stored call log with ``log`` (atomically)."""
        self._save(CALLS_FILE, "calls", log.to_list())

    def load_channel_states(self) -> dict[bytes, bytes]:
        """Stored signaling channel states by conversation id (16 bytes -> the blob of
        ``IdentityChannel.to_bytes``); empty before the first save. ProfileError if the
        file is malformed."""
        path = self.directory / CHANNELS_FILE
        if not path.exists():
            return {}
        stored = self.sealer.open("channels", path)
        try:
            if not isinstance(stored, dict):
                raise TypeError("expected an object")
            return {bytes.fromhex(k): base64.b64decode(v, validate=True)
                    for k, v in stored.items()}  # fmt: skip
        except (TypeError, ValueError) as exc:
            raise ProfileError(f"{path}: malformed: {exc}") from None

    def save_channel_states(self, states: dict[bytes, bytes]) -> None:
        """Replace the stored channel states with ``states`` (conversation id -> blob),
        atomically; the file is sealed like the contacts (it holds chain keys)."""
        payload = {k.hex(): base64.b64encode(v).decode() for k, v in states.items()}
        self._save(CHANNELS_FILE, "channels", payload)

    def load_security_events(self) -> list[tuple[str, SecurityRecord]]:
        """The stored security log, oldest first: (the contact's local name, the record)
        pairs; empty before the first event. ProfileError if the file is malformed."""
        path = self.directory / SECURITY_FILE
        if not path.exists():
            return []
        stored = self.sealer.open("security", path)
        try:
            if not isinstance(stored, list):
                raise UsageError("expected a list")
            out = []
            for item in stored:
                if not isinstance(item, dict) or not isinstance(item.get("contact"), str):
                    raise UsageError("contact: want the contact's name")
                out.append((item["contact"], SecurityRecord.from_dict(item)))
            return out
        except UsageError as exc:
            raise ProfileError(f"{path}: malformed: {exc}") from None

    def append_security_events(self, events: Sequence[tuple[str, SecurityRecord]]) -> None:
        """Add (contact name, record) pairs to the stored security log, sealed like the
        call log; the oldest go beyond ``MAX_SECURITY_RECORDS``."""
        if not events:
            return
        kept = [*self.load_security_events(), *events][-MAX_SECURITY_RECORDS:]
        payload = [{"contact": name, **record.to_dict()} for name, record in kept]
        self._save(SECURITY_FILE, "security", payload)

    def append_call(self, record: CallRecord, now: float) -> None:
        """Add ``record`` to the stored log (auto-delete applied at ``now`` first)."""
        log = self.open_call_log(now)
        log.append(record)
        self.save_call_log(log)


def lock_profile(directory: Path, wait_s: float) -> int | None:
    """An exclusive advisory lock (``flock``) on ``directory``, so that two users of one
    profile never interleave a read and a write of the same file (the second write would
    drop the first one's change). Waits up to ``wait_s`` seconds for another holder, then
    ProfileError. Returns the locked descriptor (closing it releases the lock), or None if
    there is no such directory (opening the profile then says so)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise ProfileError(
                    f"{directory}: another phantom-call command has been using this profile "
                    f"for {wait_s:g} s; try again when it has finished"
                ) from None
            time.sleep(0.05)


def profile_exists(directory: Path) -> bool:
    """True if ``directory`` holds a profile (its ``profile.json``)."""
    return (directory / PROFILE_FILE).exists()


def profile_dir_problem(directory: Path, force: bool) -> str | None:
    """Why a profile cannot be created in ``directory``, or None: a profile is there
    (without ``force``), it is not a directory, or it holds files of something else."""
    if profile_exists(directory) and not force:
        return f"{directory} already holds a profile; --force replaces it"
    if directory.exists() and not directory.is_dir():
        return f"{directory} is not a directory"
    if directory.is_dir():
        others = sorted(
            p.name
            for p in directory.iterdir()
            if p.name not in PROFILE_FILES and not p.name.endswith(".tmp")
        )
        if others:
            shown = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
            return f"{directory} holds other files ({shown}): give a new or empty directory"
    return None


def create_profile(
    directory: Path,
    network_file: bytes,
    gateway_id: bytes,
    passphrase: bytes | None,
    *,
    name: str = "",
    force: bool = False,
) -> Profile:
    """Create a new profile in ``directory`` (made 0700 if missing) for the verified
    network file bytes ``network_file`` and the chosen ``gateway_id``, with a fresh
    identity and mailbox key, empty contacts and call log; ``passphrase`` None for plain
    stores. With ``force`` the old identity's channel states and security log go too.
    ProfileError if a profile is there and not ``force``, if the directory holds other
    files, or for a file that cannot be written (a refused create writes nothing).
    """
    problem = profile_dir_problem(directory, force)
    if problem is not None:
        raise ProfileError(problem)
    try:
        network = SignedNetwork.from_bytes(network_file).verify()
    except PhantomError as exc:
        raise ProfileError(f"network file: {exc}") from None
    sealer = Sealer(passphrase)
    profile = Profile(directory, network, Identity.generate(), MailboxKey.generate(),
                      gateway_id, name, sealer)  # fmt: skip
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(directory, DIR_MODE)
        (directory / PROFILE_FILE).unlink(missing_ok=True)  # --force: no profile till done
        for stale in (CHANNELS_FILE, SECURITY_FILE):  # --force: the old identity's state,
            (directory / stale).unlink(missing_ok=True)  # sealed under its passphrase
        atomic_write(directory / NETWORK_FILE, network_file)
        profile._save(IDENTITY_FILE, "identity", _identity_payload(profile))
        profile.save_contacts(ContactBook())
        profile.save_call_log(CallLog())
        header = {"format": "phantom-profile", "version": PROFILE_VERSION}
        header["protection"] = "none" if passphrase is None else "argon2id"
        atomic_write(directory / PROFILE_FILE, json.dumps(header, indent=1).encode())
    except OSError as exc:
        raise ProfileError(f"{exc.filename or directory}: {exc.strerror}") from None
    return profile


def _identity_payload(p: Profile) -> dict[str, object]:
    return {
        "identity": p.identity.to_bytes().hex(),
        "mailbox_seed": p.mailbox_key.seed.hex(),
        "gateway": p.gateway_id.hex(),
        "name": p.name,
    }


def open_profile(directory: Path, passphrase: Callable[[], bytes]) -> Profile:
    """Open the profile in ``directory``; ``passphrase`` is asked only if it is sealed.

    ProfileError (naming the file) if there is none or a file is missing or malformed
    (the files' modes are set when written, not checked here); PassphraseError if the
    passphrase is wrong. Reads only.
    """
    path = directory / PROFILE_FILE
    if not path.exists():
        raise ProfileError(f"{directory}: no profile here (create one: phantom-call init)")
    header = _json(path, _read(path))
    if header.get("format") != "phantom-profile" or header.get("version") != PROFILE_VERSION:
        raise ProfileError(f"{path}: not a profile of version {PROFILE_VERSION}")
    protection = header.get("protection")
    if protection not in ("none", "argon2id"):
        raise ProfileError(f"{path}: protection must be 'none' or 'argon2id'")
    sealer = Sealer(None if protection == "none" else passphrase())
    try:
        network = SignedNetwork.from_bytes(_read(directory / NETWORK_FILE)).verify()
    except PhantomError as exc:
        if isinstance(exc, ProfileError):
            raise
        raise ProfileError(f"{directory / NETWORK_FILE}: {exc}") from None
    d = sealer.open("identity", directory / IDENTITY_FILE)
    try:
        if not isinstance(d, dict):
            raise TypeError("expected an object")
        identity = Identity.from_bytes(bytes.fromhex(d["identity"]))
        mailbox = MailboxKey(bytes.fromhex(d["mailbox_seed"]))
        gateway, name = bytes.fromhex(d["gateway"]), str(d["name"])
    except (KeyError, TypeError, ValueError, IdentityError) as exc:
        raise ProfileError(f"{directory / IDENTITY_FILE}: malformed: {exc}") from None
    return Profile(directory, network, identity, mailbox, gateway, name, sealer)


# -- the process ---------------------------------------------------------------------------


def disable_core_dumps() -> bool:
    """Make this process write no core dump (RLIMIT_CORE 0) and, on Linux, undumpable
    (``prctl(PR_SET_DUMPABLE, 0)``: no core, no ptrace by the same user, /proc/PID/mem
    closed to others). Returns True if both held (False where prctl is not available)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
