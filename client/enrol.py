"""Joining a network: its signed network file, its current topology, a gateway.

    raw, bundle = load_network("network.json")            # or an authority's URL
    doc = fetch_topology(bundle, now=time.time())          # threshold-verified
    gateway = choose_gateway(doc)                          # uniform among listed gateways

The client reads the network file as ``phantom-mixnode init --network`` does (overlay's
``SignedNetwork``: a threshold of the bundle's own authorities must have signed it; a
pinned fingerprint makes it more than trust on first use; the geometry must be one this
version speaks), and fetches ``/v1/topology/current`` from every authority of the bundle
with ``urllib`` (size-limited, with a timeout), merging the signatures each one holds for
the same document bytes until ``overlay.verify_document`` accepts them under the bundle's
threshold. Everything wrong is an :class:`EnrolError` naming the source.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request

from overlay import (
    MAX_NETWORK_BYTES,
    DirectoryError,
    DocumentSignature,
    NetworkBundle,
    NodeDescriptor,
    PhantomError,
    Rng,
    SignedDocument,
    TopologyDocument,
    geometry_by_name,
    network_file_url,
    open_network_file,
    uniform_index,
    verify_document,
)

FETCH_TIMEOUT_S = 10.0  # s per HTTP exchange (network file, each authority's document)
MAX_TOPOLOGY_BYTES = 8 * 1024 * 1024  # bytes of a signed topology document read at most


class EnrolError(PhantomError):
    """The network or its topology cannot be used; the message names the source."""


class NetworkFileError(EnrolError):
    """The network file (or what a URL served as one) is missing, malformed, not signed
    by its threshold, not the pinned one, or of a geometry this version does not speak."""


def http_get(url: str, max_bytes: int, timeout_s: float = FETCH_TIMEOUT_S) -> bytes:
    """The body of ``GET url`` (http or https only), at most ``max_bytes`` bytes, within
    ``timeout_s`` seconds for the whole exchange (a server that drips its reply does not
    hold the caller longer). OSError (urllib's errors are OSErrors; TimeoutError past the
    deadline; a reply that is not HTTP, or a broken chunk, as a ConnectionError naming
    it) or ValueError for an oversized reply."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    deadline = time.monotonic() + timeout_s
    chunks: list[bytes] = []
    size = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (checked)
            while size <= max_bytes:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no whole reply within {timeout_s:g} s")
                chunk: bytes = resp.read1(min(65536, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except http.client.HTTPException as exc:  # not an OSError: BadStatusLine, IncompleteRead
        raise ConnectionError(f"a malformed HTTP reply ({type(exc).__name__})") from None
    if size > max_bytes:
        raise ValueError(f"reply larger than {max_bytes} bytes")
    return b"".join(chunks)


def load_network(
    source: str, fingerprint: bytes | None = None, timeout_s: float = FETCH_TIMEOUT_S
) -> tuple[bytes, NetworkBundle]:
    """The network file's bytes and its verified bundle, from a path or an authority's
    ``http(s)://`` URL (its ``/v1/network``); ``fingerprint`` (32 bytes) pins the bundle.
    NetworkFileError naming ``source`` for anything wrong."""
    try:
        url = network_file_url(source)
        if url is not None:
            raw = http_get(url, MAX_NETWORK_BYTES, timeout_s)
        else:
            with open(source, "rb") as f:
                raw = f.read(MAX_NETWORK_BYTES + 1)
        return raw, open_network_file(raw, fingerprint)
    except (PhantomError, OSError, ValueError) as exc:
        raise NetworkFileError(f"--network: {source}: {exc}") from None


def fetch_topology(
    bundle: NetworkBundle, now: float, timeout_s: float = FETCH_TIMEOUT_S
) -> TopologyDocument:
    """The current topology document of ``bundle``'s network, signed by at least its
    threshold of its authorities and valid at ``now`` (unix seconds).

    Asks each authority in turn (``timeout_s`` each) and merges the signatures served for
    the same document bytes. EnrolError listing what each authority did if none is
    reachable or no document verifies.
    """
    geometry = geometry_by_name(bundle.geometry)
    merged: dict[bytes, dict[bytes, DocumentSignature]] = {}
    problems = []
    for url in bundle.authorities:
        try:
            raw = http_get(f"{url.rstrip('/')}/v1/topology/current", MAX_TOPOLOGY_BYTES, timeout_s)
            env = SignedDocument.from_bytes(raw)
        except (PhantomError, OSError, ValueError) as exc:
            problems.append(f"{url}: {exc}")
            continue
        sigs = merged.setdefault(env.document, {})
        for s in env.signatures:
            sigs.setdefault(s.authority_key + s.signature, s)
        try:
            return verify_document(
                env.document,
                sigs.values(),
                bundle.authority_keys,
                bundle.threshold,
                geometry=geometry,
                now=now,
            )
        except DirectoryError as exc:
            problems.append(f"{url}: {exc}")
    raise EnrolError("no verifiable topology document: " + "; ".join(problems))


def choose_gateway(doc: TopologyDocument, rng: Rng = os.urandom) -> NodeDescriptor:
    """A gateway of ``doc``, uniformly at random; EnrolError if it lists none."""
    if not doc.gateways:
        raise EnrolError(f"the topology document of epoch {doc.epoch} lists no gateway")
    return doc.gateways[uniform_index(len(doc.gateways), rng)]
