"""A directory authority: collects node descriptors, signs one document per epoch.

    $ phantom-dirauth init --config auth1.toml --name auth-1 --listen-port 31900 \\
          --data-dir auth-1 --authority http://127.0.0.1:31900
    $ phantom-dirauth run --config auth1.toml

Nodes POST their self-signed descriptor to every authority. Each round, an authority pulls
the descriptors its peers hold (each one's signature checked again), builds the document
for the current and the next epoch from the union (``overlay.build_document`` is
deterministic, so authorities holding the same descriptors build the same bytes), signs its
digest, and fetches the peers' signatures, keeping only those over the same digest. It
serves the document with every signature it holds; readers demand a threshold of them.

HTTP (stdlib ``ThreadingHTTPServer``; no request is ever logged; each connection has
HANDLER_TIMEOUT_S in all and at most MAX_CONNECTIONS are served at once):

    POST /v1/descriptor          {"descriptor": "<canonical JSON>", "signature": "<hex>"}
    GET  /v1/descriptors         every descriptor held, for peer authorities
    GET  /v1/signature/<epoch>   this authority's signature over its document of <epoch>
    GET  /v1/topology/current    document of the current epoch and its signatures
    GET  /v1/topology/<epoch>    the same for <epoch>
    GET  /v1/health              ``Authority.status_report()``: epoch, counters, peers,
                                 descriptors, the current document's signatures
    GET  /metrics                the same in the Prometheus text format (AuthorityMetrics)
    GET  /v1/network             the network file: {network, signatures} (SignedNetwork)
    GET  /v1/network/signature   this authority's signature over its network bundle
    POST /v1/withdraw            {"withdrawal": "<canonical JSON>", "signature": "<hex>"}
    GET  /v1/withdrawals         every withdrawal held, for peer authorities

Enrolment: ``[authority] allowed_nodes`` plus ``<data_dir>/enrolment.json`` (written by
``phantom-dirauth allow|deny``), read again on SIGHUP: a denied node is never listed, and
once anything is allowed only allowed nodes are. A node whose newest descriptor was
published before the epoch preceding the current one (two epochs without a word) is
absent from the documents; a withdrawn node is absent from the next one.

Whatever a node or a peer sends is bounded in size and nesting before it is parsed, and a
refusal is a DirectoryError naming the field, counted (``AuthorityEvent``); a round always
goes on to build and sign. Peers are asked at once, each exchange under one deadline
(``peer_timeout_s``), so a slow peer cannot hold a round past its interval.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nacl.signing import SigningKey

from mixnode._args import HelpFormatter
from mixnode._logging import add_logging_options, setup_logging
from overlay import (
    DOCUMENT_VERSION,
    GEOMETRIES,
    MAX_NETWORK_BYTES,
    VERSION,
    DirectoryError,
    DirectoryFieldError,
    DocumentSignature,
    NetworkBundle,
    NodeDescriptor,
    NodeRole,
    NodeWithdrawal,
    PhantomError,
    SignedDocument,
    SignedNetwork,
    build_document,
    canonical_json,
    descriptor_rank,
    document_digest,
    epoch_at,
    epoch_start,
    hex_key,
    load_json,
    network_fingerprint,
    network_signature_is_valid,
    parse_epoch,
    port,
    sign_document,
    sign_network,
    signature_is_valid,
    verify_descriptor,
    verify_withdrawal,
    whole_number,
)

from ._http import Deadline, DeadlineSocket, http_exchange, http_get
from .config import (
    ConfigError,
    DirAuthConfig,
    as_loaded_from,
    bind_error,
    check_genesis,
    check_writable_dir,
    check_writable_file,
    load_dirauth_config,
    make_dirauth_config,
    path_error,
    write_config,
)
from .directory_client import REPLY_SLACK_S, EventCounts, race
from .keys import (
    KeyStoreError,
    create_identity_seed,
    ensure_private_dir,
    load_identity_seed,
    write_secret_atomic,
)
from .metrics import CONTENT_TYPE, AuthorityMetrics

AUTHORITY_KEY_FILE = "authority.key"
DESCRIPTOR_DIR = "descriptors"
DOCUMENT_DIR = "documents"
MAX_BODY_BYTES = 64 * 1024  # bytes of a POSTed descriptor
MAX_DESCRIPTORS = 10_000  # descriptors held at most (memory bound)
MAX_PEER_RESPONSE_BYTES = 32 * 1024 * 1024  # bytes read from a peer authority
MAX_SIGNATURE_REPLY_BYTES = 1024  # bytes of a peer's /v1/signature reply (about 260 used)
ENROLMENT_FILE = "enrolment.json"  # {"allow": [hex keys], "deny": [hex keys]}
WITHDRAWAL_DIR = "withdrawals"
PID_FILE = "authority.pid"  # the running authority's process id, for allow/deny's SIGHUP
MAX_ENROLMENT_BYTES = 4 * 1024 * 1024  # bytes of enrolment.json (about 70 per key)
ABSENT_EPOCHS = 2  # a node silent this many epochs is left out of the documents
NETWORK_TIMEOUT_S = 5.0  # s, `phantom-dirauth network` asking its own authority
KEEP_EPOCHS = 24  # documents of past epochs kept and served
PEER_TIMEOUT_S = 3.0  # s, the most one whole exchange with a peer may take
MIN_PEER_TIMEOUT_S = 0.5  # s, the least, however short the round interval
HANDLER_TIMEOUT_S = 10.0  # s one connection to the server may take, request and reply
MAX_CONNECTIONS = 64  # connections served at once; more are closed unanswered (counted)
STATUS_TIMEOUT_S = 3.0  # s `status` waits for the authority's /v1/health
MAX_STATUS_BYTES = 65536  # bytes of that reply read at most
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2

log = logging.getLogger("phantom.dirauth")


class AuthorityError(PhantomError):
    """The authority cannot start or a request to it was refused."""


class AuthorityEvent(StrEnum):
    """What an authority counts (``Authority.counters``, served by ``/v1/health``)."""

    DESCRIPTOR_ACCEPTED = "descriptor_accepted"  # a POSTed descriptor was taken
    DESCRIPTOR_REFUSED = "descriptor_refused"  # a POSTed descriptor failed a check
    PEER_DESCRIPTOR_REFUSED = "peer_descriptor_refused"  # one entry of a peer's list failed
    PEER_REPLY_REFUSED = "peer_reply_refused"  # a peer's whole reply was malformed
    PEER_SIGNATURE_REFUSED = "peer_signature_refused"  # not valid, or over another digest
    PEER_UNREACHABLE = "peer_unreachable"  # a request to a peer failed
    ROUND_FAILED = "round_failed"  # a round raised (a bug: rounds go on regardless)
    CONNECTION_SHED = "connection_shed"  # closed unanswered: MAX_CONNECTIONS being served
    WITHDRAWAL_ACCEPTED = "withdrawal_accepted"  # a node's signed leave was taken
    WITHDRAWAL_REFUSED = "withdrawal_refused"  # a POSTed withdrawal failed a check
    ENROLMENT_RELOADED = "enrolment_reloaded"  # allow/deny lists read again (SIGHUP)


def _now() -> float:
    return time.time()


@dataclass(slots=True)
class _EpochDoc:
    document: bytes
    digest: bytes
    signatures: dict[bytes, DocumentSignature]  # authority key -> signature
    nodes: int = -1  # nodes listed (-1: loaded from disk, not counted)


class Authority:
    """The state of one authority: descriptors held, documents and signatures per epoch.

    Thread-safe: HTTP handler threads and the round thread share it under one lock.
    """

    def __init__(
        self,
        cfg: DirAuthConfig,
        seed: bytes,
        *,
        clock: Callable[[], float] = _now,
        fetch: Callable[[str, float, int], bytes] | None = None,
    ):
        self.cfg = cfg
        self._seed = seed
        self._clock = clock
        self._fetch = fetch if fetch is not None else http_get
        self._lock = threading.Lock()
        self.public_key = bytes(SigningKey(seed).verify_key)
        if self.public_key not in cfg.directory.authority_keys:
            raise AuthorityError(
                f"this authority's key {self.public_key.hex()} is not in "
                "directory.authority_keys; add it to every authority's and node's config"
            )
        self._descriptors: dict[bytes, tuple[NodeDescriptor, bytes, bytes]] = {}
        self._withdrawn: dict[bytes, tuple[NodeWithdrawal, bytes, bytes]] = {}
        self._allow: frozenset[bytes] = frozenset(cfg.authority.allowed_nodes)
        self._deny: frozenset[bytes] = frozenset()
        self._bundle = network_bundle(cfg).to_bytes()
        own_net = sign_network(self._bundle, seed)
        self._network_sigs: dict[bytes, DocumentSignature] = {own_net.authority_key: own_net}
        self._net_urls: set[str] = set()  # peers whose bundle signature is held
        self._counts = EventCounts(AuthorityEvent)
        self._docs: dict[int, _EpochDoc] = {}
        self._own_url = f"http://{cfg.authority.listen_host}:{cfg.authority.listen_port}"
        # A round has two rounds of exchanges with the peers (descriptors, then signatures)
        # and must end within its interval however slowly a peer answers.
        interval = cfg.authority.round_interval_s
        self.peer_timeout_s = min(PEER_TIMEOUT_S, max(MIN_PEER_TIMEOUT_S, interval / 3))
        self.peers_reachable = 0  # peers that served their descriptors in the last round
        self.last_signed_at = 0.0  # unix s of the last new document this authority signed
        self._load_state()

    # -- enrolment ----------------------------------------------------------------

    def enrolled(self, identity_key: bytes) -> bool:
        """Whether this authority lists the node: never if denied; if anything is
        allowed (config or ``allow``), only then; otherwise open enrolment."""
        with self._lock:
            allow, deny = self._allow, self._deny
        return identity_key not in deny and (not allow or identity_key in allow)

    def reload_enrolment(self) -> tuple[int, int]:
        """Read ``enrolment.json`` again (SIGHUP); drop descriptors no longer enrolled.

        Returns (allowed, denied) counts. AuthorityError if the file is malformed; the
        lists in force stay as they were then (fail closed: nothing newly admitted).
        """
        allow_file, deny = read_enrolment(self.cfg.authority.data_dir)
        allow = frozenset(self.cfg.authority.allowed_nodes) | allow_file
        with self._lock:
            self._allow, self._deny = allow, deny
            gone = [k for k, v in self._descriptors.items() if not self._enrolled_locked(v[0])]
            for k in gone:
                del self._descriptors[k]
        self._unlink_descriptors(gone)
        self.count(AuthorityEvent.ENROLMENT_RELOADED)
        return len(allow), len(deny)

    def _enrolled_locked(self, desc: NodeDescriptor) -> bool:
        key = desc.identity_key
        return key not in self._deny and (not self._allow or key in self._allow)

    # -- withdrawals --------------------------------------------------------------

    def withdraw(self, body: bytes) -> NodeWithdrawal:
        """Take a node's signed withdrawal (JSON body): its descriptor is dropped at once
        and none published at or before ``withdrawn_at`` is taken again. Counted either
        way; DirectoryError (naming the field) if it is not valid."""
        try:
            obj = load_json(body, "withdrawal body", max_bytes=MAX_BODY_BYTES)
            w = self._accept_withdrawal(obj, persist=True)
        except DirectoryError:
            self.count(AuthorityEvent.WITHDRAWAL_REFUSED)
            raise
        self.count(AuthorityEvent.WITHDRAWAL_ACCEPTED)
        return w

    def _accept_withdrawal(self, obj: object, *, persist: bool) -> NodeWithdrawal:
        where = "withdrawal body"
        if not isinstance(obj, dict) or set(obj) != {"withdrawal", "signature"}:
            raise DirectoryFieldError(where, "", "expected {withdrawal, signature}")
        text, sig = obj["withdrawal"], _from_hex(obj["signature"])
        if not isinstance(text, str) or not text.isascii():
            raise DirectoryFieldError(where, "withdrawal", "expected a string of ASCII JSON")
        if sig is None:
            raise DirectoryFieldError(where, "signature", "expected lowercase hex")
        data = text.encode("ascii")
        w = verify_withdrawal(data, sig)
        if not self.enrolled(w.identity_key):  # nothing to withdraw; keeps the table small
            raise DirectoryError("node is not enrolled at this authority")
        if w.withdrawn_at < self._listed_since():
            raise DirectoryError("withdrawal is older than any descriptor still listed")
        with self._lock:
            old = self._withdrawn.get(w.node_id)
            if old is not None and old[0].withdrawn_at >= w.withdrawn_at:
                return old[0]
            if old is None and len(self._withdrawn) >= MAX_DESCRIPTORS:
                raise DirectoryError("authority holds too many withdrawals")
            self._withdrawn[w.node_id] = (w, data, sig)
            held = self._descriptors.get(w.node_id)
            gone = held is not None and held[0].published_at <= w.withdrawn_at
            if gone:
                del self._descriptors[w.node_id]
        if gone:
            self._unlink_descriptors([w.node_id])
        if persist:
            path = self.cfg.authority.data_dir / WITHDRAWAL_DIR / f"{w.node_id.hex()}.json"
            write_secret_atomic(path, canonical_json(obj))
        return w

    def withdrawals_payload(self) -> bytes:
        """Every withdrawal held with its signature (what peers pull)."""
        with self._lock:
            items = sorted(self._withdrawn.values(), key=lambda t: t[0].node_id)
        return canonical_json(
            [{"withdrawal": d.decode("ascii"), "signature": s.hex()} for _, d, s in items]
        )

    def merge_peer_withdrawals(self, payload: bytes) -> int:
        """Add the valid withdrawals from a peer's list, as ``merge_peer_descriptors``."""
        return self._merge_peer_list(payload, "peer withdrawals", self._accept_withdrawal)

    def _merge_peer_list(self, payload: bytes, where: str, accept: Callable[..., object]) -> int:
        items = load_json(payload, where, max_bytes=MAX_PEER_RESPONSE_BYTES)
        if not isinstance(items, list) or len(items) > MAX_DESCRIPTORS:
            raise DirectoryFieldError(where, "", f"expected a list of at most {MAX_DESCRIPTORS}")
        taken = 0
        for obj in items:
            try:
                accept(obj, persist=True)
                taken += 1
            except DirectoryError:
                self.count(AuthorityEvent.PEER_DESCRIPTOR_REFUSED)  # the rest still count
        return taken

    def _listed_since(self) -> int:
        """Unix second before which a descriptor counts as absent: the start of the epoch
        before the current one (ABSENT_EPOCHS). The same on every authority per epoch."""
        d = self.cfg.directory
        first = max(0, self._epoch() - ABSENT_EPOCHS + 1)
        return epoch_start(first, d.epoch_length_s, d.genesis_s)

    # -- the network file ---------------------------------------------------------

    def network(self) -> SignedNetwork:
        """This authority's network bundle with every valid signature held over it."""
        with self._lock:
            sigs = tuple(sorted(self._network_sigs.values(), key=lambda s: s.authority_key))
        return SignedNetwork(self._bundle, sigs)

    def own_network_signature(self) -> tuple[bytes, DocumentSignature]:
        """(fingerprint, our signature) of our network bundle."""
        with self._lock:
            return network_fingerprint(self._bundle), self._network_sigs[self.public_key]

    def add_network_signature(self, fingerprint: bytes, sig: DocumentSignature) -> bool:
        """Keep a peer's bundle signature if valid, by a listed key, over our bundle."""
        ours = network_fingerprint(self._bundle)
        if sig.authority_key not in self.cfg.directory.authority_keys or fingerprint != ours:
            return False
        if not network_signature_is_valid(ours, sig):
            return False
        with self._lock:
            self._network_sigs[sig.authority_key] = sig
        return True

    # -- descriptors --------------------------------------------------------------

    def submit(self, body: bytes) -> NodeDescriptor:
        """Accept a node's signed descriptor (JSON body), counted either way.

        DirectoryError if it is not valid: a DirectoryFieldError naming the field
        (``descriptor.epoch_keys.41: X25519 key is a low-order point``), or a refusal
        by policy (not enrolled, stale, wrong layer, authority full).
        """
        try:
            obj = load_json(body, "descriptor body", max_bytes=MAX_BODY_BYTES)
            desc = self._accept(obj, persist=True)
        except DirectoryError:
            self.count(AuthorityEvent.DESCRIPTOR_REFUSED)
            raise
        self.count(AuthorityEvent.DESCRIPTOR_ACCEPTED)
        return desc

    def _accept(self, obj: object, *, persist: bool) -> NodeDescriptor:
        where = "descriptor body"
        if not isinstance(obj, dict) or set(obj) != {"descriptor", "signature"}:
            raise DirectoryFieldError(where, "", "expected {descriptor, signature}")
        text, sig_hex = obj["descriptor"], obj["signature"]
        if not isinstance(text, str) or not text.isascii():
            raise DirectoryFieldError(where, "descriptor", "expected a string of ASCII JSON")
        sig = _from_hex(sig_hex)
        if sig is None:
            raise DirectoryFieldError(where, "signature", "expected lowercase hex")
        data = text.encode("ascii")
        desc = verify_descriptor(data, sig)
        if not self.enrolled(desc.identity_key):
            raise DirectoryError("node is not enrolled at this authority")
        if desc.published_at < self._listed_since():
            raise DirectoryError("descriptor is older than the epoch before the current one")
        now_epoch = self._epoch()
        if max(desc.epoch_keys, default=-1) < now_epoch:
            raise DirectoryError("descriptor has no key for the current or a later epoch")
        if desc.role is NodeRole.MIX and desc.layer > self.cfg.directory.mix_layers:
            raise DirectoryError(f"descriptor is in layer {desc.layer}; the network has fewer")
        with self._lock:
            withdrawn = self._withdrawn.get(desc.node_id)
            if withdrawn is not None and desc.published_at <= withdrawn[0].withdrawn_at:
                raise DirectoryError("node has withdrawn; publish a newer descriptor")
            old = self._descriptors.get(desc.node_id)
            if old is not None and descriptor_rank(old[0]) >= descriptor_rank(desc):
                return old[0]  # an older or identical descriptor never replaces a newer one
            if old is None and len(self._descriptors) >= MAX_DESCRIPTORS:
                raise DirectoryError("authority holds too many descriptors")
            self._descriptors[desc.node_id] = (desc, data, sig)
            held = len(self._descriptors)
        if old is None and persist:
            log.info(
                "enrolled node %s (%s, layer %d); %d held",
                desc.node_id.hex(),
                desc.role.value,
                desc.layer,
                held,
            )
        if persist:
            path = self.cfg.authority.data_dir / DESCRIPTOR_DIR / f"{desc.node_id.hex()}.json"
            write_secret_atomic(path, canonical_json(obj))
        return desc

    def descriptors_payload(self) -> bytes:
        """Every descriptor held with its signature (what peers pull)."""
        with self._lock:
            items = sorted(self._descriptors.values(), key=lambda t: t[0].node_id)
        return canonical_json(
            [{"descriptor": d.decode("ascii"), "signature": s.hex()} for _, d, s in items]
        )

    def merge_peer_descriptors(self, payload: bytes) -> int:
        """Add the valid descriptors from a peer's list; returns how many were taken.

        Each refused entry is counted (``peer_descriptor_refused``) and skipped; a reply
        that is not a list of at most MAX_DESCRIPTORS is a DirectoryFieldError.
        """
        return self._merge_peer_list(payload, "peer descriptors", self._accept)

    def expire(self) -> None:
        """Forget descriptors with no key for the current or a later epoch, or published
        before the epoch preceding the current one (absent: ABSENT_EPOCHS), and
        withdrawals that old (any descriptor they cover is refused as absent anyway)."""
        epoch = self._epoch()
        since = self._listed_since()
        with self._lock:
            old = [
                k
                for k, v in self._descriptors.items()
                if max(v[0].epoch_keys) < epoch or v[0].published_at < since
            ]
            for k in old:
                del self._descriptors[k]
            quiet = [k for k, v in self._withdrawn.items() if v[0].withdrawn_at < since]
            for k in quiet:
                del self._withdrawn[k]
            for e in [e for e in self._docs if e < epoch - KEEP_EPOCHS]:
                del self._docs[e]
        self._unlink_descriptors(old)
        for k in quiet:
            (self.cfg.authority.data_dir / WITHDRAWAL_DIR / f"{k.hex()}.json").unlink(
                missing_ok=True
            )

    def _unlink_descriptors(self, node_ids: Sequence[bytes]) -> None:
        for k in node_ids:
            (self.cfg.authority.data_dir / DESCRIPTOR_DIR / f"{k.hex()}.json").unlink(
                missing_ok=True
            )

    # -- documents ----------------------------------------------------------------

    def build(self, epoch: int) -> _EpochDoc:
        """(Re)build and sign the document of ``epoch`` from the descriptors held.

        If the bytes are unchanged the signatures collected so far are kept.
        """
        d = self.cfg.directory
        since = self._listed_since()
        with self._lock:
            descs = [v[0] for v in self._descriptors.values() if v[0].published_at >= since]
        doc = build_document(
            epoch,
            epoch_length_s=d.epoch_length_s,
            geometry=self.cfg.geometry,
            descriptors=descs,
            genesis_s=d.genesis_s,
            mix_layers=d.mix_layers,
        )
        data = doc.to_bytes()
        with self._lock:
            cur = self._docs.get(epoch)
            if cur is not None and cur.document == data:
                return cur
        own = sign_document(data, self._seed)
        new = _EpochDoc(data, document_digest(data), {own.authority_key: own}, len(doc.nodes))
        with self._lock:
            self._docs[epoch] = new
        self.last_signed_at = self._clock()
        log.info("signed the document of epoch %d: %d nodes", epoch, len(doc.nodes))
        self._persist_doc(epoch, new)
        return new

    def own_signature(self, epoch: int) -> tuple[bytes, DocumentSignature] | None:
        """(digest, our signature) of our document for ``epoch``, if we have one."""
        with self._lock:
            cur = self._docs.get(epoch)
            if cur is None:
                return None
            return cur.digest, cur.signatures[self.public_key]

    def add_signature(self, epoch: int, digest: bytes, sig: DocumentSignature) -> bool:
        """Keep a peer's signature if it is valid, by a known key, over our digest."""
        if sig.authority_key not in self.cfg.directory.authority_keys:
            return False
        with self._lock:
            cur = self._docs.get(epoch)
        if cur is None or digest != cur.digest or not signature_is_valid(cur.digest, sig):
            return False
        with self._lock:
            if self._docs.get(epoch) is not cur:
                return False  # rebuilt meanwhile
            if cur.signatures.get(sig.authority_key) == sig:
                return True
            cur.signatures[sig.authority_key] = sig
        self._persist_doc(epoch, cur)
        return True

    def signed(self, epoch: int) -> SignedDocument | None:
        """The document of ``epoch`` with every signature held, or None."""
        with self._lock:
            cur = self._docs.get(epoch)
            if cur is None:
                return None
            sigs = tuple(sorted(cur.signatures.values(), key=lambda s: s.authority_key))
            return SignedDocument(cur.document, sigs)

    def current_epoch(self) -> int:
        """The epoch at the authority's clock."""
        return self._epoch()

    def status_report(self) -> dict[str, Any]:
        """What ``/v1/health`` serves and ``status`` prints (public data only).

        ``serving`` is true when the current epoch's document holds at least
        ``threshold`` valid signatures; ``document`` is None before the first round.
        """
        epoch = self._epoch()
        with self._lock:
            held = len(self._descriptors)
            cur = self._docs.get(epoch)
            signatures = 0 if cur is None else len(cur.signatures)
            nodes = 0 if cur is None else cur.nodes
        d = self.cfg.directory
        doc: dict[str, Any] | None = None
        if cur is not None:
            doc = {
                "epoch": epoch,
                "nodes": nodes,
                "signatures": signatures,
                "last_signed_at": self.last_signed_at,
            }
        return {
            "name": self.cfg.authority.name,
            "version": VERSION,
            "epoch": epoch,
            "serving": signatures >= d.threshold,
            "threshold": d.threshold,
            "peers": len(self.peers()),
            "peers_reachable": self.peers_reachable,
            "descriptors": held,
            "enrolled": len(self._allow),  # allowed_nodes and enrolment.json
            "document": doc,
            "counters": self.counters,
        }

    @property
    def counters(self) -> dict[str, int]:
        """How often each AuthorityEvent happened since start (every event, zeros too)."""
        return self._counts.snapshot()

    def count(self, event: AuthorityEvent) -> None:
        """Add one to ``event``'s counter."""
        self._counts.add(event)

    # -- rounds -------------------------------------------------------------------

    def peers(self) -> list[str]:
        """Authority URLs other than this one."""
        return [u for u in self.cfg.directory.authorities if not _same_url(u, self._own_url)]

    def sync_round(self) -> None:
        """One round: pull peers' descriptors, rebuild, sign, gather peer signatures.

        The peers are asked at once, each exchange within ``peer_timeout_s`` (a third of
        the round interval, 0.5..3 s), so a slow or silent peer delays a round by at most
        twice that. Whatever one peer serves or fails to serve is counted and skipped; the
        round always goes on to build and sign.
        """
        self.expire()
        peers = self.peers()
        urls = [f"{url}/v1/withdrawals" for url in peers]
        urls += [f"{url}/v1/descriptors" for url in peers]
        replies = sorted(self._peer_replies(urls, MAX_PEER_RESPONSE_BYTES))  # withdrawals first
        answered = 0  # peers whose descriptor list arrived
        for i, payload in replies:
            merge = self.merge_peer_withdrawals if i < len(peers) else self.merge_peer_descriptors
            answered += i >= len(peers)
            try:
                merge(payload)
            except DirectoryError:
                self.count(AuthorityEvent.PEER_REPLY_REFUSED)
        self.peers_reachable = answered
        epoch = self._epoch()
        for e in (epoch, epoch + 1):
            self.build(e)
        self.gather_signatures([epoch, epoch + 1])

    def gather_signatures(self, epochs: Sequence[int]) -> None:
        """Fetch each peer's signature for ``epochs`` at once; keep those over our digests."""
        asked: list[tuple[str, int | None]] = [(url, e) for url in self.peers() for e in epochs]
        urls = [f"{url}/v1/signature/{e}" for url, e in asked]
        with self._lock:  # the network bundle's signatures, until every peer's is held
            missing = [u for u in self.cfg.directory.authorities if not self._net_signed(u)]
        lacking = [url for url in self.peers() if url in missing]
        asked += [(url, None) for url in lacking]
        urls += [f"{url}/v1/network/signature" for url in lacking]
        for i, payload in self._peer_replies(urls, MAX_SIGNATURE_REPLY_BYTES):
            try:
                digest, sig = parse_signature_reply(payload)
            except DirectoryError:
                self.count(AuthorityEvent.PEER_REPLY_REFUSED)
                continue
            epoch = asked[i][1]
            if epoch is None:
                taken = self.add_network_signature(digest, sig)
                if taken:
                    with self._lock:
                        self._net_urls.add(asked[i][0])
            else:
                taken = self.add_signature(epoch, digest, sig)
            if not taken:
                self.count(AuthorityEvent.PEER_SIGNATURE_REFUSED)

    def _net_signed(self, url: str) -> bool:
        return url in self._net_urls

    def _peer_replies(self, urls: Sequence[str], max_bytes: int) -> Iterator[tuple[int, bytes]]:
        """GET every URL at once; yield (index, reply) as each arrives. A request that
        fails or has not ended by ``peer_timeout_s`` is counted (``peer_unreachable``)."""
        timeout = self.peer_timeout_s
        calls = [partial(self._fetch, url, timeout, max_bytes) for url in urls]
        answered = 0
        for out in race(calls, timeout + REPLY_SLACK_S):
            if out.error is not None or out.value is None:
                continue
            answered += 1
            yield out.index, out.value
        for _ in range(len(urls) - answered):
            self.count(AuthorityEvent.PEER_UNREACHABLE)

    def _epoch(self) -> int:
        d = self.cfg.directory
        return epoch_at(self._clock(), d.epoch_length_s, d.genesis_s)

    # -- persistence --------------------------------------------------------------

    def _persist_doc(self, epoch: int, doc: _EpochDoc) -> None:
        env = self.signed(epoch)
        if env is None or env.document != doc.document:
            return
        path = self.cfg.authority.data_dir / DOCUMENT_DIR / f"{epoch}.json"
        write_secret_atomic(path, env.to_bytes())

    def _load_state(self) -> None:
        base = self.cfg.authority.data_dir
        ensure_private_dir(base / DESCRIPTOR_DIR)
        ensure_private_dir(base / DOCUMENT_DIR)
        ensure_private_dir(base / WITHDRAWAL_DIR)
        self._allow, self._deny = read_enrolment(base)
        self._allow |= frozenset(self.cfg.authority.allowed_nodes)
        for f in sorted((base / WITHDRAWAL_DIR).glob("*.json")):
            try:
                obj = load_json(f.read_bytes(), f.name, max_bytes=MAX_BODY_BYTES)
                self._accept_withdrawal(obj, persist=False)
            except DirectoryError:
                f.unlink(missing_ok=True)
        for f in sorted((base / DESCRIPTOR_DIR).glob("*.json")):
            try:
                obj = load_json(f.read_bytes(), f.name, max_bytes=MAX_BODY_BYTES)
                self._accept(obj, persist=False)
            except DirectoryError:
                f.unlink(missing_ok=True)  # stale or damaged: nodes publish again
        epoch = self._epoch()
        for f in sorted((base / DOCUMENT_DIR).glob("*.json")):
            file_epoch = parse_epoch(f.stem)
            if file_epoch is None or file_epoch < epoch - KEEP_EPOCHS:
                f.unlink(missing_ok=True)
                continue
            try:
                env = SignedDocument.from_bytes(f.read_bytes())
            except DirectoryError:
                continue
            digest = document_digest(env.document)
            sigs = {
                s.authority_key: s
                for s in env.signatures
                if s.authority_key in self.cfg.directory.authority_keys
                and signature_is_valid(digest, s)
            }
            if self.public_key in sigs:
                self._docs[file_epoch] = _EpochDoc(env.document, digest, sigs)


