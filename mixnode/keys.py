"""A node's keys on disk: one Ed25519 identity, one X25519 key per epoch.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "node"
    >>> keys = NodeKeys.load_or_create(d)
    >>> keys.ensure_epochs(10)          # the current and the next epoch
    [10, 11]
    >>> NodeKeys.load(d).node_id == keys.node_id
    True

Layout of the data directory (mode 0700; every key file 0600, written atomically)::

    identity.key            hex Ed25519 seed (the node id is BLAKE2b-128 of its public key)
    epoch-keys/<epoch>.key  hex X25519 private key of that epoch

A key file that the group or others may read is refused with a clear error: the operator
must fix the mode (``chmod 600``) rather than run with a key that may have leaked. Python
cannot promise to wipe key bytes from memory; the store keeps them in one place.
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from nacl.signing import SigningKey

from overlay import PhantomError, generate_private_key, node_id_for, parse_epoch, public_key

IDENTITY_FILE = "identity.key"
EPOCH_DIR = "epoch-keys"
EPOCH_SUFFIX = ".key"
FILE_MODE = 0o600  # owner read/write only
DIR_MODE = 0o700
KEY_LEN = 32  # bytes: an Ed25519 seed or an X25519 private key
DEFAULT_AHEAD = 1  # epochs of keys generated beyond the current one
DEFAULT_KEEP_PREVIOUS = 1  # epochs kept behind the current one (the overlap)


class KeyStoreError(PhantomError):
    """A key file is missing, malformed or unsafe; the node must not start."""


class KeyPermissionError(KeyStoreError):
    """A key file (or the data directory) is readable by the group or others."""


def write_secret_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600: temp file, fsync, rename, fsync the dir.

    A crash leaves either the old file or the new one, never a torn or loose-mode file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask cannot loosen it, but may tighten O_CREAT's mode
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)  # e.g. EISDIR: a directory where the key file belongs
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_private(path: Path) -> None:
    """KeyPermissionError unless ``path`` is a regular file only its owner may read."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise KeyStoreError(f"{path}: not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise KeyPermissionError(
            f"{path}: mode {mode:04o} lets the group or others read the key; "
            f"run `chmod 600 {path}` (and check that the key has not leaked)"
        )


def read_secret(path: Path) -> bytes:
    """Read a hex key file after checking its permissions; KeyStoreError if malformed."""
    check_private(path)
    text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise KeyStoreError(f"{path}: not a hex key") from None
    if len(raw) != KEY_LEN:
        raise KeyStoreError(f"{path}: expected {KEY_LEN} bytes, got {len(raw)}")
    return raw


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700, or tighten it to 0700 if we own it; else refuse."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        if path.stat().st_uid == os.getuid():
            os.chmod(path, DIR_MODE)
        else:
            raise KeyPermissionError(f"{path}: key directory mode {mode:04o} is not private")


