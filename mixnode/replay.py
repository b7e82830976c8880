"""The node's replay filters: one per epoch key, in memory shared by all workers, on disk.

    >>> import os, pathlib, tempfile
    >>> from overlay import public_key
    >>> d, sk = pathlib.Path(tempfile.mkdtemp()), os.urandom(32)
    >>> path = ensure_replay_file(d, 7, public_key(sk), bits_log2=16)
    >>> a, b = open_replay_file(path, 7, sk, 16), open_replay_file(path, 7, sk, 16)
    >>> a.add(bytes(32)), b.add(bytes(32)), len(b)   # two workers, one filter
    (None, <DropReason.REPLAY: 'replay'>, 1)
    >>> a.close(); b.close(); remove_replay_files(d, keep=[])
    [7]

The daemon holds each filter in a memfd (:class:`ReplayStore`) that every worker maps
(``/proc/<daemon>/fd/<n>``), and copies it to its file on disk every second and at a clean
stop. Workers never write to disk-backed pages: mapping the disk file itself made a write
after each sync fault into the file system, and under disk load the workers stalled
(measured: packets lost at 10k/s with the workers at 0.4 cores, where the node had held
14k/s).

Why one filter: a packet's group element (alpha) has eight encodings with the same X25519
shared secret (adding a point of order dividing 8 changes the u-coordinate, and the
clamped scalar, a multiple of 8, cancels it), so the same replay tag can arrive at any
worker the socket sharding picks. The replay decision must be the node's, and must outlive
a worker or node restart while the key still opens packets. Each worker maps the file
``MAP_SHARED``; :class:`mixnode.core.ReplayCache` checks and sets a tag under a POSIX record
lock (``fcntl.lockf``) on the tag's stripe, so two copies handled at the same instant by
two workers cannot both pass, and the kernel drops the lock of a worker that dies.
Bits are only ever set, so a copy taken while workers write, or a write torn by a crash,
holds at least every tag of the copy before it.
Refusing alphas outside the prime-order subgroup instead would cost a scalar
multiplication per packet (measured: 51 us against 98 us for the whole ``process_packet``)
and would still forget everything at a restart; the lock costs about 0.7 us.

File ``<data_dir>/replay/<epoch>.replay`` (mode 0600) and the memfd alike, little-endian:

    offset 0     magic "PNREPLAY", format version (u16), bits_log2 (u8), stripes_log2 (u8),
                 4 zero bytes, epoch (u64), BLAKE2b-256 of the epoch public key
                 (personalisation "pn-replay-v1"): 56 bytes
    offset 64    tags added, one u64 per stripe (2**stripes_log2 of them)
    offset 4096  the filter's 2**bits_log2 bits (page-aligned, so it can be mapped alone)

Size: 4 KiB + 2**(bits_log2 - 3) bytes (8 MiB with the default) in memory and on disk
per installed key. The daemon makes the filter before handing the key to its workers and
deletes it with the key; a file whose header does not match the key (another key, another
size) is replaced, never loaded. A worker that dies loses nothing (the daemon holds the
memfd); a node that crashes, or its machine, loses at most the last second's tags.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mixnode.core import ReplayCache, replay_stripes_log2
from mixnode.keys import write_secret_atomic
from overlay import public_key

REPLAY_DIR = "replay"  # under the node's data_dir
REPLAY_SUFFIX = ".replay"
MAGIC = b"PNREPLAY"
FORMAT_VERSION = 1
HEADER_LEN = 4096  # bytes: one page, so that the bits start where mmap may begin
COUNTS_OFFSET = 64  # bytes: the per-stripe counters follow the fixed header
_HEAD = struct.Struct("<8sHBB4xQ32s")
_FINGERPRINT_LABEL = b"pn-replay-v1"


class ReplayFileError(Exception):
    """A replay file does not belong to the key it is opened for, or is damaged."""


def key_fingerprint(epoch_public_key: bytes) -> bytes:
    """32 bytes naming an epoch key in its replay file's header (BLAKE2b-256, labelled)."""
    return hashlib.blake2b(epoch_public_key, digest_size=32, person=_FINGERPRINT_LABEL).digest()


def replay_path(directory: Path, epoch: int) -> Path:
    """Where the filter of ``epoch``'s key lives under ``directory`` (data_dir/replay)."""
    return Path(directory) / f"{epoch}{REPLAY_SUFFIX}"


def _file_len(bits_log2: int) -> int:
    return HEADER_LEN + (1 << (bits_log2 - 3))


def _header(epoch: int, epoch_public_key: bytes, bits_log2: int) -> bytes:
    stripes_log2 = replay_stripes_log2(bits_log2)
    fixed = _HEAD.pack(
        MAGIC, FORMAT_VERSION, bits_log2, stripes_log2, epoch, key_fingerprint(epoch_public_key)
    )
    return fixed.ljust(HEADER_LEN, b"\0")