def network_bundle(cfg: DirAuthConfig) -> NetworkBundle:
    """The network bundle an authority with ``cfg`` publishes (what nodes and clients need
    to join: authority URLs and keys, threshold, epochs, layers, geometry and digest).

    URLs and keys are sorted, so authorities whose configs list them in another order
    still publish the same bytes and their signatures add up."""
    d = cfg.directory
    return NetworkBundle(
        authorities=tuple(sorted(d.authorities)),
        authority_keys=tuple(sorted(d.authority_keys)),
        threshold=d.threshold,
        epoch_length_s=d.epoch_length_s,
        genesis_s=d.genesis_s,
        mix_layers=d.mix_layers,
        geometry=cfg.authority.geometry,
        geometry_digest=cfg.geometry.digest,
        document_version=DOCUMENT_VERSION,
    )


def read_enrolment(data_dir: Path) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """(allowed, denied) identity keys from ``<data_dir>/enrolment.json`` (none if absent).

    AuthorityError naming the file if it is not ``{"allow": [hex], "deny": [hex]}``.
    """
    path = Path(data_dir) / ENROLMENT_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return frozenset(), frozenset()
    except OSError as exc:
        raise AuthorityError(f"{path}: {exc.strerror or exc}") from None
    try:
        obj = load_json(raw, ENROLMENT_FILE, max_bytes=MAX_ENROLMENT_BYTES)
        if not isinstance(obj, dict) or set(obj) != {"allow", "deny"}:
            raise DirectoryFieldError(ENROLMENT_FILE, "", "expected {allow, deny}")
        lists = []
        for name in ("allow", "deny"):
            keys = [_from_hex(k) for k in obj[name]] if isinstance(obj[name], list) else [None]
            if any(k is None or len(k) != 32 for k in keys):
                raise DirectoryFieldError(ENROLMENT_FILE, name, "expected 64-hex-digit keys")
            lists.append(frozenset(k for k in keys if k is not None))
    except DirectoryError as exc:
        raise AuthorityError(f"{path}: {exc}") from None
    return lists[0], lists[1]


