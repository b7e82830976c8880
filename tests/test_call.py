"""Caller: constant-rate uplink, signaling frames, a whole call on virtual time.

The in-memory network here runs the real Sphinx code at every hop (``process_packet``
with each node's private key) and delivers to the mailbox's caller after the hop delays
plus a fixed link delay; ``tests/test_call_testnet.py`` does the same over real processes.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pytest
import trio
import trio.testing
from cryptography.exceptions import InvalidTag
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from client import InMemoryChannel, artificial_voice
from client._signaling import CallState
from client.call import Address, Caller, Contact, SignalFramer
from overlay import (
    VOICE,
    CoverKind,
    Deliver,
    Delivery,
    Discard,
    DownlinkKind,
    Forward,
    NodeDescriptor,
    NodeRole,
    SlotKind,
    TopologyDocument,
    UsageError,
    build_document,
    generate_private_key,
    node_id_for,
    process_packet,
    public_key,
)
from testbed.callcli import main

EPOCH = 7
LINK_S = 0.005  # one-way delay of every in-memory link


def _node(
    i: int, role: NodeRole, layer: int, *, keyed: bool = True
) -> tuple[NodeDescriptor, bytes]:
    """A descriptor and its X25519 secret; ``keyed=False``: no key for ``EPOCH`` (left out)."""
    ik = bytes(SigningKey(os.urandom(32)).verify_key)
    sk = generate_private_key()
    desc = NodeDescriptor(
        node_id=node_id_for(ik), name=f"n{i}", role=role, layer=layer, host="127.0.0.1",
        port=4000 + i, client_port=5000 + i if role is NodeRole.GATEWAY else None,
        identity_key=ik, epoch_keys={EPOCH if keyed else EPOCH + 5: public_key(sk)},
    )  # fmt: skip
    return desc, sk


def _network(
    layers: tuple[int, ...] = (1, 2, 3),
) -> tuple[TopologyDocument, dict[bytes, bytes]]:
    """Two gateways and two mixes in each of ``layers`` (of 3)."""
    nodes, secrets = [], {}
    specs = [(NodeRole.GATEWAY, 0)] * 2 + [(NodeRole.MIX, layer) for layer in layers] * 2
    for i, (role, layer) in enumerate(specs):
        desc, sk = _node(i, role, layer)
        nodes.append(desc)
        secrets[desc.node_id] = sk
    doc = build_document(EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=nodes)
    return doc, secrets


@dataclass(frozen=True, slots=True)
class _Received:
    delivery: Delivery
    at: float


class MemoryNet:
    """Sphinx through every hop in memory; deliveries go to the caller of the mailbox."""

    def __init__(self, doc: TopologyDocument, secrets: dict[bytes, bytes], nursery: trio.Nursery):
        self.doc, self.secrets, self.nursery = doc, secrets, nursery
        self.inboxes: dict[bytes, trio.MemorySendChannel[_Received]] = {}
        self.dropped = 0
        self.dead: set[bytes] = set()  # nodes that drop whatever reaches them (killed)
        # Extra seconds a delivery waits at its exit gateway: (mailbox, message) -> seconds.
        self.hold: Callable[[bytes, bytes], float] = lambda mailbox, message: 0.0

    def link(self, address: Address) -> MemoryLink:
        send, recv = trio.open_memory_channel[_Received](10_000)
        self.inboxes[address.mailbox] = send
        return MemoryLink(self, address.gateway_id, recv)

    async def carry(self, node: bytes, packet: bytes) -> None:
        while True:
            await trio.sleep(LINK_S)
            if node in self.dead:
                self.dropped += 1
                return
            result = process_packet(self.doc.geometry, self.secrets[node], packet)
            await trio.sleep(result.delay_us / 1e6)
            match result:
                case Forward():
                    node, packet = result.next_hop, result.packet
                case Deliver():
                    await trio.sleep(self.hold(result.mailbox, result.message))
                    delivery = Delivery(DownlinkKind.MESSAGE, result.message)
                    self.inboxes[result.mailbox].send_nowait(
                        _Received(delivery, trio.current_time())
                    )
                    return
                case _:
                    self.dropped += 1
                    return


class MemoryLink:
    def __init__(self, net: MemoryNet, gateway: bytes, recv: trio.MemoryReceiveChannel[_Received]):
        self.net, self.gateway, self.recv = net, gateway, recv
        self.sent: list[tuple[float, int]] = []

    async def send(self, packet: bytes) -> None:
        self.sent.append((trio.current_time(), len(packet)))
        self.net.nursery.start_soon(self.net.carry, self.gateway, packet)

    async def receive(self) -> _Received:
        return await self.recv.receive()


def _pair(net: MemoryNet, doc: TopologyDocument, **kw: object) -> tuple[Caller, Caller]:
    chan_a, chan_b = InMemoryChannel.pair()
    key = os.urandom(32)
    a_addr = Address(doc.gateways[0].node_id, os.urandom(16))
    b_addr = Address(doc.gateways[1].node_id, os.urandom(16))
    voice_a, voice_b = artificial_voice(6.0, seed=1), artificial_voice(6.0, seed=2)
    a = Caller(net.link(a_addr), doc, a_addr, Contact(b_addr, key), chan_a, voice_a, **kw)  # type: ignore[arg-type]
    b = Caller(net.link(b_addr), doc, b_addr, Contact(a_addr, key), chan_b, voice_b, **kw)  # type: ignore[arg-type]
    return a, b


async def converse(
    a: Caller, b: Caller, talk: Callable[[], Awaitable[object]], *, timeout_s: float = 5.0
) -> None:
    """A places the call, both talk while ``talk()`` runs, A hangs up and B's end comes;
    each wait is bounded by ``timeout_s`` seconds (trio.TooSlowError)."""
    a.place()
    with trio.fail_after(timeout_s):
        await a.connected.wait()
        await b.connected.wait()
    await talk()
    a.hangup()
    with trio.fail_after(timeout_s):
        await b.ended.wait()


async def test_every_slot_sends_one_packet_of_one_size_in_and_out_of_a_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    doc, secrets = _network()
    async with trio.open_nursery() as nursery:
        net = MemoryNet(doc, secrets, nursery)
        a, b = _pair(net, doc, mean_delay_s=0.01)
        await nursery.start(a.run)
        await nursery.start(b.run)
        start = trio.current_time()
        await trio.sleep(0.99)
        assert a.slots == Counter({"cover": 25}) == b.slots  # idle: cover only, 40 ms slots
        await converse(a, b, partial(trio.sleep, 2.0))
        await trio.sleep(1.0)
        await trio.sleep(0.04 - (trio.current_time() - start) % 0.04 + 0.01)  # off the grid
        end = trio.current_time()
        nursery.cancel_scope.cancel()
    for caller in (a, b):
        link = caller.link
        assert isinstance(link, MemoryLink)
        times = [t for t, _ in link.sent]
        assert {size for _, size in link.sent} == {VOICE.packet_len}
        # exactly one packet per 40 ms slot on a fixed grid, whatever the slot carried
        assert len(times) == int((end - start) / 0.04) + 1
        assert all(abs(t - (start + k * 0.04)) < 1e-6 for k, t in enumerate(times))
        assert caller.slots["media"] > 40 and caller.slots["signal"] >= 1
        assert caller.slots["cover"] > 40 and "missed" not in caller.slots
    assert b.end_reason is not None and b.end_reason.name == "HANGUP"
    # media went both ways and every packet arrived (no loss in memory)
    for tx, rx in ((a, b), (b, a)):
        assert tx.tx.sent and set(tx.tx.sent) <= set(rx.rx.arrived)
        played = [i for i, kind, _ in rx.rx.items if kind == "frame"]
        assert len(played) >= 0.9 * tx.tx.frames_sent
    assert a.received["cover"] > 0 and b.received["cover"] > 0  # loops reach their owner


async def test_media_that_overtakes_the_answer_is_played_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The callee's first media packets reach the caller before the last frame of its
    ANSWER (held 200 ms here; in the mixnet an unlucky draw of delays): the caller has no
    media keys yet, keeps them, and plays them once the ANSWER gives the keys."""
    doc, secrets = _network()
    async with trio.open_nursery() as nursery:
        net = MemoryNet(doc, secrets, nursery)
        a, b = _pair(net, doc, mean_delay_s=0.01)
        spy = SignalFramer(a.contact.signal_key, a.me, b.me)  # opens what b signals to a

        def hold(mailbox: bytes, message: bytes) -> float:
            if mailbox != a.me.mailbox:
                return 0.0
            try:
                spy.open(message)
            except InvalidTag:
                return 0.0  # media or cover
            return 0.2  # b's signaling to a: its ANSWER arrives after b's first media

        net.hold = hold
        await nursery.start(a.run)
        await nursery.start(b.run)
        await converse(a, b, partial(trio.sleep, 2.0))
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert a.received["early_media"] >= 2  # kept from before the keys, opened after
    assert b.tx.sent and set(b.tx.sent) <= set(a.rx.arrived)  # none of b's media lost
    first = sorted(a.rx.items)[:3]
    assert [kind for _, kind, _ in first] == ["frame"] * 3  # b's first frames were played


