"""Sans-IO mix node core: packets and ``now`` in, typed actions out; no sockets, no trio.

    >>> import os
    >>> from overlay import VOICE, Hop, create_forward, public_key
    >>> sk = os.urandom(32)
    >>> core = NodeCore(VOICE, b"n" * 16)
    >>> core.install_key(epoch=1, private_key=sk, expires_at=2e9)
    >>> path = [Hop(b"n" * 16, public_key(sk), 2000), Hop(b"m" * 16, public_key(sk), 0)]
    >>> core.receive(create_forward(VOICE, path, b"x" * 16, b"hi"), now=0.0, prev_hop="a")
    >>> core.pop_due(0.001), core.pop_due(0.002)[0].send_at
    ([], 0.002)

The core owns what must be exact and testable on virtual time: per-key replay caches, the
delay queue (its delay cap and its fair share per previous hop), the late-drop rule, loop
cover timing and the previous epoch's key during the overlap. The edge (mixnode._worker)
owns sockets and clocks and turns actions into datagrams.

Two clocks, never mixed: every ``now``, ``arrived_at`` and release time here is on the
edge's monotonic clock (seconds; a wall clock step must not hold or drop packets), while
key lifetimes (``install_key``'s ``expires_at``, ``expire_keys``) are unix seconds, because
epochs are defined on the wall clock.
"""

from __future__ import annotations

import heapq
import math
import os
import struct
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from overlay import (
    DEFAULT_MAX_DELAY_US,
    Deliver,
    DeliverReply,
    Discard,
    DownlinkKind,
    DropReason,
    Forward,
    Geometry,
    Hop,
    MacMismatch,
    PacketError,
    Rng,
    create_drop,
    exponential,
    process_packet,
)

DEFAULT_LATE_DROP_S = 0.05  # seconds a release may be overdue before the packet is dropped
DEFAULT_MAX_QUEUE = 50_000  # packets held in the delay queue at most
DEFAULT_REPLAY_BITS_LOG2 = 26  # replay filter of 2**26 bits (8 MiB) per epoch key
REPLAY_STRIPES_LOG2 = 8  # the filter is cut into 2**8 stripes, the unit of locking
LOOP_LOG_MAX = 256  # loops sent (and drops ended here) noted between two reads by the edge


@dataclass(frozen=True, slots=True)
class ForwardAt:
    """Send ``packet`` to the node ``next_hop`` at ``send_at`` (seconds, the edge's clock)."""

    next_hop: bytes
    send_at: float
    packet: bytes


@dataclass(frozen=True, slots=True)
class DeliverAt:
    """Hand ``data`` to ``mailbox`` at ``at``: a message, or ``surb id | payload`` of a reply."""

    mailbox: bytes
    at: float
    kind: DownlinkKind
    data: bytes


@dataclass(frozen=True, slots=True)
class Dropped:
    """A packet was dropped; ``reason`` is the counter (``NodeCore.drops``) it went to."""

    reason: DropReason


Action = ForwardAt | DeliverAt | Dropped
_Queued = tuple[float, int, ForwardAt | DeliverAt, Hashable]  # release, order, action, hop
PathSource = Callable[[], Sequence[Hop] | None]


class StripeLock(Protocol):
    """Mutual exclusion on one stripe of a replay filter among the processes sharing it.

    ``acquire`` blocks until this process holds the stripe; ``release`` gives it back. The
    node's workers use POSIX record locks on the filter's file (mixnode.replay), which the
    kernel releases when a holder dies.
    """

    def acquire(self, stripe: int) -> None: ...

    def release(self, stripe: int) -> None: ...


def replay_stripes_log2(bits_log2: int) -> int:
    """log2 of the number of stripes of a ``2**bits_log2``-bit filter: 256 at most, each
    stripe at least 8192 bits (1 KiB)."""
    return max(0, min(REPLAY_STRIPES_LOG2, bits_log2 - 13))


