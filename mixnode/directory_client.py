"""Fetch, verify and cache topology documents; publish a node's descriptor.

    client = DirectoryClient.from_config(cfg)           # cfg: NodeConfig
    doc = await client.afetch()                          # verified, threshold of signatures
    desc = descriptor_for(cfg, keys, [epoch, epoch + 1])  # keys: NodeKeys holding both
    publish_descriptor(cfg.directory.authorities, descriptor_body(desc, keys))

A document is used only with ``threshold`` valid signatures from the configured authority
keys and the geometry this node speaks. Signatures for the same document bytes are merged
across authorities, so one authority that missed a round does not block readers; whatever
one authority does (no answer, garbage, a document that fails a check) is counted
(``FetchEvent``): only the threshold decides. The last verified document is cached on disk
(atomically); when no authority answers, the cached one is served while it is still
valid, and never after.

Every HTTP exchange (``mixnode._http``, stdlib ``http.client``) has one deadline for the
whole of it and a cap on the reply, and the authorities are asked at once (``race``), so
one slow or hostile authority costs a fetch or a publish at most its deadline
(``FETCH_TIMEOUT_S``). Blocking calls run in a worker thread when called from trio.

A fetch or publish that no authority satisfies raises ``DirectoryFailed``, whose ``kinds``
give each authority's ``DirectoryFailure`` (unreachable, timeout, refused, parse,
bad_signature, threshold, stale, other): the node counts them by that fixed label set.
"""

from __future__ import annotations

import http.client
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Generic, TypeVar

import trio

from overlay import (
    DirectoryError,
    DirectoryFieldError,
    DocumentSignature,
    Geometry,
    NodeDescriptor,
    SignedDocument,
    TopologyDocument,
    canonical_json,
    document_digest,
    load_json,
    parse_epoch,
    sign_descriptor,
    signature_is_valid,
    verify_document,
)

from ._http import HttpStatusError, http_get, http_post
from .config import NodeConfig
from .keys import NodeKeys, write_secret_atomic

CACHE_DIR = "topology"  # in the data dir: <epoch>.json, the newest few kept
CACHE_KEEP = 3  # cached documents kept
FETCH_TIMEOUT_S = 5.0  # s for one whole exchange with an authority (connect to last byte)
MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # bytes read from an authority
MAX_PUBLISH_REPLY_BYTES = 65536  # bytes of an authority's reply to a descriptor POST


def _now() -> float:
    return time.time()


# --------------------------------------------------------------------------------------
# Every authority at once

REPLY_SLACK_S = 0.1  # s a caller waits past an exchange's deadline for its outcome


class DirectoryFailure(StrEnum):
    """Why an exchange with the directory failed: a fixed set, the label values of
    ``phantom_directory_errors_total{reason}`` (docs/operators.md)."""

    UNREACHABLE = "unreachable"  # connection refused or reset, no route, name unknown
    TIMEOUT = "timeout"  # no complete exchange within the deadline
    REFUSED = "refused"  # the authority answered with an HTTP error (its reason logged)
    PARSE = "parse"  # a reply or document that does not parse (a field named)
    BAD_SIGNATURE = "bad_signature"  # signatures by known keys, none of them valid
    THRESHOLD = "threshold"  # valid signatures, fewer than the threshold
    STALE = "stale"  # a verified document of another epoch or past its validity
    OTHER = "other"


class DirectoryFailed(DirectoryError):
    """A fetch or publish that no authority satisfied; ``kinds`` says why, one per
    authority that failed (``str()`` names each authority and its reason)."""

    def __init__(self, message: str, kinds: Sequence[DirectoryFailure]) -> None:
        super().__init__(message)
        self.kinds = tuple(kinds)

    @property
    def kind(self) -> DirectoryFailure:
        """The reason most authorities gave (ties: the first in DirectoryFailure's order)."""
        if not self.kinds:
            return DirectoryFailure.OTHER
        order = list(DirectoryFailure)
        return max(order, key=lambda k: (self.kinds.count(k), -order.index(k)))


