"""The node's one directory loop (mixnode.daemon.Node) against an in-memory directory, on
Trio's virtual clock: what it publishes, when, what it adopts, how it counts failures."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from mixnode.config import make_node_config
from mixnode.daemon import Node
from mixnode.directory_client import DirectoryFailed, DirectoryFailure
from mixnode.keys import NodeKeys
from overlay import (
    DIRECTORY_REFRESH_S,
    DIRECTORY_SETTLE_S,
    VOICE,
    NodeDescriptor,
    TopologyDocument,
    build_document,
    epoch_start,
)

EPOCH_S = 600
EPOCH = 2000
T0 = epoch_start(EPOCH, EPOCH_S) + 60.0  # unix seconds when the virtual clock reads 0


class MemoryDirectory:
    """Holds what the node publishes; the ``*_failures`` fail the next calls, in order."""

    def __init__(self) -> None:
        self.held: list[NodeDescriptor] = []
        self.published: list[int] = []  # the first epoch of each descriptor published
        self.fetches = 0
        self.publish_failures: list[Exception] = []
        self.fetch_failures: list[Exception] = []

    async def publish(self, descriptor: bytes, signature: bytes) -> None:
        if self.publish_failures:
            raise self.publish_failures.pop(0)
        desc = NodeDescriptor.from_bytes(descriptor)
        self.held = [desc]
        self.published.append(min(desc.epoch_keys))

    async def fetch(self, epoch: int) -> TopologyDocument:
        self.fetches += 1
        if self.fetch_failures:
            raise self.fetch_failures.pop(0)
        return build_document(epoch, epoch_length_s=EPOCH_S, geometry=VOICE, descriptors=self.held)


def _node(tmp_path: Path, directory: MemoryDirectory) -> Node:
    cfg = make_node_config(
        name="mix-1", role="mix", layer=1, listen_port=31011, data_dir=tmp_path / "d",
        authorities=["http://127.0.0.1:9"], authority_keys=[bytes(32)], epoch_length_s=EPOCH_S,
    )  # fmt: skip
    node = Node(
        cfg,
        directory,
        NodeKeys.load_or_create(tmp_path / "d"),
        wall_clock=lambda: T0 + trio.current_time(),
    )
    node.port = 31011  # as bound
    return node


async def _run_for(node: Node, seconds: float) -> trio.Event:
    listed = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node._directory_loop, listed)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return listed


async def test_publishes_once_per_epoch_and_follows_the_document(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    directory = MemoryDirectory()
    node = _node(tmp_path, directory)
    listed = await _run_for(node, 2 * EPOCH_S)  # into the epoch after the next
    assert listed.is_set() and node.listed
    assert directory.published == [EPOCH, EPOCH + 1, EPOCH + 2]
    assert node.topology is not None and node.topology.epoch == EPOCH + 2
    assert node.node_id in node.topology.by_id
    # Each epoch's new document is followed every second until settled (15 s), then
    # fetched every 30 s (min(600 / 20, 30)); the loop also wakes at each epoch's start.
    settled = 2 * EPOCH_S / DIRECTORY_REFRESH_S
    assert settled <= directory.fetches <= settled + 3 * (DIRECTORY_SETTLE_S + 1) + 3


async def test_failures_are_counted_by_reason_and_retried(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    directory = MemoryDirectory()
    directory.publish_failures = [ConnectionRefusedError("refused")]
    directory.fetch_failures = [DirectoryFailed("no authority", [DirectoryFailure.THRESHOLD])]
    node = _node(tmp_path, directory)
    listed = await _run_for(node, 10.0)
    errors = node.metrics.directory_errors
    assert errors.value(DirectoryFailure.UNREACHABLE.value) == 1
    assert errors.value(DirectoryFailure.THRESHOLD.value) == 1
    assert listed.is_set() and node.directory_error is None  # reachable again
    assert directory.published == [EPOCH, EPOCH]  # the failed fetch had it publish again
