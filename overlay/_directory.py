"""A node's directory decisions, without sockets or clocks: when to publish its descriptor,
when to fetch the next topology document, when a fetched document is adopted, and how long
to wait after a failure.

    >>> s = DirectorySchedule(b"\\x01" * 16, port=4000, client_port=None, epoch_length_s=600)
    >>> s.start_round(7)  # nothing published yet for epoch 7
    PublishDescriptor(epoch=7)
    >>> s.published(7)
    >>> s.failed()  # the fetch that follows failed: try again after retry_s seconds
    1.0
    >>> 1.0 <= s.failed() <= 2.0  # failed again: the wait doubles, with random jitter
    True

The edge (``mixnode.daemon``) drives one loop: ``start_round(epoch)`` says whether to
publish before fetching; after a successful publish it calls ``published(epoch)``; after
a publish or fetch that raised it calls ``failed()`` and sleeps the seconds it returns;
after a fetch it calls ``fetched(doc, now=..., wall=..., from_cache=...)`` and acts on the
returned ``FetchedDocument``: broadcast the document if ``adopt``, log if
``listed_changed``, then sleep ``wait_s``. ``now`` is a monotonic clock in seconds (how
long the document has been unchanged); ``wall`` is unix seconds (when the next epoch
begins).

Failures back off: the first retry comes after ``retry_s``, the n-th consecutive one after
``retry_s * 2**(n-1)`` (capped at ``retry_max_s``) times a uniform factor in [0.5, 1), never
less than ``retry_s`` (exponential back-off with jitter, so that the nodes of a network do
not retry in step while an authority is down). A round that reaches an authority (a
descriptor accepted, a document fetched that was not served from the cache) ends the run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from ._errors import UsageError
from ._geometry import NODE_ID_LEN
from ._random import uniform01
from ._sphinx import Rng
from ._topology import TopologyDocument, epoch_start

DIRECTORY_RETRY_S = 1.0  # s between directory attempts after a failure (the least wait)
DIRECTORY_RETRY_MAX_S = 10.0  # s: the back-off after repeated failures grows to at most this
DIRECTORY_FOLLOW_S = 1.0  # s between fetches while the document still changes
DIRECTORY_REFRESH_S = 30.0  # s between fetches once the document is settled (at most)
DIRECTORY_SETTLE_S = 15.0  # s without a change before the document counts as settled
EPOCH_WAKE_MIN_S = 0.5  # s: the least time counted until the next epoch begins


@dataclass(frozen=True, slots=True)
class PublishDescriptor:
    """Publish this node's descriptor (keys for ``epoch`` and the next), then fetch."""

    epoch: int


@dataclass(frozen=True, slots=True)
class FetchDocument:
    """Fetch the verified topology document of ``epoch``; nothing to publish."""

    epoch: int


@dataclass(frozen=True, slots=True)
class FetchedDocument:
    """What to do with a fetched document.

    ``adopt``: it differs from the one held (broadcast it to the workers); ``listed``: it
    lists this node at its ports; ``listed_changed``: ``listed`` differs from the previous
    document's answer (log it); ``wait_s``: seconds until the next round (>= retry_s).
    """

    adopt: bool
    listed: bool
    listed_changed: bool
    wait_s: float


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number of seconds, got {value!r}")
    if value <= 0:
        raise UsageError(f"{name} must be > 0, got {value!r}")
    return float(value)