def write_enrolment(data_dir: Path, allow: frozenset[bytes], deny: frozenset[bytes]) -> None:
    """Write ``<data_dir>/enrolment.json`` atomically (mode 0600), keys sorted."""
    body = {"allow": sorted(k.hex() for k in allow), "deny": sorted(k.hex() for k in deny)}
    write_secret_atomic(Path(data_dir) / ENROLMENT_FILE, canonical_json(body))


def parse_signature_reply(payload: bytes) -> tuple[bytes, DocumentSignature]:
    """A peer's ``/v1/signature/<epoch>`` reply: (32-byte digest, its signature).

    DirectoryFieldError naming the field (``signature reply.digest: ...``) if malformed;
    the signature is not checked here.
    """
    where = "signature reply"
    obj = load_json(payload, where, max_bytes=MAX_SIGNATURE_REPLY_BYTES)
    if not isinstance(obj, dict) or set(obj) != {"digest", "signature"}:
        raise DirectoryFieldError(where, "", "expected {digest, signature}")
    digest = _from_hex(obj["digest"])
    if digest is None or len(digest) != 32:
        raise DirectoryFieldError(where, "digest", "expected 32 bytes as lowercase hex")
    return digest, DocumentSignature.from_dict(obj["signature"], f"{where}.signature")


