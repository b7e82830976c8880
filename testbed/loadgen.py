"""A small mixnet client for tests, demos and the benchmark: real topology, real link.

    doc = fetch_topology(state)                                  # verified, threshold
    key = MailboxKey.generate()                                  # owns key.mailbox_id
    async with attach(doc, gateway_id, key) as link:             # encrypted UDP link
        await link.send(forward_packet(doc, gateway_id, peer_gw, peer_mailbox, b"hi"))

Messages built with :func:`stamp` carry a sequence number and the send time, so the
receiver can measure loss and latency end to end.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from client.gateway_link import GatewayLink, open_gateway_link
from mixnode.directory_client import DirectoryClient
from overlay import (
    Hop,
    MailboxKey,
    Surb,
    SurbKeys,
    TopologyDocument,
    create_forward,
    create_surb,
    select_path,
)

from ._state import TestnetState

DEFAULT_MEAN_DELAY_S = 0.005  # seconds per hop for test traffic
_STAMP = struct.Struct(">Qd")  # sequence number, send time (unix seconds)


def fetch_topology(state: TestnetState) -> TopologyDocument:
    """The testnet's current document, verified against its authorities' threshold."""
    client = DirectoryClient(state.authorities, state.authority_key_bytes(), state.threshold)
    return client.fetch()


def gateway_id(doc: TopologyDocument, port: int) -> bytes:
    """The node id of the gateway listening on UDP ``port``."""
    for g in doc.gateways:
        if g.port == port:
            return g.node_id
    raise LookupError(f"no gateway on port {port}")


@asynccontextmanager
async def attach(
    doc: TopologyDocument, gateway: bytes, mailbox_key: MailboxKey
) -> AsyncIterator[GatewayLink]:
    """Open an encrypted link to ``gateway`` (a node id in ``doc``) for the mailbox that
    ``mailbox_key`` owns (its id is ``mailbox_key.mailbox_id``)."""
    g = doc.node(gateway)
    assert g.client_port is not None
    async with open_gateway_link(
        doc.geometry, (g.host, g.client_port), g.epoch_key(doc.epoch), mailbox_key
    ) as link:
        yield link


def path(
    doc: TopologyDocument,
    entry: bytes,
    exit_: bytes,
    *,
    mean_delay_s: float = DEFAULT_MEAN_DELAY_S,
    avoid: Iterable[bytes] = (),
) -> list[Hop]:
    """A fresh random path entry gateway -> one mix per layer -> exit gateway."""
    return select_path(doc, entry, exit_, mean_delay_s, avoid=avoid)


def forward_packet(
    doc: TopologyDocument,
    entry: bytes,
    exit_: bytes,
    mailbox: bytes,
    message: bytes,
    *,
    mean_delay_s: float = DEFAULT_MEAN_DELAY_S,
    avoid: Iterable[bytes] = (),
) -> tuple[list[Hop], bytes]:
    """(path, packet) for ``message`` to ``mailbox`` at gateway ``exit_``."""
    hops = path(doc, entry, exit_, mean_delay_s=mean_delay_s, avoid=avoid)
    return hops, create_forward(doc.geometry, hops, mailbox, message)


def reply_block(
    doc: TopologyDocument,
    replier_gateway: bytes,
    own_gateway: bytes,
    own_mailbox: bytes,
    *,
    mean_delay_s: float = DEFAULT_MEAN_DELAY_S,
) -> tuple[Surb, SurbKeys]:
    """A SURB the peer (attached to ``replier_gateway``) can send back to our mailbox."""
    hops = path(doc, replier_gateway, own_gateway, mean_delay_s=mean_delay_s)
    return create_surb(doc.geometry, hops, own_mailbox)


def stamp(seq: int, size: int = 64) -> bytes:
    """A test message: sequence number, send time, random padding to ``size`` bytes."""
    head = _STAMP.pack(seq, time.time())
    return head + os.urandom(max(0, size - len(head)))


def read_stamp(message: bytes) -> tuple[int, float]:
    """(sequence number, send time) of a :func:`stamp` message."""
    seq, sent = _STAMP.unpack_from(message)
    return int(seq), float(sent)