class DirectorySchedule:
    """The directory decisions of one node (sans-IO; see the module docstring).

    ``node_id`` (NODE_ID_LEN = 16 bytes) and ``port``/``client_port`` are how the node is
    listed: a document lists it only at those ports (``client_port`` None for a mix).
    ``epoch_length_s`` and ``genesis_s`` (unix seconds) place the epochs. The waits, in
    seconds: ``retry_s`` after a failure and at least between two rounds, backing off to
    ``retry_max_s`` while failures repeat (module docstring; the jitter drawn from
    ``rng``); ``follow_s``
    while the document changes; ``refresh_s`` (and at most a twentieth of an epoch) once
    it has not changed for ``settle_s``. A round never sleeps past the next epoch's start
    by more than ``retry_s``. UsageError for a wait or epoch length that is not > 0, or a
    node id of another length.
    """

    def __init__(
        self,
        node_id: bytes,
        *,
        port: int,
        client_port: int | None,
        epoch_length_s: int,
        genesis_s: int = 0,
        retry_s: float = DIRECTORY_RETRY_S,
        retry_max_s: float = DIRECTORY_RETRY_MAX_S,
        follow_s: float = DIRECTORY_FOLLOW_S,
        refresh_s: float = DIRECTORY_REFRESH_S,
        settle_s: float = DIRECTORY_SETTLE_S,
        rng: Rng = os.urandom,
    ) -> None:
        if isinstance(epoch_length_s, bool) or not isinstance(epoch_length_s, int):
            raise UsageError(f"epoch_length_s must be an int, got {epoch_length_s!r}")
        _positive("epoch_length_s", epoch_length_s)
        if not isinstance(node_id, bytes) or len(node_id) != NODE_ID_LEN:
            raise UsageError(f"node_id must be {NODE_ID_LEN} bytes, got {node_id!r}")
        self.node_id = node_id
        self.port = port
        self.client_port = client_port
        self.epoch_length_s = epoch_length_s
        self.genesis_s = genesis_s
        self.retry_s = _positive("retry_s", retry_s)
        self.retry_max_s = _positive("retry_max_s", retry_max_s)
        if self.retry_max_s < self.retry_s:
            raise UsageError(f"retry_max_s must be >= retry_s, got {retry_max_s!r} < {retry_s!r}")
        self._rng = rng
        self.failures = 0  # consecutive failed rounds (publish or fetch raised, or cache only)
        self.follow_s = _positive("follow_s", follow_s)
        self.refresh_s = _positive("refresh_s", refresh_s)
        self.settle_s = _positive("settle_s", settle_s)
        self.epoch = -1  # the epoch of the current round
        self.published_for = -1  # the epoch of the last accepted descriptor
        self.listed = False  # the last fetched document lists this node at its ports
        self.document: TopologyDocument | None = None  # the adopted document
        self._document_bytes = b""
        self._changed_at = 0.0  # ``now`` of the last adoption

    def start_round(self, epoch: int) -> PublishDescriptor | FetchDocument:
        """The first step of a round in ``epoch``: publish when this epoch's descriptor has
        not been accepted yet or the last document did not list this node, else fetch."""
        self.epoch = epoch
        if self.published_for != epoch or not self.listed:
            return PublishDescriptor(epoch)
        return FetchDocument(epoch)

    def published(self, epoch: int) -> None:
        """At least one authority accepted the descriptor of ``epoch``."""
        self.published_for = epoch
        self.failures = 0

    def _backoff(self) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure (module docstring)."""
        if self.failures <= 1:
            return self.retry_s
        ceiling = min(self.retry_max_s, self.retry_s * 2.0 ** min(self.failures - 1, 64))
        return max(self.retry_s, ceiling * (0.5 + 0.5 * uniform01(self._rng)))

    def failed(self) -> float:
        """A publish or fetch raised: seconds to wait before the next round, in
        [retry_s, retry_max_s], growing while failures repeat."""
        self.failures += 1
        return self._backoff()

    def fetched(
        self, doc: TopologyDocument, *, now: float, wall: float, from_cache: bool = False
    ) -> FetchedDocument:
        """Take a verified document fetched in the current round.

        ``now``: monotonic seconds; ``wall``: unix seconds; ``from_cache``: no authority
        answered and the cached document was served (retry soon). Returns what to do.
        """
        raw = doc.to_bytes()
        adopt = self.document is None or raw != self._document_bytes
        if adopt:
            self.document = doc
            self._document_bytes = raw
            self._changed_at = now
        mine = doc.by_id.get(self.node_id)
        listed = mine is not None and (mine.port, mine.client_port) == (
            self.port,
            self.client_port,
        )
        changed = listed != self.listed
        self.listed = listed
        # While the network is changing (nodes joining), follow it closely.
        settled = now - self._changed_at > self.settle_s
        wait = min(self.epoch_length_s / 20, self.refresh_s) if settled else self.follow_s
        if from_cache:  # no authority answered: a failure, backed off as ``failed``
            self.failures += 1
            wait = self._backoff()
        else:
            self.failures = 0
        wait = max(self.retry_s, min(wait, self.until_next_epoch(wall)))
        return FetchedDocument(adopt, listed, changed, wait)

    def until_next_epoch(self, wall: float) -> float:
        """Seconds from unix time ``wall`` until the epoch after the current round's begins
        (at least EPOCH_WAKE_MIN_S)."""
        nxt = epoch_start(self.epoch + 1, self.epoch_length_s, self.genesis_s)
        return max(EPOCH_WAKE_MIN_S, nxt - wall)