def failure_kind(exc: BaseException) -> DirectoryFailure:
    """The DirectoryFailure of one failed exchange's exception."""
    if isinstance(exc, DirectoryFailed):
        return exc.kind
    if isinstance(exc, HttpStatusError):
        return DirectoryFailure.REFUSED
    if isinstance(exc, TimeoutError):
        return DirectoryFailure.TIMEOUT
    if isinstance(exc, OSError | http.client.HTTPException):
        return DirectoryFailure.UNREACHABLE
    if isinstance(exc, DirectoryError):  # a reply that does not parse or is too large
        return DirectoryFailure.PARSE
    return DirectoryFailure.OTHER


def failure_reason(exc: BaseException) -> str:
    """How a failed exchange is reported: ``HTTP 400 <reason>`` or ``<Type>: <message>``."""
    if isinstance(exc, HttpStatusError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """What one of the calls given to ``race`` did: its index, and its value or error."""

    index: int
    value: T | None
    error: Exception | None


def race(
    calls: Sequence[Callable[[], T]],
    wait_s: float,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Outcome[T]]:
    """Run every call at once, one daemon thread each; yield each Outcome as it ends.

    Stops after ``wait_s`` seconds on ``clock`` even if calls are still running: they are
    abandoned (each must bound itself, as ``http_exchange`` does) and their indices are
    the ones never yielded. An Exception a call raises is its Outcome's ``error``, so no
    remote input can end the caller. The caller may stop iterating early.
    """
    done: queue.SimpleQueue[Outcome[T]] = queue.SimpleQueue()

    def run(index: int, call: Callable[[], T]) -> None:
        try:
            done.put(Outcome(index, call(), None))
        except Exception as exc:  # whatever a peer makes a call raise is an outcome
            done.put(Outcome(index, None, exc))

    end = clock() + wait_s
    for i, call in enumerate(calls):
        threading.Thread(target=run, args=(i, call), name="directory-http", daemon=True).start()
    for _ in calls:
        left = end - clock()
        if left <= 0:
            return
        try:
            yield done.get(timeout=left)
        except queue.Empty:
            return


# A document GET and a descriptor POST: (url, timeout_s) -> the reply's body, capped.
_get_document = partial(http_get, max_bytes=MAX_RESPONSE_BYTES)
_post_descriptor = partial(http_post, max_bytes=MAX_PUBLISH_REPLY_BYTES)


E = TypeVar("E", bound=StrEnum)


class EventCounts(Generic[E]):
    """Thread-safe counts of the events of one enum; aggregate numbers only."""

    def __init__(self, events: type[E]) -> None:
        self._events = events
        self._lock = threading.Lock()
        self._counts: Counter[E] = Counter()

    def add(self, event: E) -> None:
        """Count one ``event``."""
        with self._lock:
            self._counts[event] += 1

    def snapshot(self) -> dict[str, int]:
        """Every event's value and count, zeros included."""
        with self._lock:
            return {e.value: self._counts[e] for e in self._events}


class FetchEvent(StrEnum):
    """What a DirectoryClient counts (``DirectoryClient.counters``)."""

    FETCHED = "fetched"  # a verified document came from an authority
    FROM_CACHE = "from_cache"  # no authority yielded one; the cached document was used
    AUTHORITY_FAILED = "authority_failed"  # no answer, an HTTP error or a reply too large
    DOCUMENT_REFUSED = "document_refused"  # an envelope or document failed a check


@dataclass(frozen=True, slots=True)
class FetchResult:
    """A verified document, and whether it came from the cache (authorities unreachable)."""

    document: TopologyDocument
    from_cache: bool
    signatures: int  # valid signatures it carried
    failure: DirectoryFailed | None = None  # from the cache: why no authority yielded one


class DirectoryClient:
    """Fetches documents from authorities and verifies them against a threshold."""

    def __init__(
        self,
        authorities: Sequence[str],
        authority_keys: Sequence[bytes],
        threshold: int,
        *,
        geometry: Geometry | None = None,
        cache_dir: Path | None = None,
        timeout_s: float = FETCH_TIMEOUT_S,
        clock: Callable[[], float] = _now,
        get: Callable[[str, float], bytes] = _get_document,
    ):
        if not authorities:
            raise DirectoryError("no directory authorities configured")
        self.authorities = [u.rstrip("/") for u in authorities]
        self.authority_keys = frozenset(authority_keys)
        self.threshold = threshold
        self.geometry = geometry
        self.cache_dir = cache_dir
        self.timeout_s = timeout_s
        self._clock = clock
        self._get = get
        self._counts = EventCounts(FetchEvent)  # fetches run in worker threads

    @classmethod
    def from_config(cls, cfg: NodeConfig, *, clock: Callable[[], float] = _now) -> DirectoryClient:
        """A client for a node: its authorities, keys, threshold, geometry and cache."""
        d = cfg.directory
        return cls(
            d.authorities,
            d.authority_keys,
            d.threshold,
            geometry=cfg.geometry,
            cache_dir=cfg.node.data_dir / CACHE_DIR,
            clock=clock,
        )

    def _verify(
        self, doc: bytes, sigs: Sequence[DocumentSignature], now: float, epoch: int | None
    ) -> TopologyDocument:
        """Threshold and geometry; then the current document must be valid ``now``, and a
        document asked for by epoch must be that epoch and not expired (it may be ahead)."""
        d = verify_document(doc, sigs, self.authority_keys, self.threshold, geometry=self.geometry)
        if epoch is None and not d.is_valid_at(now):
            raise DirectoryError(f"document for epoch {d.epoch} is not valid now")
        if epoch is not None and (d.epoch != epoch or now >= d.valid_until):
            raise DirectoryError(f"document for epoch {d.epoch} is not the one asked or expired")
        return d

    def _count_valid(self, env: SignedDocument) -> int:
        digest = document_digest(env.document)
        return len(
            {
                s.authority_key
                for s in env.signatures
                if s.authority_key in self.authority_keys and signature_is_valid(digest, s)
            }
        )

    def fetch_result(self, epoch: int | None = None) -> FetchResult:
        """Fetch the document of ``epoch`` (default: current), verified; else the cache.

        Asks every authority at once and returns as soon as the signatures merged so far
        verify, at most ``timeout_s`` (plus REPLY_SLACK_S) after the start. DirectoryError
        if no authority yields a verifiable document and the cache holds
        none that is valid now (for the epoch asked).
        """
        now = self._clock()
        which = "current" if epoch is None else str(epoch)
        merged: dict[bytes, dict[bytes, DocumentSignature]] = {}
        problems: dict[int, str] = {}
        kinds: dict[int, DirectoryFailure] = {}
        calls = [
            partial(self._get, f"{u}/v1/topology/{which}", self.timeout_s) for u in self.authorities
        ]
        # Every authority is asked at once and each reply is looked at as it arrives, so a
        # slow or silent one costs at most its deadline. Whatever one does (no answer,
        # garbage, a document that fails a check) is counted and noted: only the threshold
        # decides.
        for out in race(calls, self.timeout_s + REPLY_SLACK_S):
            url = self.authorities[out.index]
            if out.error is not None or out.value is None:
                self._count(FetchEvent.AUTHORITY_FAILED)
                problems[out.index] = f"{url}: {failure_reason(out.error or ValueError())}"
                kinds[out.index] = failure_kind(out.error or ValueError())
                continue
            try:
                env = SignedDocument.from_bytes(out.value)
            except DirectoryError as exc:
                self._count(FetchEvent.DOCUMENT_REFUSED)
                problems[out.index] = f"{url}: {exc}"
                kinds[out.index] = DirectoryFailure.PARSE
                continue
            sigs = merged.setdefault(env.document, {})
            for s in env.signatures:
                sigs.setdefault(s.authority_key + s.signature, s)
            try:
                doc = self._verify(env.document, list(sigs.values()), now, epoch)
            except DirectoryError as exc:
                self._count(FetchEvent.DOCUMENT_REFUSED)
                problems[out.index] = f"{url}: {exc}"
                kinds[out.index] = self._refusal_kind(env, exc)
                continue
            good = SignedDocument(env.document, tuple(sigs.values()))
            self._store(doc.epoch, good)
            self._count(FetchEvent.FETCHED)
            return FetchResult(doc, False, self._count_valid(good))
        for i, url in enumerate(self.authorities):
            if i not in problems:
                self._count(FetchEvent.AUTHORITY_FAILED)
                problems[i] = f"{url}: no reply within {self.timeout_s:g} s"
                kinds[i] = DirectoryFailure.TIMEOUT
        reasons = (problems[i] for i in sorted(problems))
        failure = DirectoryFailed(
            "no verifiable topology document: " + "; ".join(reasons),
            [kinds[i] for i in sorted(kinds)],
        )
        cached = self._cached(now, epoch)
        if cached is not None:
            self._count(FetchEvent.FROM_CACHE)
            return replace(cached, failure=failure)
        raise failure

    def _refusal_kind(self, env: SignedDocument, exc: DirectoryError) -> DirectoryFailure:
        """Why a parsed envelope was refused: too few valid signatures (none valid of
        those by known keys: bad_signature), a field (parse), else epoch or validity."""
        if isinstance(exc, DirectoryFieldError):
            return DirectoryFailure.PARSE
        if self._count_valid(env) >= self.threshold:
            return DirectoryFailure.STALE
        known = any(s.authority_key in self.authority_keys for s in env.signatures)
        if known and self._count_valid(env) == 0:
            return DirectoryFailure.BAD_SIGNATURE
        return DirectoryFailure.THRESHOLD

    @property
    def counters(self) -> dict[str, int]:
        """How often each FetchEvent happened (every event, zeros too)."""
        return self._counts.snapshot()

    def _count(self, event: FetchEvent) -> None:
        self._counts.add(event)

    def fetch(self, epoch: int | None = None) -> TopologyDocument:
        """``fetch_result(epoch).document``."""
        return self.fetch_result(epoch).document

    async def afetch(self, epoch: int | None = None) -> TopologyDocument:
        """``fetch`` in a worker thread, for trio callers."""
        return await trio.to_thread.run_sync(self.fetch, epoch)

    async def afetch_result(self, epoch: int | None = None) -> FetchResult:
        """``fetch_result`` in a worker thread."""
        return await trio.to_thread.run_sync(self.fetch_result, epoch)

    def cached(self) -> TopologyDocument | None:
        """The cached document if it verifies and is valid now."""
        r = self._cached(self._clock(), None)
        return None if r is None else r.document

    def _cached(self, now: float, epoch: int | None) -> FetchResult | None:
        if self.cache_dir is None:
            return None
        try:
            files = sorted(
                (f for f in self.cache_dir.glob("*.json") if parse_epoch(f.stem) is not None),
                key=lambda f: -int(f.stem),
            )
        except OSError:
            return None
        for f in files:
            if epoch is not None and int(f.stem) != epoch:
                continue
            try:
                env = SignedDocument.from_bytes(f.read_bytes())
                doc = self._verify(env.document, env.signatures, now, epoch)
            except (OSError, DirectoryError):
                continue
            return FetchResult(doc, True, self._count_valid(env))
        return None

    def _store(self, epoch: int, env: SignedDocument) -> None:
        if self.cache_dir is None:
            return
        self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_secret_atomic(self.cache_dir / f"{epoch}.json", env.to_bytes())
        held = (parse_epoch(f.stem) for f in self.cache_dir.glob("*.json"))
        old = sorted(e for e in held if e is not None)
        for e in old[:-CACHE_KEEP]:
            (self.cache_dir / f"{e}.json").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# Publishing


def descriptor_for(cfg: NodeConfig, keys: NodeKeys, epochs: Sequence[int]) -> NodeDescriptor:
    """This node's descriptor with its public keys for ``epochs`` (they must be held)."""
    n = cfg.node
    return NodeDescriptor(
        node_id=keys.node_id,
        name=n.name,
        role=n.role,
        layer=n.layer,
        host=n.public_host,
        port=n.listen_port,
        client_port=None if cfg.gateway is None else cfg.gateway.client_port,
        identity_key=keys.identity_public,
        epoch_keys=keys.public_epoch_keys(list(epochs)),
        published_at=int(time.time()),
    )


def descriptor_body(desc: NodeDescriptor, keys: NodeKeys) -> bytes:
    """The POST body for an authority: the canonical descriptor and its signature."""
    sig = sign_descriptor(desc, keys.identity_seed)
    return canonical_json({"descriptor": desc.to_bytes().decode("ascii"), "signature": sig.hex()})


@dataclass(frozen=True, slots=True)
class PublishReport:
    """What the authorities said to a descriptor: who took it, and why the others did not."""

    accepted: tuple[str, ...]  # authority URLs
    refused: tuple[str, ...]  # "<url>: <reason>", in the authority's words when it gave any
    kinds: tuple[DirectoryFailure, ...] = ()  # why, one per entry of ``refused``


def publish_report(
    authorities: Sequence[str],
    body: bytes,
    *,
    timeout_s: float = FETCH_TIMEOUT_S,
    post: Callable[[str, bytes, float], bytes] = _post_descriptor,
    path: str = "/v1/descriptor",
) -> PublishReport:
    """POST a signed descriptor to every authority at once; who accepted it, and why not.

    Returns within ``timeout_s`` (plus REPLY_SLACK_S) whatever the authorities do; one
    that has not answered by then is refused as ``<url>: no reply within 5 s`` or
    ``<url>: TimeoutError: ...``. An authority's refusal names the field, e.g.
    ``http://dir1: HTTP 400 descriptor.epoch_keys.41: X25519 key is a low-order point``.
    ``path`` is where it is posted (``/v1/withdraw`` for a node's signed withdrawal).
    """
    calls = [partial(post, f"{u.rstrip('/')}{path}", body, timeout_s) for u in authorities]
    outcomes = {out.index: out for out in race(calls, timeout_s + REPLY_SLACK_S)}
    accepted: list[str] = []
    refused: list[str] = []
    kinds: list[DirectoryFailure] = []
    for i, url in enumerate(authorities):
        out = outcomes.get(i)
        if out is None:
            refused.append(f"{url}: no reply within {timeout_s:g} s")
            kinds.append(DirectoryFailure.TIMEOUT)
            continue
        if out.error is not None or out.value is None:
            refused.append(f"{url}: {failure_reason(out.error or ValueError())}")
            kinds.append(failure_kind(out.error or ValueError()))
            continue
        try:
            reply = load_json(out.value, "publish reply", max_bytes=MAX_PUBLISH_REPLY_BYTES)
        except DirectoryError as exc:
            refused.append(f"{url}: {exc}")
            kinds.append(DirectoryFailure.PARSE)
            continue
        if isinstance(reply, dict) and "accepted" in reply:
            accepted.append(url)
        else:
            refused.append(f"{url}: publish reply: no 'accepted' field")
            kinds.append(DirectoryFailure.PARSE)
    return PublishReport(tuple(accepted), tuple(refused), tuple(kinds))


def publish_descriptor(
    authorities: Sequence[str],
    body: bytes,
    *,
    timeout_s: float = FETCH_TIMEOUT_S,
    post: Callable[[str, bytes, float], bytes] = _post_descriptor,
) -> list[str]:
    """POST a signed descriptor to every authority; returns the URLs that accepted it
    (``publish_report`` also says why the others did not)."""
    return list(publish_report(authorities, body, timeout_s=timeout_s, post=post).accepted)