async def test_drop_cover_is_never_delivered(autojump_clock: trio.testing.MockClock) -> None:
    doc, secrets = _network()
    async with trio.open_nursery() as nursery:
        net = MemoryNet(doc, secrets, nursery)
        a, _ = _pair(net, doc, cover=CoverKind.DROP, mean_delay_s=0.01)
        await nursery.start(a.run)
        await trio.sleep(1.99)
        nursery.cancel_scope.cancel()
    assert a.slots == Counter({"cover": 50})
    assert sum(a.received.values()) == 0 and net.dropped >= 45


def test_signal_frames_are_fixed_size_fragment_and_do_not_reflect() -> None:
    key = os.urandom(32)
    me, peer = Address(os.urandom(16), os.urandom(16)), Address(os.urandom(16), os.urandom(16))
    tx, rx = SignalFramer(key, me, peer), SignalFramer(key, peer, me)
    envelope = os.urandom(1000)
    frames = tx.frames(envelope)
    assert tx.chunk_len == 316  # 352 - nonce 12 - tag 16 - fragment header 8
    assert len(frames) == 4 and {len(f) for f in frames} == {VOICE.user_payload}
    assert [rx.open(f) for f in frames[::-1][:3]] == [None, None, None]  # any order
    assert rx.open(frames[0]) == envelope
    with pytest.raises(InvalidTag):
        tx.open(tx.frames(b"x")[0])  # our own frame, reflected back to us
    with pytest.raises(InvalidTag):
        SignalFramer(os.urandom(32), peer, me).open(frames[0])  # another conversation's key
    with pytest.raises(InvalidTag):
        rx.open(os.urandom(VOICE.user_payload))  # cover
    with pytest.raises(UsageError):
        tx.frames(b"")