def ensure_replay_file(
    directory: Path, epoch: int, epoch_public_key: bytes, bits_log2: int
) -> Path:
    """The replay file of ``epoch``'s key, created empty unless one with this header exists.

    A file with another header (another key for this epoch, another size, damage) is
    replaced by an empty one, atomically (mixnode.keys.write_secret_atomic), so a worker
    never sees a half-written header. ``directory`` is created
    with mode 0700. Raises OSError if the disk refuses.
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = replay_path(directory, epoch)
    want = _header(epoch, epoch_public_key, bits_log2)
    try:
        with open(path, "rb") as f:
            if f.read(HEADER_LEN)[: _HEAD.size] == want[: _HEAD.size] and os.fstat(
                f.fileno()
            ).st_size == _file_len(bits_log2):
                return path
    except FileNotFoundError:
        pass
    write_secret_atomic(path, want)
    # Sparse: disk blocks appear as bits are set. A crash before the new size reaches the
    # disk leaves a short file, which the next call replaces (it held no tags yet).
    os.truncate(path, _file_len(bits_log2))
    return path


class FileStripeLock:
    """A :class:`mixnode.core.StripeLock` made of POSIX record locks on a replay file.

    Stripe ``s`` is the byte range of its bits in the file. Locks belong to the process
    and go when it dies or closes any descriptor of the file, so a process must open each
    replay file once (as :func:`open_replay_file` does).
    """

    __slots__ = ("_fd", "_stripe_len")

    def __init__(self, fd: int, stripe_len: int) -> None:
        self._fd = fd
        self._stripe_len = stripe_len

    def acquire(self, stripe: int) -> None:
        """Block until this process holds ``stripe``."""
        n = self._stripe_len
        fcntl.lockf(self._fd, fcntl.LOCK_EX, n, HEADER_LEN + stripe * n)

    def release(self, stripe: int) -> None:
        """Give ``stripe`` back."""
        n = self._stripe_len
        fcntl.lockf(self._fd, fcntl.LOCK_UN, n, HEADER_LEN + stripe * n)


def open_replay_file(path: Path, epoch: int, private_key: bytes, bits_log2: int) -> ReplayCache:
    """Map the replay file of ``epoch``'s key (``private_key``) as a shared ReplayCache.

    Fails closed: raises ReplayFileError unless the header names this epoch, this key and
    this size, and OSError if the file cannot be opened or mapped; the caller must then
    not use the key. :meth:`ReplayCache.close` unmaps and closes the file.
    """
    want = _header(epoch, public_key(private_key), bits_log2)
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        head = os.pread(fd, HEADER_LEN, 0)
        if head[: _HEAD.size] != want[: _HEAD.size] or os.fstat(fd).st_size != _file_len(bits_log2):
            raise ReplayFileError(f"{path}: header does not match the key of epoch {epoch}")
        head_map = mmap.mmap(fd, HEADER_LEN, mmap.MAP_SHARED)
        bits_map = mmap.mmap(fd, 1 << (bits_log2 - 3), mmap.MAP_SHARED, offset=HEADER_LEN)
    except BaseException:
        os.close(fd)
        raise
    stripes_log2 = replay_stripes_log2(bits_log2)
    counts = memoryview(head_map)[COUNTS_OFFSET : COUNTS_OFFSET + (8 << stripes_log2)]

    def close() -> None:
        counts.release()
        head_map.close()
        bits_map.close()
        os.close(fd)

    return ReplayCache(
        bits_log2,
        bits=memoryview(bits_map),
        counts=counts.cast("Q"),
        lock=FileStripeLock(fd, 1 << (bits_log2 - 3 - stripes_log2)),
        on_close=close,
    )


def replay_epochs(directory: Path) -> list[int]:
    """Epochs that have a replay file in ``directory`` (none if it does not exist)."""
    out = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        stem, dot, suffix = name.partition(".")
        if dot and "." + suffix == REPLAY_SUFFIX and stem.isdigit():
            out.append(int(stem))
    return sorted(out)


def remove_replay_files(directory: Path, keep: Iterable[int]) -> list[int]:
    """Delete the replay files of epochs not in ``keep`` (keys that are gone); returns them.

    A worker that still maps a deleted file keeps using it until it drops the key.
    """
    keep = set(keep)
    gone = [e for e in replay_epochs(directory) if e not in keep]
    for e in gone:
        replay_path(directory, e).unlink(missing_ok=True)
    return gone


COPY_CHUNK = 1 << 16  # bytes: the unit in which changes are found and written to disk


@dataclass(slots=True)
class _Held:
    fd: int  # the memfd, shared with the workers
    header: bytes
    view: memoryview  # of the daemon's own mapping of the memfd
    on_disk: bytearray  # the image last written to the file: only changed chunks are written


class ReplayStore:
    """The daemon's side: one memfd per epoch key, loaded from and copied to disk.

        >>> import os, pathlib, tempfile
        >>> from overlay import public_key
        >>> d, sk = pathlib.Path(tempfile.mkdtemp()), os.urandom(32)
        >>> store = ReplayStore(d, bits_log2=16)
        >>> fd = store.ensure(9, public_key(sk))
        >>> worker = open_replay_file(pathlib.Path(f"/proc/self/fd/{fd}"), 9, sk, 16)
        >>> worker.add(bytes(32)); worker.close(); store.close()   # snapshot on close
        >>> store = ReplayStore(d, bits_log2=16)                  # the node restarts
        >>> fd = store.ensure(9, public_key(sk))
        >>> open_replay_file(pathlib.Path(f"/proc/self/fd/{fd}"), 9, sk, 16).add(bytes(32))
        <DropReason.REPLAY: 'replay'>
        >>> store.drop(keep=[]), replay_epochs(d)
        ([9], [])

    ``ensure`` returns the memfd of an epoch's filter (the workers open it through
    ``/proc/<pid>/fd/<fd>``), loading the disk file if its header matches the key;
    ``snapshot`` copies every filter to its file and ``fdatasync``s it; ``drop`` forgets
    and deletes the filters of keys that are gone. Raises OSError when the system refuses.
    """

    def __init__(self, directory: Path, bits_log2: int) -> None:
        self.directory = Path(directory)
        self.bits_log2 = bits_log2
        self._held: dict[int, _Held] = {}
        # snapshot runs in a thread: no memfd may close (and its number be reused) mid-copy
        self._lock = threading.Lock()

    def ensure(self, epoch: int, epoch_public_key: bytes) -> int:
        """The memfd holding ``epoch``'s filter, made (and loaded from disk) if needed."""
        header = _header(epoch, epoch_public_key, self.bits_log2)
        held = self._held.get(epoch)
        if held is not None and held.header == header:
            return held.fd
        if held is not None:  # another key under this epoch number: start afresh
            with self._lock:
                _let_go(self._held.pop(epoch))
        path = ensure_replay_file(self.directory, epoch, epoch_public_key, self.bits_log2)
        fd = os.memfd_create(f"phantom-replay-{epoch}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, _file_len(self.bits_log2))
            with open(path, "rb") as f:
                image = _read_all(f.fileno(), _file_len(self.bits_log2))
            os.pwrite(fd, image, 0)
            view = memoryview(mmap.mmap(fd, len(image), mmap.MAP_SHARED))
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            self._held[epoch] = _Held(fd, header, view, bytearray(image))
        return fd

    def snapshot(self) -> int:
        """Write the changed chunks of every filter to its disk file and fdatasync it.

        Returns how many files were written (an idle node writes nothing). Safe to run in
        a thread beside the other methods (they wait for the copies, never for the disk).
        """
        written = []
        try:
            with self._lock:
                for epoch, held in self._held.items():
                    new, old = held.view, memoryview(held.on_disk)
                    changed = [
                        a
                        for a in range(0, len(new), COPY_CHUNK)
                        if new[a : a + COPY_CHUNK] != old[a : a + COPY_CHUNK]
                    ]
                    if not changed:
                        continue
                    path = replay_path(self.directory, epoch)
                    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    written.append(out)
                    for a in changed:
                        old[a : a + COPY_CHUNK] = new[a : a + COPY_CHUNK]  # a moment's copy
                        os.pwrite(out, old[a : a + COPY_CHUNK], a)
            for out in written:
                os.fdatasync(out)
        finally:
            for out in written:
                os.close(out)
        return len(written)

    def drop(self, keep: Iterable[int]) -> list[int]:
        """Forget the filters of epochs not in ``keep`` and delete their files."""
        keep = set(keep)
        with self._lock:
            for epoch in [e for e in self._held if e not in keep]:
                _let_go(self._held.pop(epoch))
        return remove_replay_files(self.directory, keep)

    def close(self) -> None:
        """Snapshot, then let go of every memfd (at a clean stop, workers gone)."""
        try:
            self.snapshot()
        finally:
            with self._lock:
                for held in self._held.values():
                    _let_go(held)
                self._held.clear()


def _let_go(held: _Held) -> None:
    mapping = held.view.obj
    held.view.release()
    assert isinstance(mapping, mmap.mmap)
    mapping.close()
    os.close(held.fd)


def _read_all(fd: int, length: int) -> bytes:
    """``length`` bytes from offset 0 of ``fd``; OSError if it is shorter."""
    data = os.pread(fd, length, 0)
    if len(data) != length:
        raise OSError(f"replay filter: read {len(data)} of {length} bytes")
    return data
