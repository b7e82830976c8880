"""Fetch, verify and cache topology documents; publish a node's descriptor.

    client = DirectoryClient.from_config(cfg)           # cfg: NodeConfig
    doc = await client.afetch()                          # verified, threshold of signatures
    await apublish_descriptor(cfg, keys, epoch)          # keys: NodeKeys

A document is used only with ``threshold`` valid signatures from the configured authority
keys and the geometry this node speaks. Signatures for the same document bytes are merged
across authorities, so one authority that missed a round does not block readers; whatever
one authority does (no answer, garbage, a document that fails a check) is counted
(``FetchEvent``) and the next one is asked: only the threshold decides. The last
verified document is cached on disk (atomically); when no authority answers, the cached
one is served while it is still valid, and never after.

Blocking HTTP (urllib) runs in a worker thread when called from trio.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from http.client import HTTPException
from pathlib import Path
from typing import Generic, TypeVar

import trio

from overlay import (
    DirectoryError,
    DocumentSignature,
    Geometry,
    NodeDescriptor,
    SignedDocument,
    TopologyDocument,
    canonical_json,
    document_digest,
    epoch_at,
    load_json,
    parse_epoch,
    seconds_until_next_epoch,
    sign_descriptor,
    signature_is_valid,
    verify_document,
)

from .config import NodeConfig
from .keys import NodeKeys, write_secret_atomic

CACHE_DIR = "topology"  # in the data dir: <epoch>.json, the newest few kept
CACHE_KEEP = 3  # cached documents kept
FETCH_TIMEOUT_S = 5.0
MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # bytes read from an authority
MAX_PUBLISH_REPLY_BYTES = 65536  # bytes of an authority's reply to a descriptor POST
MAX_ERROR_TEXT = 4096  # bytes of an authority's error reply read for its reason


def _now() -> float:
    return time.time()


def _http_get(url: str, timeout_s: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (http only)
        data: bytes = resp.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        raise DirectoryError("authority response too large")
    return data


def _http_post(url: str, body: bytes, timeout_s: float) -> bytes:
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310
        data: bytes = resp.read(MAX_PUBLISH_REPLY_BYTES)
    return data


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
        get: Callable[[str, float], bytes] = _http_get,
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

        DirectoryError if no authority yields a verifiable document and the cache holds
        none that is valid now (for the epoch asked).
        """
        now = self._clock()
        which = "current" if epoch is None else str(epoch)
        merged: dict[bytes, dict[bytes, DocumentSignature]] = {}
        problems: list[str] = []
        for url in self.authorities:
            # Whatever one authority does (no answer, garbage, a document that fails a check)
            # is counted and noted, and the next one is asked: only the threshold decides.
            try:
                payload = self._get(f"{url}/v1/topology/{which}", self.timeout_s)
            except urllib.error.HTTPError as exc:
                self._count(FetchEvent.AUTHORITY_FAILED)
                problems.append(f"{url}: HTTP {exc.code}")
                continue
            except (OSError, HTTPException, ValueError, DirectoryError) as exc:
                self._count(FetchEvent.AUTHORITY_FAILED)
                problems.append(f"{url}: {type(exc).__name__}: {exc}")
                continue
            try:
                env = SignedDocument.from_bytes(payload)
            except DirectoryError as exc:
                self._count(FetchEvent.DOCUMENT_REFUSED)
                problems.append(f"{url}: {exc}")
                continue
            sigs = merged.setdefault(env.document, {})
            for s in env.signatures:
                sigs.setdefault(s.authority_key + s.signature, s)
            try:
                doc = self._verify(env.document, list(sigs.values()), now, epoch)
            except DirectoryError as exc:
                self._count(FetchEvent.DOCUMENT_REFUSED)
                problems.append(f"{url}: {exc}")
                continue
            good = SignedDocument(env.document, tuple(sigs.values()))
            self._store(doc.epoch, good)
            self._count(FetchEvent.FETCHED)
            return FetchResult(doc, False, self._count_valid(good))
        cached = self._cached(now, epoch)
        if cached is not None:
            self._count(FetchEvent.FROM_CACHE)
            return cached
        raise DirectoryError("no verifiable topology document: " + "; ".join(problems))

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