class NodeKeys:
    """The identity and epoch keys of one node, kept in its data directory.

    Thread-safe: the daemon may rotate keys from a worker thread while others read.
    """

    def __init__(self, data_dir: Path, identity_seed: bytes, epoch_keys: dict[int, bytes]):
        self.data_dir = Path(data_dir)
        self._signing = SigningKey(identity_seed)
        self._epoch: dict[int, bytes] = dict(epoch_keys)
        self._lock = threading.Lock()
        self.identity_public: bytes = bytes(self._signing.verify_key)
        self.node_id: bytes = node_id_for(self.identity_public)

    # -- loading ------------------------------------------------------------------

    @classmethod
    def create(cls, data_dir: Path) -> NodeKeys:
        """Make a new identity in ``data_dir``; KeyStoreError if one is already there."""
        data_dir = Path(data_dir)
        ensure_private_dir(data_dir)
        ensure_private_dir(data_dir / EPOCH_DIR)
        ident = data_dir / IDENTITY_FILE
        if ident.exists():
            raise KeyStoreError(f"{ident}: an identity already exists; refusing to replace it")
        seed = os.urandom(KEY_LEN)
        write_secret_atomic(ident, seed.hex().encode() + b"\n")
        return cls(data_dir, seed, {})

    @classmethod
    def load(cls, data_dir: Path) -> NodeKeys:
        """Load the identity and every epoch key; refuses unsafe permissions."""
        data_dir = Path(data_dir)
        ident = data_dir / IDENTITY_FILE
        if not ident.exists():
            raise KeyStoreError(f"{ident}: no identity key (run `phantom-mixnode init` first)")
        ensure_private_dir(data_dir)
        ensure_private_dir(data_dir / EPOCH_DIR)
        seed = read_secret(ident)
        epochs: dict[int, bytes] = {}
        for f in sorted((data_dir / EPOCH_DIR).iterdir()):
            name = f.name
            if name.startswith("."):
                continue  # a temp file left by a crash mid-write
            epoch = parse_epoch(name.removesuffix(EPOCH_SUFFIX))
            if not name.endswith(EPOCH_SUFFIX) or epoch is None:
                raise KeyStoreError(f"{f}: unexpected file in the epoch key directory")
            epochs[epoch] = read_secret(f)
        return cls(data_dir, seed, epochs)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> NodeKeys:
        """Load the identity if there is one, otherwise create it."""
        if (Path(data_dir) / IDENTITY_FILE).exists():
            return cls.load(data_dir)
        return cls.create(data_dir)

    # -- identity -----------------------------------------------------------------

    @property
    def identity_seed(self) -> bytes:
        """The 32-byte Ed25519 seed (secret: for signing descriptors only)."""
        return bytes(self._signing)

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature by the identity key."""
        return self._signing.sign(message).signature

    # -- epoch keys ---------------------------------------------------------------

    def epochs(self) -> list[int]:
        """Epochs for which a private key is held, ascending."""
        with self._lock:
            return sorted(self._epoch)

    def epoch_private(self, epoch: int) -> bytes:
        """The X25519 private key of ``epoch``; KeyStoreError if it is not held."""
        with self._lock:
            key = self._epoch.get(epoch)
        if key is None:
            raise KeyStoreError(f"no key for epoch {epoch}")
        return key

    def epoch_public(self, epoch: int) -> bytes:
        """The X25519 public key of ``epoch``."""
        return public_key(self.epoch_private(epoch))

    def public_epoch_keys(self, epochs: list[int] | None = None) -> dict[int, bytes]:
        """Public keys for ``epochs`` (default: all held), for a descriptor."""
        with self._lock:
            held = dict(self._epoch)
        wanted = sorted(held) if epochs is None else epochs
        return {e: public_key(held[e]) for e in wanted if e in held}

    def ensure_epochs(self, current: int, ahead: int = DEFAULT_AHEAD) -> list[int]:
        """Generate and persist keys for ``current .. current + ahead`` that are missing.

        Returns every epoch in that range (generated or already held).
        """
        if current < 0 or ahead < 0:
            raise KeyStoreError("epochs are non-negative")
        wanted = list(range(current, current + ahead + 1))
        for epoch in wanted:
            with self._lock:
                if epoch in self._epoch:
                    continue
            sk = generate_private_key()
            write_secret_atomic(self._epoch_path(epoch), sk.hex().encode() + b"\n")
            with self._lock:
                self._epoch.setdefault(epoch, sk)
        return wanted

    def prune(self, current: int, keep_previous: int = DEFAULT_KEEP_PREVIOUS) -> list[int]:
        """Delete keys older than ``current - keep_previous`` (from memory and disk).

        Keeping the previous epoch lets packets built just before a rotation still open.
        Returns the deleted epochs. (Deleting a file does not scrub the disk blocks.)
        """
        cutoff = current - keep_previous
        with self._lock:
            old = [e for e in self._epoch if e < cutoff]
            for e in old:
                del self._epoch[e]
        for e in old:
            self._epoch_path(e).unlink(missing_ok=True)
        if old:
            _fsync_dir(self.data_dir / EPOCH_DIR)
        return sorted(old)

    def rotate(self, current: int) -> tuple[list[int], list[int]]:
        """``ensure_epochs`` then ``prune``: call at start-up and at each epoch change."""
        return self.ensure_epochs(current), self.prune(current)

    def _epoch_path(self, epoch: int) -> Path:
        return self.data_dir / EPOCH_DIR / f"{epoch}{EPOCH_SUFFIX}"


def load_identity_seed(path: Path) -> bytes:
    """Read a bare Ed25519 seed file (authorities keep one), checking its permissions."""
    return read_secret(Path(path))


def create_identity_seed(path: Path, seed: bytes | None = None) -> bytes:
    """Create a new Ed25519 seed file atomically with mode 0600; refuses to overwrite.

    ``seed`` (32 bytes) is one drawn beforehand, so that a caller can check everything
    that depends on the public key before writing; default: a fresh ``os.urandom`` seed.
    """
    path = Path(path)
    if seed is not None and len(seed) != KEY_LEN:
        raise KeyStoreError(f"an Ed25519 seed is {KEY_LEN} bytes, got {len(seed)}")
    ensure_private_dir(path.parent)
    if path.exists():
        raise KeyStoreError(f"{path}: a key already exists; refusing to replace it")
    seed = os.urandom(KEY_LEN) if seed is None else seed
    write_secret_atomic(path, seed.hex().encode() + b"\n")
    return seed