class ReplayCache:
    """Replay tags seen under one epoch key: a Bloom filter of fixed size, dropped with the key.

        >>> cache = ReplayCache(bits_log2=16)
        >>> tag = bytes(range(32))
        >>> cache.add(tag), cache.add(tag), len(cache)
        (None, <DropReason.REPLAY: 'replay'>, 1)

    Tags must live as long as the key (a tag forgotten earlier would let its packet be
    replayed while the key still opens it), and a set of them would grow with traffic. A
    Bloom filter keeps memory fixed (``2**bits_log2`` bits) and never misses a replay; the
    price is a false "replay" now and then, about (1 - e^(-k n / m))^k after n packets:
    below 1e-4 for 3 million packets per key with the defaults (8 MiB, k = 8).
    Tags are BLAKE2b outputs, so their bits serve directly as the k bit positions.

    The filter is blocked (Putze, Sanders and Singler, "Cache-, hash- and space-efficient
    Bloom filters", 2007): the top bits of the tag's first word pick one of up to 256
    stripes, and all k positions fall in that stripe. With stripes of 2**18 bits the
    false-alarm rate is that of the plain filter to within 1 %. A stripe is the unit of
    locking: several processes may share one filter (``bits`` and ``counts`` in shared
    memory, ``lock`` a :class:`StripeLock`), and one check-and-set runs under its stripe's
    lock, so of two copies of a packet handled at the same instant by two processes exactly
    one passes. Without ``lock`` the filter is private to this process.

    ``bits`` is a writable buffer of ``2**(bits_log2 - 3)`` bytes and ``counts`` one of
    unsigned 64-bit integers, one per stripe (tags added; ``memoryview.cast("Q")``); both
    are allocated here when omitted. ``on_close`` runs once :meth:`close` released them.
    Raises ValueError for a size out of range or buffers of the wrong shape.
    """

    __slots__ = (
        "bits_log2",
        "stripes_log2",
        "_bits",
        "_counts",
        "_lock",
        "_on_close",
        "_shift",
        "_mask",
        "_stripe_bytes_log2",
    )

    def __init__(
        self,
        bits_log2: int = DEFAULT_REPLAY_BITS_LOG2,
        *,
        bits: memoryview | bytearray | None = None,
        counts: memoryview | None = None,
        lock: StripeLock | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if not 10 <= bits_log2 <= 32:
            raise ValueError(f"replay filter: bits_log2 must be in 10..32, got {bits_log2}")
        self.bits_log2 = bits_log2
        self.stripes_log2 = replay_stripes_log2(bits_log2)
        stripe_bits_log2 = bits_log2 - self.stripes_log2
        if bits is None:
            bits = bytearray(1 << (bits_log2 - 3))
        if counts is None:
            counts = memoryview(bytearray(8 << self.stripes_log2)).cast("Q")
        if len(bits) != 1 << (bits_log2 - 3):
            raise ValueError(f"replay filter: {len(bits)} bytes of bits for 2**{bits_log2}")
        if counts.format != "Q" or len(counts) != 1 << self.stripes_log2:
            raise ValueError("replay filter: counts must be one uint64 per stripe")
        self._bits = bits
        self._counts = counts
        self._lock = lock
        self._on_close = on_close
        self._shift = 32 - self.stripes_log2  # the stripe: top bits of the first word
        self._mask = (1 << stripe_bits_log2) - 1  # a position inside the stripe
        self._stripe_bytes_log2 = stripe_bits_log2 - 3

    def __len__(self) -> int:
        """Tags added (by every process sharing the filter)."""
        return sum(self._counts)

    @property
    def memory_bytes(self) -> int:
        """Size of the filter's bits (fixed)."""
        return len(self._bits)

    def add(self, tag: bytes) -> DropReason | None:
        """Record a 32-byte ``tag``; returns REPLAY if it was (very likely) seen before.

        Atomic among the processes sharing the filter: check and set run under the lock of
        the tag's stripe. Raises struct.error if ``tag`` is not 32 bytes.
        """
        words = _eight_words(tag)  # k = 8 positions: the tag's eight 32-bit words
        stripe = words[0] >> self._shift
        base = stripe << self._stripe_bytes_log2
        bits, mask, lock = self._bits, self._mask, self._lock
        if lock is not None:
            lock.acquire(stripe)
        try:
            seen = True
            for i in words:
                i &= mask
                bit, byte = 1 << (i & 7), base + (i >> 3)
                if not bits[byte] & bit:
                    seen = False
                    bits[byte] |= bit
            if seen:
                return DropReason.REPLAY
            self._counts[stripe] += 1
            return None
        finally:
            if lock is not None:
                lock.release(stripe)

    def close(self) -> None:
        """Let go of the buffers (a shared filter's mapping); the cache is unusable after."""
        for view in (self._bits, self._counts):
            if isinstance(view, memoryview):
                view.release()
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


_eight_words = struct.Struct("<8I").unpack


@dataclass(slots=True)
class _EpochKey:
    epoch: int
    private_key: bytes
    expires_at: float
    cache: ReplayCache


class NodeCore:
    """One node's packet handling on a clock the caller supplies.

    The delay queue holds ``max_queue`` packets at most and is shared among previous hops
    by a dynamic threshold (Choudhury and Hahne, 1998): a packet from a hop that already
    holds as many packets as the queue has free is dropped (``queue_full``). One hop alone
    can fill half of the queue; a hop flooding it leaves every other hop room for as many
    packets as are free, so a flood from one source costs another hop nothing while that
    hop holds less than a quarter of ``max_queue`` (a third once the flood's share
    settles). A sender-chosen delay above ``max_delay_us`` (the topology document's,
    microseconds) is dropped (``delay_too_long``), so no packet holds its place longer.
    """

    def __init__(
        self,
        geometry: Geometry,
        node_id: bytes,
        *,
        late_drop_s: float = DEFAULT_LATE_DROP_S,
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_delay_us: int = DEFAULT_MAX_DELAY_US,
        replay_bits_log2: int = DEFAULT_REPLAY_BITS_LOG2,
        cover_rate_hz: float = 0.0,
        rng: Rng = os.urandom,
    ) -> None:
        self.geometry = geometry
        self.node_id = node_id
        self.late_drop_s = late_drop_s
        self.max_queue = max_queue
        self.max_delay_us = max_delay_us  # the edge sets it from each topology document
        self.replay_bits_log2 = replay_bits_log2
        self.cover_rate_hz = cover_rate_hz
        self.rng = rng
        self.counters: Counter[str] = Counter()
        self.drops: Counter[DropReason] = Counter()
        self._keys: list[_EpochKey] = []  # newest first; at most current and previous
        self._first_expiry = math.inf  # when expire_keys next has work to do
        self._heap: list[_Queued] = []
        self._held: dict[Hashable, int] = {}  # packets in the queue per previous hop
        self._seq = 0
        self._next_cover: float | None = None
        self._loop_path: PathSource | None = None
        # For mixnode.reachability, read and cleared by the edge: (last-hop delay, node
        # ids of the path before this node) per loop sent, last-hop delay per drop ended.
        self.loops_sent: list[tuple[int, tuple[bytes, ...]]] = []
        self.loops_back: list[int] = []

    # -- keys --------------------------------------------------------------------------

    def install_key(
        self,
        epoch: int,
        private_key: bytes,
        expires_at: float,
        cache: ReplayCache | None = None,
    ) -> None:
        """Make ``private_key`` current; the previous one stays until its ``expires_at``.

        ``expires_at`` is unix seconds (wall clock); :meth:`expire_keys` enforces it.
        ``cache`` is the key's replay filter: the node-wide one the edge opened (shared by
        the workers, kept across restarts), or a private one made here if None. For an
        epoch already installed only ``expires_at`` changes, and ``cache`` is closed.
        Keys beyond the newest two are dropped, their filters closed.
        """
        for k in self._keys:
            if k.epoch == epoch:
                k.expires_at = expires_at
                self._first_expiry = min(x.expires_at for x in self._keys)
                if cache is not None:
                    cache.close()
                return
        if cache is None:
            cache = ReplayCache(self.replay_bits_log2)
        self._keys.insert(0, _EpochKey(epoch, private_key, expires_at, cache))
        self._keys.sort(key=lambda k: -k.epoch)
        for k in self._keys[2:]:
            k.cache.close()
        del self._keys[2:]
        self._first_expiry = min(k.expires_at for k in self._keys)

    def expire_keys(self, wall_now: float) -> None:
        """Forget keys (and close their replay caches) whose lifetime is over at unix
        ``wall_now``.

        Cheap when nothing expires, so the edge calls it on every wake-up.
        """
        if wall_now < self._first_expiry:
            return
        for k in self._keys:
            if k.expires_at <= wall_now:
                k.cache.close()
        self._keys = [k for k in self._keys if k.expires_at > wall_now]
        self._first_expiry = min((k.expires_at for k in self._keys), default=math.inf)

    def close(self) -> None:
        """Forget every key and close its replay cache (at shutdown)."""
        for k in self._keys:
            k.cache.close()
        self._keys = []
        self._first_expiry = math.inf

    @property
    def epochs(self) -> list[int]:
        """Epochs whose keys are installed, newest first."""
        return [k.epoch for k in self._keys]

    def replay_entries(self) -> int:
        """Tags held over all keys (for the memory bound)."""
        return sum(len(k.cache) for k in self._keys)

    # -- packets -----------------------------------------------------------------------

    def drop(self, reason: DropReason) -> Dropped:
        """Count a drop in ``drops`` (also for the edge's own checks, e.g. link framing)."""
        self.drops[reason] += 1
        return Dropped(reason)

    def receive(
        self,
        packet: bytes,
        now: float,
        *,
        prev_hop: Hashable,
        arrived_at: float | None = None,
    ) -> Dropped | None:
        """Unwrap one layer and queue the result; a Dropped says why not. None: accepted.

        ``now`` and ``arrived_at`` (default ``now``) are monotonic seconds; ``arrived_at``
        is when the datagram reached the node; the sender-chosen delay counts from then,
        so a packet that waited too long for a CPU is late. ``prev_hop`` names where the
        packet came from (the previous node, or one class for senders that are not
        listed); the delay queue is shared fairly among these.
        """
        self.counters["packets_in"] += 1
        if not self._keys:
            return self.drop(DropReason.UNKNOWN_EPOCH)
        result = None
        key = self._keys[0]
        for key in self._keys:
            try:
                result = process_packet(self.geometry, key.private_key, packet)
                break
            except MacMismatch as exc:
                err: PacketError = exc
                continue
            except PacketError as exc:
                return self.drop(exc.reason)
        if result is None:
            return self.drop(err.reason)
        if result.delay_us > self.max_delay_us:
            return self.drop(DropReason.DELAY_TOO_LONG)
        why = key.cache.add(result.replay_tag)
        if why is not None:
            if why is DropReason.REPLAY:
                self.counters["replays"] += 1
            return self.drop(why)
        release = (now if arrived_at is None else arrived_at) + result.delay_us / 1e6
        if now - release > self.late_drop_s:
            return self.drop(DropReason.LATE)
        action: ForwardAt | DeliverAt
        if isinstance(result, Forward):
            action = ForwardAt(result.next_hop, release, result.packet)
        elif isinstance(result, Deliver):
            action = DeliverAt(result.mailbox, release, DownlinkKind.MESSAGE, result.message)
        elif isinstance(result, DeliverReply):
            data = result.surb_id + result.payload
            action = DeliverAt(result.mailbox, release, DownlinkKind.REPLY, data)
        else:
            assert isinstance(result, Discard)
            self.counters["cover_received"] += 1
            if len(self.loops_back) < LOOP_LOG_MAX:
                self.loops_back.append(result.delay_us)
            return None
        # Dynamic threshold: a hop may hold no more packets than the queue has free.
        held = self._held
        n = held.get(prev_hop, 0)
        if n >= self.max_queue - len(self._heap):
            return self.drop(DropReason.QUEUE_FULL)
        held[prev_hop] = n + 1
        self._seq += 1
        heapq.heappush(self._heap, (release, self._seq, action, prev_hop))
        return None

    @property
    def queue_depth(self) -> int:
        """Packets waiting in the delay queue."""
        return len(self._heap)

    def next_deadline(self) -> float | None:
        """When the caller should next call :meth:`pop_due` (None: nothing pending)."""
        t = self._heap[0][0] if self._heap else None
        if self._next_cover is not None and (t is None or self._next_cover < t):
            return self._next_cover
        return t

    def pop_due(self, now: float) -> list[Action]:
        """Actions whose time has come; those overdue by more than the late limit drop."""
        out: list[Action] = []
        heap, held = self._heap, self._held
        while heap and heap[0][0] <= now:
            at, _, action, prev_hop = heapq.heappop(heap)
            n = held[prev_hop] - 1
            if n:
                held[prev_hop] = n
            else:
                del held[prev_hop]
            if now - at > self.late_drop_s:
                out.append(self.drop(DropReason.LATE))
            else:
                self.counters["forwarded" if isinstance(action, ForwardAt) else "delivered"] += 1
                out.append(action)
        if self._next_cover is not None and self._next_cover <= now:
            out.extend(self._cover(now))
        return out

    # -- loop cover --------------------------------------------------------------------

    def set_loop_paths(self, source: PathSource | None, now: float) -> None:
        """Start (or stop, with None) loop cover; ``source`` returns a path ending here."""
        self._loop_path = source
        if source is None or self.cover_rate_hz <= 0:
            self._next_cover = None
        elif self._next_cover is None:
            self._next_cover = now + exponential(1.0 / self.cover_rate_hz, self.rng)

    def _cover(self, now: float) -> list[Action]:
        out: list[Action] = []
        assert self._next_cover is not None
        if now - self._next_cover > 1.0:  # the edge stalled: do not burst a backlog of cover
            self._next_cover = now
        while self._next_cover <= now:
            self._next_cover += exponential(1.0 / self.cover_rate_hz, self.rng)
            path = self._loop_path() if self._loop_path is not None else None
            if not path:
                self.counters["cover_no_path"] += 1
                continue
            # The last hop is this node, which discards at once: its delay is seen by no
            # one else and holds nothing, so it carries a random marker instead, which the
            # returning packet shows again (mixnode.reachability matches the two).
            last = path[-1]
            marker = int.from_bytes(self.rng(4), "big") % (self.max_delay_us + 1)
            path = [*path[:-1], Hop(last.node_id, last.public_key, marker)]
            if len(self.loops_sent) < LOOP_LOG_MAX:
                self.loops_sent.append((marker, tuple(h.node_id for h in path[:-1])))
            pkt = create_drop(self.geometry, path, rng=self.rng)
            self.counters["cover_sent"] += 1
            out.append(ForwardAt(path[0].node_id, now, pkt))
        return out