def publish_report(
    authorities: Sequence[str],
    body: bytes,
    *,
    timeout_s: float = FETCH_TIMEOUT_S,
    post: Callable[[str, bytes, float], bytes] = _http_post,
) -> PublishReport:
    """POST a signed descriptor to every authority; who accepted it, and why not.

    An authority's refusal names the field, e.g. ``http://dir1: HTTP 400
    descriptor.epoch_keys.41: X25519 key is a low-order point``.
    """
    accepted: list[str] = []
    refused: list[str] = []
    for url in authorities:
        try:
            raw = post(f"{url.rstrip('/')}/v1/descriptor", body, timeout_s)
        except urllib.error.HTTPError as exc:
            refused.append(f"{url}: HTTP {exc.code} {_error_text(exc)}".rstrip())
            continue
        except (OSError, HTTPException, ValueError, DirectoryError) as exc:
            refused.append(f"{url}: {type(exc).__name__}: {exc}")
            continue
        try:
            reply = load_json(raw, "publish reply", max_bytes=MAX_PUBLISH_REPLY_BYTES)
        except DirectoryError as exc:
            refused.append(f"{url}: {exc}")
            continue
        if isinstance(reply, dict) and "accepted" in reply:
            accepted.append(url)
        else:
            refused.append(f"{url}: publish reply: no 'accepted' field")
    return PublishReport(tuple(accepted), tuple(refused))


def publish_descriptor(
    authorities: Sequence[str],
    body: bytes,
    *,
    timeout_s: float = FETCH_TIMEOUT_S,
    post: Callable[[str, bytes, float], bytes] = _http_post,
) -> list[str]:
    """POST a signed descriptor to every authority; returns the URLs that accepted it
    (``publish_report`` also says why the others did not)."""
    return list(publish_report(authorities, body, timeout_s=timeout_s, post=post).accepted)


def _error_text(exc: urllib.error.HTTPError) -> str:
    """An authority's ``{"error": ...}`` reason, printable ASCII, at most 200 characters."""
    try:
        reply = load_json(exc.read(MAX_ERROR_TEXT), "error", max_bytes=MAX_ERROR_TEXT)
    except (OSError, HTTPException, ValueError, DirectoryError):
        return ""
    text = reply.get("error") if isinstance(reply, dict) else None
    if not isinstance(text, str):
        return ""
    return "".join(c if c.isascii() and c.isprintable() else "?" for c in text[:200])


async def apublish_descriptor(cfg: NodeConfig, keys: NodeKeys, epoch: int) -> list[str]:
    """Rotate keys for ``epoch`` (ensure current and next, prune older), then publish."""
    await trio.to_thread.run_sync(keys.rotate, epoch)
    desc = descriptor_for(cfg, keys, [epoch, epoch + 1])
    body = descriptor_body(desc, keys)
    return await trio.to_thread.run_sync(
        lambda: publish_descriptor(cfg.directory.authorities, body)
    )


async def run_directory(
    cfg: NodeConfig,
    keys: NodeKeys,
    on_document: Callable[[TopologyDocument], Awaitable[None]],
    *,
    clock: Callable[[], float] = _now,
    refresh_s: float | None = None,
    task_status: trio.TaskStatus[TopologyDocument] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A node's directory task: rotate keys and publish each epoch, follow the documents.

    Calls ``on_document`` for every new verified document (current epoch, and the next
    one once the authorities have it), and reports the first one through ``task_status``.
    Runs until cancelled; authority failures are retried every ``refresh_s`` seconds.
    """
    d = cfg.directory
    refresh = refresh_s if refresh_s is not None else min(30.0, max(1.0, d.epoch_length_s / 20))
    client = DirectoryClient.from_config(cfg, clock=clock)
    published_epoch = -1
    published_all = False
    seen: set[bytes] = set()
    started = False
    while True:
        now = clock()
        epoch = epoch_at(now, d.epoch_length_s, d.genesis_s)
        if epoch != published_epoch or not published_all:
            accepted = await apublish_descriptor(cfg, keys, epoch)
            published_epoch = epoch
            published_all = len(accepted) == len(d.authorities)
        wanted: list[int | None] = [None]
        if started and seconds_until_next_epoch(now, d.epoch_length_s, d.genesis_s) < 4 * refresh:
            wanted.append(epoch + 1)  # fetch the next epoch's document ahead of the switch
        for e in wanted:
            try:
                doc = await client.afetch(e)
            except DirectoryError:
                continue
            digest = doc.digest
            if digest in seen:
                continue
            seen.add(digest)
            if len(seen) > 16:
                seen = {digest}
            await on_document(doc)
            if not started:
                started = True
                task_status.started(doc)
        await trio.sleep(refresh if started else min(refresh, 0.5))
