"""Real processes: epoch keys rotate with an overlap (10 s epochs; ~20 s). Marked slow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from testnet_support import small_testnet

from overlay import MailboxKey, seconds_until_next_epoch
from testbed import loadgen
from testbed.testnet import TestnetState, scrape

pytestmark = pytest.mark.slow
EPOCH_S = 10


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestnetState]:
    d = Path(tmp_path_factory.mktemp("rotation"))
    if seconds_until_next_epoch(time.time(), EPOCH_S) < 6:
        time.sleep(seconds_until_next_epoch(time.time(), EPOCH_S) + 0.2)  # start early in one
    with small_testnet(d, epoch_length_s=EPOCH_S, delivery_rate_hz=100.0) as state:
        yield state


async def test_packets_built_for_either_epoch_get_through_the_rotation(net: TestnetState) -> None:
    old = loadgen.fetch_topology(net)
    gw = old.gateways[0].node_id
    key = MailboxKey.generate()
    box = key.mailbox_id
    # Built now, sent after the epoch changed: the previous key must still open them.
    late = [loadgen.forward_packet(old, gw, gw, box, b"old-%d" % i)[1] for i in range(3)]
    await trio.sleep(seconds_until_next_epoch(time.time(), EPOCH_S) + 1.5)
    new = loadgen.fetch_topology(net)
    assert new.epoch == old.epoch + 1
    mix = new.layers[0][0]
    assert mix.epoch_key(new.epoch) != old.layers[0][0].epoch_key(old.epoch)
    fresh = [loadgen.forward_packet(new, gw, gw, box, b"new-%d" % i)[1] for i in range(3)]
    got: set[bytes] = set()
    async with loadgen.attach(new, gw, key) as link:
        for pkt in late + fresh:
            await link.send(pkt)
        with trio.move_on_after(5):
            while len(got) < 6:
                got.add((await link.receive()).delivery.data)
    assert got == {b"old-0", b"old-1", b"old-2", b"new-0", b"new-1", b"new-2"}
    (mix_proc,) = net.nodes("mix")
    m = scrape(mix_proc.metrics_port)
    assert m.get('phantom_drops_total{reason="mac_mismatch"}', 0) == 0