def test_addresses_and_contacts_check_lengths() -> None:
    with pytest.raises(UsageError, match="mailbox"):
        Address(os.urandom(16), b"short")
    with pytest.raises(UsageError, match="signal_key"):
        Contact(Address(os.urandom(16), os.urandom(16)), b"k")


def test_a_caller_is_built_and_fills_slots_outside_a_trio_run() -> None:
    doc, _ = _network()
    me = Address(doc.gateways[0].node_id, os.urandom(16))
    peer = Address(doc.gateways[1].node_id, os.urandom(16))
    chan, _ = InMemoryChannel.pair()
    caller = Caller(_NoLink(), doc, me, Contact(peer, os.urandom(32)), chan, _VOICE)
    packets = [caller.slot(k * caller.slot_s) for k in range(3)]  # times passed in
    assert {len(p) for p in packets if p is not None} == {VOICE.packet_len}
    assert caller.slots == Counter({"cover": 3}) and caller.uplink.signal_pending == 0


def test_cli_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["demo", "--duration", "0"], ["demo", "--link-loss", "x"], ["nope"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "want seconds in 1..3600" in err and "want a probability" in err


# -- an empty or unusable mix layer --------------------------------------------------------


class _NoLink:
    """Counts what a caller sends; nothing is delivered."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, packet: bytes) -> None:
        self.sent.append(packet)

    async def receive(self) -> _Received:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_a_missing_mix_layer_keeps_the_uplink_at_constant_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    doc, secrets = _network(layers=(1, 3))  # mix layer 2 is empty: no path exists
    assert doc.layers[1] == ()
    link = _NoLink()
    chan, _ = InMemoryChannel.pair()
    me = Address(doc.gateways[0].node_id, os.urandom(16))
    peer = Address(doc.gateways[1].node_id, os.urandom(16))
    caller = Caller(link, doc, me, Contact(peer, os.urandom(32)), chan, artificial_voice(1.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(caller.run)
        await trio.sleep(0.39)
        caller.place()  # the offer cannot be routed: it waits, the slots go on
        await trio.sleep(0.6)
        nursery.cancel_scope.cancel()
    assert caller.slots == Counter({"cover": 25, "unroutable": 25})
    assert len(link.sent) == 25 and {len(p) for p in link.sent} == {VOICE.packet_len}
    for packet in link.sent:  # last-resort cover: our own gateway discards it
        result = process_packet(VOICE, secrets[me.gateway_id], packet)
        assert isinstance(result, Discard)
    assert caller.call.state is CallState.CALLING  # the offer is still queued, not lost


_VOICE = artificial_voice(0.5)


@st.composite
def _topologies(draw: st.DrawFn) -> tuple[TopologyDocument, Address, Address]:
    """Any topology: 1..3 layers of 0..2 mixes, gateways that may be missing or unkeyed."""
    mix_layers = draw(st.integers(1, 3))
    nodes: list[NodeDescriptor] = []
    i = 0

    def add(role: NodeRole, layer: int) -> bytes:
        nonlocal i
        desc, _ = _node(i, role, layer, keyed=draw(st.booleans()))
        i += 1
        nodes.append(desc)
        return desc.node_id

    own, contact = add(NodeRole.GATEWAY, 0), add(NodeRole.GATEWAY, 0)
    for _ in range(draw(st.integers(0, 1))):
        add(NodeRole.GATEWAY, 0)
    for layer in range(1, mix_layers + 1):
        for _ in range(draw(st.integers(0, 2))):
            add(NodeRole.MIX, layer)
    doc = build_document(
        EPOCH, epoch_length_s=600, geometry=VOICE, descriptors=nodes, mix_layers=mix_layers
    )
    return doc, Address(own, os.urandom(16)), Address(contact, os.urandom(16))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    _topologies(),
    st.sampled_from(CoverKind),
    st.booleans(),
    st.integers(1, 4),
)
def test_the_slot_function_never_raises_and_sends_or_skips_once_per_slot(
    topology: tuple[TopologyDocument, Address, Address],
    cover: CoverKind,
    calling: bool,
    n_slots: int,
) -> None:
    doc, me, peer = topology
    listed = {n.node_id for n in doc.gateways}
    own_ok = me.gateway_id in listed
    routable = own_ok and all(doc.layers) and (peer.gateway_id in listed or not calling)
    chan, _ = InMemoryChannel.pair()

    async def run() -> list[bytes | None]:
        caller = Caller(_NoLink(), doc, me, Contact(peer, os.urandom(32)), chan,
                        _VOICE, cover=cover)  # fmt: skip
        if calling:
            caller.place()
        out = [caller.slot(trio.current_time() + k * caller.slot_s) for k in range(n_slots)]
        sent = sum(caller.slots[k.value] for k in SlotKind)
        assert sent + caller.slots["skipped"] == n_slots  # exactly one send-or-skip per slot
        assert caller.slots["skipped"] == sum(p is None for p in out)
        assert caller.slots["unroutable"] == (0 if routable else n_slots)
        return out

    out = trio.run(run)
    assert {len(p) for p in out if p is not None} <= {VOICE.packet_len}
    if own_ok:
        assert None not in out  # at worst last-resort cover to our own gateway
    else:
        assert out == [None] * n_slots


async def test_mute_sends_silence_at_the_same_packet_rate_and_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    doc, secrets = _network()
    marks: dict[str, tuple[float, int]] = {}
    async with trio.open_nursery() as nursery:
        net = MemoryNet(doc, secrets, nursery)
        a, b = _pair(net, doc, mean_delay_s=0.01)
        await nursery.start(a.run)
        await nursery.start(b.run)

        async def talk() -> None:
            await trio.sleep(1.5)
            marks["mute"] = (trio.current_time(), a.tx.frames_sent)
            a.media_out.muted = True
            await trio.sleep(2.0)
            marks["unmute"] = (trio.current_time(), a.tx.frames_sent)
            a.media_out.muted = False
            await trio.sleep(1.0)

        await converse(a, b, talk)
        nursery.cancel_scope.cancel()
    (t_mute, f_mute), (t_unmute, f_unmute) = marks["mute"], marks["unmute"]
    link = a.link
    assert isinstance(link, MemoryLink)
    assert {size for _, size in link.sent} == {VOICE.packet_len}  # one size, muted or not
    sent = sorted(a.tx.sent.values())

    def media_in(lo: float, hi: float) -> int:
        return sum(lo <= t < hi for t in sent)

    # the same media packet count per second before and while muted, and after
    before, muted = media_in(t_mute - 1.0, t_mute), media_in(t_mute + 0.5, t_mute + 1.5)
    after = media_in(t_unmute, t_unmute + 1.0)
    assert before >= 20 and abs(before - muted) <= 1 and abs(after - muted) <= 1
    # what b decoded of a's frames: speech before, silence while muted
    items = zip(b.rx.items, b.rx.pcm, strict=True)
    played = {i: pcm for (i, kind, _), pcm in items if kind == "frame"}

    def rms(lo: int, hi: int) -> float:
        frames = [played[i].astype(float) for i in range(lo, hi) if i in played]
        assert len(frames) > 0.8 * (hi - lo)
        return float(np.sqrt(np.mean(np.concatenate(frames) ** 2)))

    speech, silence = rms(f_mute - 40, f_mute), rms(f_mute + 3, f_unmute)
    assert speech > 300 and silence < 0.01 * speech, (speech, silence)
