"""A caller's media receive path in whole calls on virtual time, over the in-memory Sphinx
network of ``test_call``: what each delivery is counted as, and peers whose voice profile
differs from ours."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import trio
import trio.testing
from test_call import MemoryLink, MemoryNet, _network, _Received

from client import Direction, InMemoryChannel, VoiceProfile, artificial_voice, derive_media_keys
from client._call_media import MediaIn, MediaOut
from client._jitter import JitterConfig
from client.call import Address, Caller, Contact

TAMPER_AT = 200  # a byte of the media ciphertext past the header-protection sample


class TamperLink:
    """B's gateway link: before every ``every``-th delivery once the call is up, hands the
    caller a copy with one byte flipped, then checks what the original turned out to be."""

    def __init__(self, inner: MemoryLink, every: int, limit: int):
        self.inner, self.every, self.limit = inner, every, limit
        self.caller: Caller | None = None  # set once the caller that owns the link exists
        self.tampered: Counter[str] = Counter()  # what the originals were: media or not
        self._seen = 0
        self._pending: tuple[Counter[str], Counter[str]] | None = None

    async def send(self, packet: bytes) -> None:
        await self.inner.send(packet)

    async def receive(self) -> _Received:
        caller = self.caller
        assert caller is not None
        if self._pending is not None:  # the original was delivered after our last return
            before, after_copy = self._pending
            was_media = caller.received["media"] > after_copy["media"]
            copy = after_copy - before
            assert copy == Counter({"media_forged" if was_media else "cover": 1})
            self.tampered["media" if was_media else "other"] += 1
            self._pending = None
        received = await self.inner.receive()
        if caller.connected.is_set() and sum(self.tampered.values()) < self.limit:
            self._seen += 1
            if self._seen % self.every == 0:
                bad = bytearray(received.delivery.data)
                bad[TAMPER_AT] ^= 0x40
                before = caller.received.copy()
                caller.deliver(bytes(bad), received.at)
                self._pending = (before, caller.received.copy())
        return received


async def _run_call(
    profiles: tuple[VoiceProfile, VoiceProfile], *, tamper_every: int = 0
) -> tuple[Caller, Caller, TamperLink | None]:
    """A calls B and both talk for 2.5 s; with ``tamper_every``, B's link tampers (at most
    8 deliveries)."""
    doc, secrets = _network()
    async with trio.open_nursery() as nursery:
        net = MemoryNet(doc, secrets, nursery)
        chan_a, chan_b = InMemoryChannel.pair()
        key = os.urandom(32)
        a_addr = Address(doc.gateways[0].node_id, os.urandom(16))
        b_addr = Address(doc.gateways[1].node_id, os.urandom(16))
        voice = artificial_voice(4.0, seed=1)
        link_b = net.link(b_addr)
        tamper = TamperLink(link_b, tamper_every, limit=8) if tamper_every else None
        a = Caller(net.link(a_addr), doc, a_addr, Contact(b_addr, key), chan_a, voice,
                   profile=profiles[0], mean_delay_s=0.01)  # fmt: skip
        b = Caller(tamper or link_b, doc, b_addr, Contact(a_addr, key), chan_b, voice,
                   profile=profiles[1], mean_delay_s=0.01)  # fmt: skip
        if tamper is not None:
            tamper.caller = b
        await nursery.start(a.run)
        await nursery.start(b.run)
        await trio.sleep(0.5)  # online before the call: loops reach their owners
        a.place()
        with trio.fail_after(5):
            await a.connected.wait()
            await b.connected.wait()
        await trio.sleep(2.5)
        a.hangup()
        with trio.fail_after(5):
            await b.ended.wait()
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()
    return a, b, tamper


async def test_a_clean_call_counts_no_forged_media_and_each_kind_apart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b, _ = await _run_call((VoiceProfile(), VoiceProfile()))
    for caller in (a, b):
        got = caller.received
        assert got["media_forged"] == 0 and got["media_replayed"] == 0
        assert got["media"] > 50 and got["signal_frames"] > 0 and got["cover"] > 0
        assert set(got) <= {"media", "signal_frames", "cover"}


async def test_a_tampered_media_packet_counts_exactly_once_as_forged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b, tamper = await _run_call((VoiceProfile(), VoiceProfile()), tamper_every=7)
    assert tamper is not None and tamper.tampered["media"] >= 3  # most deliveries are media
    assert b.received["media_forged"] == tamper.tampered["media"]
    assert a.received["media_forged"] == 0


@pytest.mark.parametrize(
    "peer",
    [VoiceProfile(sample_rate_hz=8000), VoiceProfile(frame_ms=40, bitrate_bps=12000)],
    ids=["8kHz", "40ms"],
)
async def test_a_peer_with_another_profile_loses_no_frames_as_duplicates(
    autojump_clock: trio.testing.MockClock, peer: VoiceProfile
) -> None:
    a, b, _ = await _run_call((VoiceProfile(), peer))
    for tx, rx in ((a, b), (b, a)):  # 16 kHz/20 ms receiving from the peer, and back
        sent = tx.tx.frames_sent
        played = [i for i, kind, _ in rx.rx.items if kind == "frame"]
        stats = rx.rx.stats
        assert stats is not None and sent > 50
        # Each frame comes at most twice (its packet and the next one's redundancy) and
        # is played once under its own index.
        assert stats.duplicates <= sent and len(played) == len(set(played))
        assert 0.9 * sent <= len([i for i in played if i < sent]) <= sent


def test_without_keep_pcm_played_audio_goes_to_the_sink_only() -> None:
    """An always-on client without a speaker file keeps no decoded audio (about 115 MB per
    hour of call); a live speaker still gets every frame, and the trace its items."""
    keys = derive_media_keys(bytes(32), bytes(16), Direction.CALLER_TO_CALLEE)
    profile = VoiceProfile()
    played: dict[bool, list[int]] = {}
    for keep in (True, False):
        out, into = MediaOut(artificial_voice(1.0), profile), MediaIn(JitterConfig())
        out.start(profile, keys, capture_start=0.0)
        into.start(profile, keys)
        into.trace.keep_pcm = keep
        sink: list[int] = []
        into.on_play = lambda pcm, sink=sink: sink.append(len(pcm))
        for k in range(20):
            sealed = out.seal_next()
            assert sealed is not None
            into.open(sealed[1], at=0.1 + 0.04 * k)
        start, frame_s = into.grid()
        for k in range(30):
            into.play(start + k * frame_s)
        assert len(sink) == len(into.trace.items) >= 30
        assert len(into.trace.pcm) == (len(into.trace.items) if keep else 0)
        played[keep] = sink
    assert played[True] == played[False]
