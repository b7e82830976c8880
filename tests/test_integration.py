"""Real processes: a local testnet carries packets end to end, replies, survives a dead mix.

Marked slow: starts 3 authorities, 2 gateways and 6 mixes on loopback (~20 s).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from overlay import DownlinkKind, MailboxKey, create_reply, open_reply
from testbed import loadgen
from testbed.testnet import TestnetOptions, TestnetState, down, up

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def testnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestnetState]:
    d = tmp_path_factory.mktemp("testnet")
    opts = TestnetOptions(
        directory=Path(d),
        base_port=0,  # free ports chosen by the kernel
        loop_cover_rate_hz=0.5,
        delivery_rate_hz=200.0,
    )
    state = up(opts)
    try:
        yield state
    finally:
        down(Path(d))
        assert not any(_running(p.pid) for p in state.processes)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


async def test_end_to_end_with_reply_and_a_dead_mix(testnet: TestnetState) -> None:
    doc = loadgen.fetch_topology(testnet)
    assert len(doc.gateways) == 2 and [len(layer) for layer in doc.layers] == [2, 2, 2]
    gw_a, gw_b = (loadgen.gateway_id(doc, p.port) for p in testnet.nodes("gateway"))
    key_a, key_b = MailboxKey.generate(), MailboxKey.generate()
    box_a, box_b = key_a.mailbox_id, key_b.mailbox_id
    async with loadgen.attach(doc, gw_a, key_a) as alice, loadgen.attach(doc, gw_b, key_b) as bob:
        # 1. Forward messages alice -> bob across 5 hops.
        sent = {}
        for seq in range(30):
            msg = loadgen.stamp(seq)
            _, pkt = loadgen.forward_packet(doc, gw_a, gw_b, box_b, msg)
            sent[seq] = msg
            await alice.send(pkt)
            await trio.sleep(0.01)
        got = {}
        with trio.move_on_after(5):
            while len(got) < len(sent):
                r = await bob.receive()
                assert r.delivery.kind is DownlinkKind.MESSAGE
                got[loadgen.read_stamp(r.delivery.data)[0]] = r.delivery.data
        assert got == sent

        # 2. A SURB reply: bob answers through his own gateway without learning alice's.
        surb, keys = loadgen.reply_block(doc, gw_b, gw_a, box_a)
        first_hop, reply = create_reply(doc.geometry, surb, b"reply from bob")
        assert first_hop == gw_b
        await bob.send(reply)
        with trio.fail_after(5):
            r = await alice.receive()
        assert r.delivery.kind is DownlinkKind.REPLY
        assert r.delivery.data[:16] == keys.surb_id
        assert open_reply(doc.geometry, keys, r.delivery.data[16:]) == b"reply from bob"

        # 3. Stream, kill a layer-2 mix mid-stream, route around it.
        victim = next(p for p in testnet.nodes("mix") if p.layer == 2)
        victim_id = next(n.node_id for n in doc.layers[1] if n.port == victim.port)
        paths: dict[int, bool] = {}  # seq -> went through the victim
        sent_at: dict[int, float] = {}
        avoid: set[bytes] = set()
        received: set[int] = set()

        async def collect() -> None:
            while True:
                r = await bob.receive()
                received.add(loadgen.read_stamp(r.delivery.data)[0])

        kill_at = 0.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            for seq in range(1000, 1240):
                if seq == 1120:
                    os.kill(victim.pid, signal.SIGKILL)
                    kill_at = time.time()
                    avoid.add(victim_id)  # the client learns the mix is gone
                hops, pkt = loadgen.forward_packet(
                    doc, gw_a, gw_b, box_b, loadgen.stamp(seq), avoid=avoid
                )
                paths[seq] = any(h.node_id == victim_id for h in hops)
                sent_at[seq] = time.time()
                await alice.send(pkt)
                await trio.sleep(0.012)
            await trio.sleep(2.0)
            nursery.cancel_scope.cancel()
        lost = set(paths) - received
        # Only packets that went through the dead mix are lost...
        assert all(paths[s] for s in lost), sorted(lost)
        # ...and only those that were inside it (sent shortly before the kill).
        assert all(kill_at - 1.0 < sent_at[s] <= kill_at for s in lost), sorted(lost)
        assert not any(paths[s] for s in range(1120, 1240))  # routed around it afterwards
        assert len(received) >= len(paths) - 20
        assert alice.stats["bad_frames"] == bob.stats["bad_frames"] == 0