def _from_hex(value: object) -> bytes | None:
    """The bytes of a lowercase hex string, or None for anything else."""
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return raw if raw is not None and raw.hex() == value else None


def _same_url(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    loop = {"localhost", "127.0.0.1", "::1"}
    ha = "127.0.0.1" if pa.hostname in loop else pa.hostname
    hb = "127.0.0.1" if pb.hostname in loop else pb.hostname
    default = {"http": 80, "https": 443}
    return (ha, pa.port or default.get(pa.scheme)) == (hb, pb.port or default.get(pb.scheme))


# --------------------------------------------------------------------------------------
# HTTP


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "phantom-dirauth"
    sys_version = ""
    timeout = HANDLER_TIMEOUT_S  # a slow or silent client cannot hold a thread for long

    def setup(self) -> None:
        """Every read and write of this connection shares one deadline (HANDLER_TIMEOUT_S),
        so a client that sends or reads one byte at a time cannot hold a thread longer."""
        super().setup()
        self.rfile.close()
        self.deadline = DeadlineSocket(self.connection, Deadline(HANDLER_TIMEOUT_S))
        self.rfile = self.deadline.makefile("rb")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Never log requests: a request line would tie a client address to a time."""

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.deadline.arm()  # the reply too must be taken within the deadline
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, message: str) -> None:
        self._send(code, canonical_json({"error": message}))

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        auth = self.server.authority
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if parts[:2] == ["v1", "topology"] and len(parts) == 3:
            asked = auth.current_epoch() if parts[2] == "current" else parse_epoch(parts[2])
            if asked is None:
                return self._error(400, "epoch must be 'current' or a number")
            epoch = asked
            env = auth.signed(epoch)
            if env is None:
                return self._error(404, f"no document for epoch {epoch}")
            return self._send(200, env.to_bytes())
        sig_epoch = parse_epoch(parts[2]) if len(parts) == 3 else None
        if parts[:2] == ["v1", "signature"] and sig_epoch is not None:
            own = auth.own_signature(sig_epoch)
            if own is None:
                return self._error(404, "no document for that epoch")
            digest, sig = own
            return self._send(
                200, canonical_json({"digest": digest.hex(), "signature": sig.to_dict()})
            )
        if parts == ["v1", "descriptors"]:
            return self._send(200, auth.descriptors_payload())
        if parts == ["v1", "withdrawals"]:
            return self._send(200, auth.withdrawals_payload())
        if parts == ["v1", "network"]:
            return self._send(200, auth.network().to_bytes())
        if parts == ["v1", "network", "signature"]:
            fp, net_sig = auth.own_network_signature()
            return self._send(
                200, canonical_json({"digest": fp.hex(), "signature": net_sig.to_dict()})
            )
        if parts == ["v1", "health"]:
            return self._send(200, canonical_json(auth.status_report()))
        if parts == ["metrics"]:
            return self._send(200, self.server.render_metrics(), CONTENT_TYPE)
        return self._error(404, "unknown path")

    def do_POST(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0].rstrip("/")
        if path not in ("/v1/descriptor", "/v1/withdraw"):
            return self._error(404, "unknown path")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._error(411, "Content-Length required")
        if not 0 < length <= MAX_BODY_BYTES:
            self.close_connection = True
            return self._error(413, f"body must be 1..{MAX_BODY_BYTES} bytes")
        body = self.rfile.read(length)
        auth = self.server.authority
        try:
            if path == "/v1/withdraw":
                w = auth.withdraw(body)
                return self._send(200, canonical_json({"accepted": w.node_id.hex()}))
            desc = auth.submit(body)
        except DirectoryError as exc:
            return self._error(400, str(exc))
        self._send(200, canonical_json({"accepted": desc.node_id.hex()}))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    authority: Authority
    errors = 0  # requests that raised; counted, never logged with the client's address

    def __init__(self, address: tuple[str, int], handler: type[_Handler]) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.metrics = AuthorityMetrics([e.value for e in AuthorityEvent])

    def render_metrics(self) -> bytes:
        """The authority's metrics, brought up to date from its state."""
        m, report = self.metrics, self.authority.status_report()
        m.peers.set(report["peers"])
        m.peers_reachable.set(report["peers_reachable"])
        m.descriptors.set(report["descriptors"])
        m.enrolled.set(report["enrolled"])
        m.threshold.set(report["threshold"])
        doc = report["document"] or {"epoch": -1, "nodes": 0, "signatures": 0}
        m.document_epoch.set(doc["epoch"])
        m.document_nodes.set(doc["nodes"])
        m.document_signatures.set(doc["signatures"])
        m.last_signed.set(self.authority.last_signed_at)
        m.count_events(report["counters"])
        return m.registry.render().encode()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver would print the client's address and a traceback; count instead."""
        self.errors += 1

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, at most MAX_CONNECTIONS at once; others are closed."""
        if not self.slots.acquire(blocking=False):
            self.authority.count(AuthorityEvent.CONNECTION_SHED)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def make_server(authority: Authority, host: str, port: int) -> _Server:
    """An HTTP server for ``authority`` bound to ``host:port`` (port 0: any free port)."""
    server = _Server((host, port), _Handler)
    server.authority = authority
    return server


class RunningAuthority:
    """An authority served over HTTP with its round thread; ``stop()`` ends both."""

    def __init__(self, authority: Authority, host: str, port: int, round_interval_s: float):
        self.authority = authority
        self.server = make_server(authority, host, port)
        self.port: int = self.server.server_address[1]
        self.round_interval_s = round_interval_s
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self.server.serve_forever, name="dirauth-http", daemon=True),
            threading.Thread(target=self._rounds, name="dirauth-rounds", daemon=True),
        ]

    def start(self) -> RunningAuthority:
        """Start serving and running rounds (the first round runs at once)."""
        for t in self._threads:
            t.start()
        return self

    def _rounds(self) -> None:
        while not self._stop.is_set():
            try:
                self.authority.sync_round()
            except Exception as exc:  # a round must never kill the authority
                self.authority.count(AuthorityEvent.ROUND_FAILED)
                log.error("round failed: %s: %s", type(exc).__name__, exc)
            self._stop.wait(self.round_interval_s)

    def stop(self) -> None:
        """Stop the round thread and the HTTP server."""
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        for t in self._threads:
            t.join(timeout=5)


def load_authority(cfg: DirAuthConfig, **kwargs: Any) -> Authority:
    """Load the authority's signing key from its data dir and build its state."""
    seed = load_identity_seed(cfg.authority.data_dir / AUTHORITY_KEY_FILE)
    return Authority(cfg, seed, **kwargs)


def init_authority_key(data_dir: Path) -> bytes:
    """Create an authority signing key in ``data_dir`` (mode 0600); returns its public key."""
    seed = create_identity_seed(Path(data_dir) / AUTHORITY_KEY_FILE)
    return bytes(SigningKey(seed).verify_key)


def authority_public_key(data_dir: Path) -> bytes:
    """The public key of the authority whose data dir is ``data_dir``."""
    seed = load_identity_seed(Path(data_dir) / AUTHORITY_KEY_FILE)
    return bytes(SigningKey(seed).verify_key)


# --------------------------------------------------------------------------------------
# CLI


def _cmd_init(args: argparse.Namespace) -> int:
    """Check every argument and path first; then create the key, then write the config.

    A refused init writes nothing: running it again with the fix needs no --force.
    """
    cfg_path = Path(args.config)
    if cfg_path.is_file() and not args.force:  # anything else there: check_writable_file
        raise AuthorityError(f"{cfg_path} exists; use --force to overwrite the config")
    data_dir = Path(args.data_dir)
    # The data dir as `run` will see it: relative to the config's directory.
    abs_data = as_loaded_from(_init_config(args, data_dir, []), cfg_path).authority.data_dir
    key_path = abs_data / AUTHORITY_KEY_FILE
    new_seed: bytes | None = None
    if key_path.exists():
        pub = _public_key_or_field_error(abs_data)
    else:
        new_seed = SigningKey.generate().encode()
        pub = bytes(SigningKey(new_seed).verify_key)
    keys = [bytes.fromhex(k) for k in args.authority_key]
    if pub not in keys:
        keys.insert(0, pub)
    cfg = _init_config(args, data_dir, keys)  # every field checked: ConfigError names it
    check_writable_file("--config", cfg_path)
    check_writable_dir("authority.data_dir", abs_data)
    if new_seed is not None:
        try:
            create_identity_seed(key_path, new_seed)
        except OSError as exc:
            raise path_error("authority.data_dir", exc) from None
        except KeyStoreError as exc:
            raise ConfigError(f"authority.data_dir: {exc}") from None
    try:
        write_config(cfg_path, cfg)
    except OSError as exc:
        raise path_error("--config", exc) from None
    print(pub.hex())
    _warn_threshold(cfg)
    return 0


def _warn_threshold(cfg: DirAuthConfig) -> None:
    """A loud warning on stderr when one authority alone can sign documents."""
    d = cfg.directory
    if d.threshold == 1:
        print(
            f"phantom-dirauth: WARNING: directory.threshold is 1 ({len(d.authority_keys)} "
            "authority key(s)): this authority alone decides every document, and anyone "
            "holding its key can forge the network. Fine for a test; for a real network "
            "exchange keys with the other authorities and set --threshold to a majority.",
            file=sys.stderr,
        )


def _init_config(args: argparse.Namespace, data_dir: Path, keys: list[bytes]) -> DirAuthConfig:
    """The config ``init`` writes; with no keys yet, one placeholder so that it parses."""
    return make_dirauth_config(
        name=args.name,
        listen_host=args.listen_host,
        listen_port=args.listen_port,
        data_dir=data_dir,
        authorities=list(args.authority) or None,
        authority_keys=keys or [bytes(32)],
        threshold=args.threshold if keys else None,
        epoch_length_s=args.epoch_length_s,
        round_interval_s=args.round_interval_s,
        geometry=args.geometry,
    )


def _public_key_or_field_error(data_dir: Path) -> bytes:
    """``authority_public_key(data_dir)``; a missing or unsafe key names authority.data_dir."""
    try:
        return authority_public_key(data_dir)
    except OSError as exc:
        raise path_error("authority.data_dir", exc) from None
    except KeyStoreError as exc:
        raise ConfigError(f"authority.data_dir: {exc}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    cfg = load_dirauth_config(Path(args.config))
    a = cfg.authority
    check_genesis(cfg.directory, time.time())
    try:
        auth = load_authority(cfg)
    except OSError as exc:
        raise path_error("authority.data_dir", exc) from None
    except KeyStoreError as exc:
        raise ConfigError(f"authority.data_dir: {exc}") from None
    # Descriptors and documents are written as they come: a read-only mount is refused now.
    for sub in (DESCRIPTOR_DIR, DOCUMENT_DIR):
        check_writable_dir("authority.data_dir", a.data_dir / sub)
    try:
        running = RunningAuthority(auth, a.listen_host, a.listen_port, a.round_interval_s)
    except OSError as exc:
        host_field, port_field = "authority.listen_host", "authority.listen_port"
        raise bind_error(host_field, port_field, a.listen_host, a.listen_port, exc) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    def on_hup(signum: int, frame: object) -> None:
        try:
            allowed, denied = auth.reload_enrolment()
        except AuthorityError as exc:  # the lists in force stay
            print(f"phantom-dirauth: enrolment not reloaded: {exc}", file=sys.stderr, flush=True)
            return
        print(f"phantom-dirauth: enrolment: {allowed} allowed, {denied} denied", flush=True)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    _warn_threshold(cfg)
    pid_path = a.data_dir / PID_FILE
    pid_path.write_text(f"{os.getpid()}\n")
    running.start()
    print(
        f"phantom-dirauth: {cfg.authority.name} serving on "
        f"{cfg.authority.listen_host}:{running.port}, key {auth.public_key.hex()}",
        flush=True,
    )
    try:
        while not stop.is_set():
            stop.wait(0.5)
    finally:
        running.stop()
        pid_path.unlink(missing_ok=True)
    print("phantom-dirauth: stopped", flush=True)
    return 0


def _cmd_network(args: argparse.Namespace) -> int:
    """Fetch the network file from this (running) authority, verify it, write it."""
    cfg = load_dirauth_config(Path(args.config))
    a = cfg.authority
    host = "127.0.0.1" if a.listen_host == "0.0.0.0" else a.listen_host
    url = f"http://{host}:{a.listen_port}/v1/network"
    try:
        raw = http_exchange(url, deadline_s=NETWORK_TIMEOUT_S, max_bytes=MAX_NETWORK_BYTES)
        env = SignedNetwork.from_bytes(raw)
        bundle = env.verify()
    except DirectoryError as exc:
        raise AuthorityError(
            f"{url}: {exc} (peers' signatures arrive within a round or two; try again)"
        ) from None
    except OSError as exc:
        raise AuthorityError(f"{url}: {exc} (is the authority running?)") from None
    if args.out != "-":
        check_writable_file("--out", Path(args.out))
        try:
            Path(args.out).write_bytes(raw)
        except OSError as exc:
            raise path_error("--out", exc) from None
    else:
        sys.stdout.write(raw.decode("ascii") + "\n")
    print(
        f"network fingerprint {bundle.fingerprint.hex()} ({len(bundle.authority_keys)} "
        f"authorities, threshold {bundle.threshold})",
        file=sys.stderr if args.out == "-" else sys.stdout,
    )
    return 0


def _cmd_enrol(args: argparse.Namespace) -> int:
    """allow/deny: update enrolment.json, then SIGHUP the running authority if any."""
    cfg = load_dirauth_config(Path(args.config))
    data_dir = cfg.authority.data_dir
    key = bytes.fromhex(args.node_key)
    allow, deny = read_enrolment(data_dir)
    if args.command == "allow":
        allow, deny = allow | {key}, deny - {key}
    else:
        allow, deny = allow - {key}, deny | {key}
    try:
        write_enrolment(data_dir, allow, deny)
    except OSError as exc:
        raise path_error("authority.data_dir", exc) from None
    pid = _running_pid(data_dir / PID_FILE)
    done = "allowed" if args.command == "allow" else "denied"
    if pid is None:
        print(f"{done} {key.hex()}; no authority running here: it applies at the next start")
        return 0
    os.kill(pid, signal.SIGHUP)
    print(f"{done} {key.hex()}; authority (pid {pid}) reloads now, for the next document")
    if args.command == "allow" and cfg.authority.allowed_nodes == () and len(allow) == 1:
        print("note: enrolment is now closed: only allowed nodes are listed", file=sys.stderr)
    return 0


def _running_pid(path: Path) -> int | None:
    """The pid in ``path`` if that process is alive and a ``phantom-dirauth``, else None.

    A stale file whose pid now names another program gets no signal (SIGHUP would end
    it); AuthorityError if the authority runs as a user we may not signal.
    """
    try:
        pid = int(path.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if b"dirauth" not in cmdline:
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:
        raise AuthorityError(
            f"cannot signal the authority (pid {pid}): run this as its user, "
            f"or send it SIGHUP (kill -HUP {pid})"
        ) from None
    except OSError:
        return None
    return pid


def _cmd_status(args: argparse.Namespace) -> int:
    """Ask the running authority for its ``/v1/health``; exit 0 when its current document
    holds the threshold of signatures, 1 when not (or it does not answer), 2 config."""
    cfg = load_dirauth_config(Path(args.config))
    a = cfg.authority
    host = "127.0.0.1" if a.listen_host == "0.0.0.0" else a.listen_host
    url = f"http://{host}:{a.listen_port}/v1/health"
    try:
        raw = http_exchange(url, deadline_s=STATUS_TIMEOUT_S, max_bytes=MAX_STATUS_BYTES)
        report = load_json(raw, "health", max_bytes=MAX_STATUS_BYTES)
    except (OSError, DirectoryError, ValueError) as exc:
        why = f"cannot read {url}: {type(exc).__name__}: {exc} (is the authority running?)"
        if args.json:
            print(json.dumps({"name": a.name, "serving": False, "why_not": why}))
        else:
            print(f"phantom-dirauth: {why}", file=sys.stderr)
        return EXIT_FAILED
    if not isinstance(report, dict) or "serving" not in report:
        print(f"phantom-dirauth: {url}: not a status report (an older authority?)", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        doc = report.get("document") or {}
        state = "serving" if report["serving"] else "NOT serving (too few signatures)"
        print(f"authority {report.get('name')}  version {report.get('version')}  {state}")
        print(f"epoch     {report.get('epoch')}")
        print(
            f"document  {doc.get('nodes', '-')} nodes, {doc.get('signatures', 0)} signatures "
            f"(threshold {report.get('threshold')}), last signed at {doc.get('last_signed_at')}"
        )
        print(f"peers     {report.get('peers_reachable')} of {report.get('peers')} reachable")
        enrolled = report.get("enrolled") or "open enrolment"
        print(f"nodes     {report.get('descriptors')} descriptors held; enrolled: {enrolled}")
        counters = report.get("counters") or {}
        for name, n in sorted(counters.items()):
            if n:
                print(f"  {name} {n}")
    return EXIT_OK if report["serving"] else EXIT_FAILED


def _cmd_key(args: argparse.Namespace) -> int:
    cfg = load_dirauth_config(Path(args.config))
    print(_public_key_or_field_error(cfg.authority.data_dir).hex())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``phantom-dirauth`` argument parser."""
    p = argparse.ArgumentParser(
        prog="phantom-dirauth", description=__doc__.splitlines()[0], formatter_class=HelpFormatter
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser(
        "init", help="create a signing key and write a config", formatter_class=HelpFormatter
    )
    i.add_argument("--config", required=True, help="path of the TOML config to write")
    i.add_argument("--name", required=True, help="operator label of this authority")
    i.add_argument("--listen-host", default="127.0.0.1", help="address the HTTP server binds")
    i.add_argument("--listen-port", type=port, required=True, help="HTTP port")
    i.add_argument("--data-dir", required=True, help="signing key, descriptors, documents")
    i.add_argument(
        "--authority",
        action="append",
        default=[],
        help="URL of every authority (repeat; default: this one alone)",
    )
    i.add_argument(
        "--authority-key", action="append", default=[], type=hex_key, help="peer key (repeat)"
    )
    i.add_argument(
        "--threshold", type=whole_number(1), help="signatures required (default: majority)"
    )
    i.add_argument("--epoch-length-s", type=int, default=3600, help="seconds per epoch")
    i.add_argument("--round-interval-s", type=float, default=5.0, help="seconds between rounds")
    i.add_argument("--geometry", choices=tuple(GEOMETRIES), default="voice", help="packet format")
    i.add_argument("--force", action="store_true", help="overwrite an existing config")
    i.set_defaults(func=_cmd_init)
    r = sub.add_parser(
        "run", help="serve documents until SIGTERM/SIGINT", formatter_class=HelpFormatter
    )
    r.add_argument("--config", required=True, help="path of the authority's TOML config")
    add_logging_options(r)
    r.set_defaults(func=_cmd_run)
    st = sub.add_parser(
        "status",
        help="is the authority serving a signed document? (exit 0 yes, 1 no, 2 config error)",
        formatter_class=HelpFormatter,
    )
    st.add_argument("--config", required=True, help="path of the authority's TOML config")
    st.add_argument("--json", action="store_true", help="print one JSON object")
    st.set_defaults(func=_cmd_status)
    k = sub.add_parser(
        "key", help="print this authority's public key (hex)", formatter_class=HelpFormatter
    )
    k.add_argument("--config", required=True, help="path of the authority's TOML config")
    k.set_defaults(func=_cmd_key)
    n = sub.add_parser(
        "network",
        help="write the network file (signed bundle) served by this running authority",
        formatter_class=HelpFormatter,
    )
    n.add_argument("--config", required=True, help="path of the authority's TOML config")
    n.add_argument("--out", required=True, help="file to write ('-': standard output)")
    n.set_defaults(func=_cmd_network)
    for name, what in (
        ("allow", "allow a node (identity key); once any is allowed, only allowed ones are listed"),
        ("deny", "never list a node (identity key)"),
    ):
        e = sub.add_parser(
            name,
            help=f"{what}; from the next document on, no restart",
            formatter_class=HelpFormatter,
        )
        e.add_argument("node_key", type=hex_key, help="the node's identity key (64 hex digits)")
        e.add_argument("--config", required=True, help="path of the authority's TOML config")
        e.set_defaults(func=_cmd_enrol)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``phantom-dirauth``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ConfigError, KeyStoreError, AuthorityError) as exc:
        print(f"phantom-dirauth: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # at run time (start-up failures are ConfigErrors above)
        where = f"{exc.filename}: " if exc.filename is not None else ""
        print(f"phantom-dirauth: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
