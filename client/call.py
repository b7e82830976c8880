"""A Mode C call through the mixnet (Trio): constant-rate uplink, signaling and media.

    me = Address(gateway_id, mailbox_key.mailbox_id)  # our gateway and mailbox (MailboxKey)
    peer = Contact(Address(peer_gw, peer_box), key)   # exchanged over the E2EE messenger
    caller = Caller(link, doc, me, peer, channel, voice)
    async with trio.open_nursery() as nursery:
        await nursery.start(caller.run)               # online: one packet per slot from now
        caller.place()                                # CALL_OFFER in the next free slot

Every slot (``frames_per_packet`` x 20 ms) the caller sends exactly one Sphinx packet of
the one geometry size: a queued signaling frame, else the media packet of the frames
captured during the last slot, else cover (a loop to its own mailbox, or a drop). Each
packet takes a fresh path: own gateway, one mix per layer, the contact's gateway, with
sender-chosen exponential delays. When the topology offers no such path (an empty layer,
an unlisted gateway) the slot still sends: drop cover to the own gateway alone, counted.
The contact's gateway sees 352 random-looking bytes either way: media packets are AEAD
with a masked sequence number, signaling frames are AEAD under a key from the contact card
with a random nonce, and loops are random bytes.
The receiver tries media first, then signaling; what opens as neither is cover, unless it
claimed to be media of the call (``received`` counts each kind apart).

Each media packet carries a receiver report on the peer's media (``MediaIn.report``,
docs/media.md); each report the peer sends back gives a round trip (``rtt``, ``on_rtt``)
and feeds ``route_health`` (``client._route_health``). With one route per call direction
(``uplink.routing.per_call``) a verdict that the route failed moves the call to a spare
(``uplink.route_failed()``, counted in ``route_failovers``, event "route failover"), or,
with none left, is counted in ``route_no_spare`` (event "route failed").

``Caller`` is the Trio edge only: its tasks, the link and the timers. The decisions are
sans-IO and take ``now``: ``overlay.UplinkScheduler`` keeps the slot grid and picks each
slot's frame, ``Call`` (``client._signaling``) runs the signaling, ``SignalFramer``
(``client._frames``) frames it, and ``MediaOut``/``MediaIn`` (``client._call_media``)
encode, seal, open, buffer and play the media. A caller can be built, and its ``slot``
and ``deliver`` called, outside a Trio run; ``run``, ``place`` and ``hangup`` need one.

One clock: the uplink grid, the signaling timers, the link's arrival stamps, the jitter
buffer and the playout all run on Trio's clock (``trio.current_time()``, monotonic), so a
step of the wall clock changes nothing in a call. The link must stamp arrivals on that same
clock (``client.gateway_link`` does); a stamp from another clock is refused with
``UsageError``. The traces a caller keeps for the report carry ``to_monotonic_s``, which
turns their times into ``time.monotonic()`` seconds for comparison with another process's
(docs/calling.md, "Clocks").
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol

import trio
from cryptography.exceptions import InvalidTag

from overlay import CoverKind as CoverKind
from overlay import (
    Delivery,
    DownlinkKind,
    Rng,
    TopologyDocument,
    UplinkScheduler,
    UsageError,
)

from ._call_media import MediaIn as MediaIn
from ._call_media import MediaOut as MediaOut
from ._call_media import MediaTrace as MediaTrace
from ._call_media import PlayoutTrace as PlayoutTrace
from ._call_media import VoiceSource, rtt_sample
from ._channel import SecureChannel
from ._frames import Address as Address
from ._frames import Contact as Contact
from ._frames import SignalFramer as SignalFramer
from ._jitter import JitterConfig
from ._media import Direction, MediaError, NotMedia, ReceiverReport
from ._route_health import RouteHealth, RouteHealthConfig
from ._signaling import (
    Action,
    Call,
    CallEnded,
    CancelTimer,
    EndReason,
    IncomingCall,
    MediaKeysChanged,
    RemoteRinging,
    Role,
    SecurityLog,
    Send,
    SetTimer,
    StartMedia,
    Timer,
)
from ._voice import DECODER_RATE_HZ, Decimator, Pcm, VoiceProfile

# Mean sender-chosen delay per hop: the simulator's largest feasible mean for 2 frames per
# packet (40 ms slot) at 5 hops, p99 mouth-to-ear 570 ms (docs/research.md, "Sweep").
DEFAULT_MEAN_DELAY_S = 0.0225
OPUS_LOOKAHEAD_S = 0.0065  # libopus encoder look-ahead (2.5 ms + 4 ms delay compensation)
ANSWER_DELAY_S = 0.5  # the callee "picks up" this long after the phone rings (auto-answer)
# An arrival stamp later than now, or older than this many seconds, was not read on Trio's
# clock (the wall clock is ~1.7e9 s ahead; time.monotonic() >= 1e4 s behind, by Trio's offset).
MAX_STAMP_AGE_S = 600.0
STAMP_SLACK_S = 1e-3  # seconds a stamp may lie ahead of now (float rounding, not a clock)
EARLY_MEDIA_MAX = 16  # deliveries kept from before our media keys, to try once they come
EARLY_MEDIA_S = 2.0  # seconds such a delivery stays worth trying


class ReceivedLike(Protocol):
    """A delivery and when it arrived: ``at`` in seconds on Trio's clock
    (``trio.current_time()``), never the wall clock."""

    @property
    def delivery(self) -> Delivery: ...

    @property
    def at(self) -> float: ...


class LinkLike(Protocol):
    """What a caller needs from its gateway link (client.gateway_link.GatewayLink)."""

    async def send(self, packet: bytes) -> None: ...

    async def receive(self) -> ReceivedLike: ...


class Caller:
    """One user's client for one call: online with a constant-rate uplink before, during
    and after it. Records what the report needs (``tx``, ``rx``, ``slots``, ``received``)."""

    def __init__(
        self,
        link: LinkLike,
        doc: TopologyDocument,
        me: Address,
        contact: Contact,
        channel: SecureChannel,
        voice: Pcm | VoiceSource,
        *,
        profile: VoiceProfile | None = None,
        mean_delay_s: float = DEFAULT_MEAN_DELAY_S,
        cover: CoverKind = CoverKind.LOOP,
        jitter: JitterConfig | None = None,
        auto_answer: bool = True,
        uplink: UplinkScheduler | None = None,
        framer: SignalFramer | None = None,
        on_event: Callable[[str, float], None] | None = None,
        rng: Rng = os.urandom,
        security_log: SecurityLog | None = None,
        route_health: RouteHealthConfig | None = None,
    ):
        self.profile = profile or VoiceProfile()
        self.link, self.me, self.contact = link, me, contact
        self.auto_answer = auto_answer
        self._clock = trio.current_time  # the one clock: trio.sleep_until runs on it
        # The slot grid and each slot's frame. Its ``slots`` counts slots by SlotKind value
        # sent, "skipped" (nothing routable), "unroutable" (sent as last-resort cover
        # instead), "missed" (the process fell behind the grid).
        # An always-on client (client.phone) passes its own scheduler, whose grid outlives
        # the call; it is pointed at this call's contact here.
        peer = (contact.address.gateway_id, contact.address.mailbox)
        if uplink is None:
            uplink = UplinkScheduler(
                doc, (me.gateway_id, me.mailbox), peer,
                slot_s=self.profile.packet_interval_ms / 1000, mean_delay_s=mean_delay_s,
                cover=cover, rng=rng,
            )  # fmt: skip
        uplink.peer = peer
        self.uplink = uplink
        # Mode changes and refused downgrades, on this device only. Its owner (the profile)
        # gives it a wall clock for its stamps; nothing in client/ reads that clock.
        self.security_log = security_log if security_log is not None else SecurityLog()
        self.call = Call(channel, reply_mailbox=me.to_bytes(), surbs=b"", profile=self.profile,
                         security_log=self.security_log)  # fmt: skip
        self.framer = framer or SignalFramer(contact.signal_key, me, contact.address, rng=rng)
        # Called with ("ringing" | "connected" | "ended" | "route failover" | "route failed",
        # seconds on Trio's clock); "route failed": judged failed with no spare left.
        self._on_event = on_event
        self.media_out = MediaOut(voice, self.profile)
        self.media_in = MediaIn(jitter or JitterConfig(frame_ms=self.profile.frame_ms))
        self.media_in.on_report = self._on_report
        # The peer's receiver reports: round trips, and the verdict on our call route (with
        # per-call routes only: ``uplink.routing.per_call``).
        self.route_health = RouteHealth(route_health)
        self.rtt: list[tuple[float, float]] = []  # (arrival time, round trip), seconds
        self.on_rtt: Callable[[float, float], None] | None = None  # hears each rtt sample
        self.route_failovers = 0  # moves to a spare route this call
        self.route_no_spare = 0  # route judged failed with no spare left
        self.route_verdicts: list[tuple[float, str]] = []  # (time, RouteHealth reason)
        self._timers: dict[Timer, float] = {}  # signaling timer -> deadline (seconds)
        self._answer_at: float | None = None
        self._playout_ready = trio.Event()
        self.ringing = trio.Event()  # the callee rings (IncomingCall here, or RING from it)
        self.connected = trio.Event()
        self.ended = trio.Event()
        self.end_reason: EndReason | None = None
        # Deliveries by what they turned out to be (``deliver``): media, signal_frames,
        # cover, other (replies), or the reason a frame that claimed to be media was dropped.
        self.received: Counter[str] = Counter()
        # Deliveries that opened as nothing before our media keys existed: the peer's first
        # media can overtake the end of its ANSWER in the mixnet. Tried again once the keys
        # come (``_start_media``); bounded, so the extra work is at most EARLY_MEDIA_MAX
        # AEAD opens per call.
        self._early: deque[tuple[bytes, float]] = deque(maxlen=EARLY_MEDIA_MAX)

    @property
    def tx(self) -> MediaTrace:
        """What we sent, for the report (``MediaOut.trace``)."""
        return self.media_out.trace

    @property
    def rx(self) -> PlayoutTrace:
        """What arrived and played, for the report (``MediaIn.trace``)."""
        return self.media_in.trace

    @property
    def doc(self) -> TopologyDocument:
        return self.uplink.doc

    @property
    def slot_s(self) -> float:
        """Seconds per uplink slot (``frames_per_packet`` x the frame length)."""
        return self.uplink.slot_s

    @property
    def slots(self) -> Counter[str]:
        """Slots by kind (``UplinkScheduler.slots``)."""
        return self.uplink.slots

    @property
    def sent_sizes(self) -> set[int]:
        """Lengths in bytes of the packets sent (one: the geometry's packet length)."""
        return self.uplink.sent_sizes

    # -- user commands ------------------------------------------------------------------

    def place(self) -> None:
        """Call the contact: CALL_OFFER goes out in the next slot."""
        self._apply(self.call.place(self._clock()))

    def hangup(self) -> None:
        """End the call: CALL_HANGUP goes out in the next slot; our media stops now."""
        self._apply(self.call.hangup(self._clock()))

    def accept(self) -> None:
        """Callee: pick up the ringing call (ACCEPT in the next slot; media starts).
        ``UsageError`` when nothing rings."""
        self._answer_at = None
        self._apply(self.call.accept(self._clock()))

    def decline(self) -> None:
        """Callee: refuse the ringing call (DECLINE). ``UsageError`` when nothing rings."""
        self._answer_at = None
        self._apply(self.call.decline(self._clock()))

    def handle_envelope(self, envelope: bytes, now: float) -> None:
        """A whole signaling envelope the caller's framer already opened (an always-on
        client finds which contact a frame is from before it builds the caller)."""
        self._apply(self.call.handle(envelope, now))

    # -- tasks --------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Be online: the uplink, the downlink reader and the playout clock, until cancelled.

        Remote input and gaps in the topology are counted, never raised (``slots``,
        ``received``, ``call.counters``); an error that still leaves a task is a bug and
        leaves in Trio's ``ExceptionGroup`` (so does ``UsageError`` from a link that stamps
        arrivals on another clock than Trio's). However it stops, the call's secrets are
        zeroed (``Call.close``).
        """
        self.tx.to_monotonic_s = self.rx.to_monotonic_s = monotonic_offset_s()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._uplink)
                nursery.start_soon(self._downlink)
                nursery.start_soon(self._playout)
                task_status.started()
        finally:
            self.call.close()

    async def _uplink(self) -> None:
        self.uplink.start(self._clock())
        while True:
            await trio.sleep_until(self.uplink.due)
            packet = self.slot(self.uplink.take_slot(self._clock()))
            if packet is not None:
                await self.link.send(packet)

    def slot(self, now: float) -> bytes | None:
        """The one packet of the slot at ``now``: signaling, else media, else cover
        (``overlay.UplinkScheduler.fill``). Fires due signaling timers first.

        Never raises for what the topology document lacks; returns None, counted
        ``skipped``, only when not even our own gateway is routable. So every slot counts
        exactly one of ``signal``, ``media``, ``cover`` or ``skipped`` in ``slots``.
        """
        self._tick(now)
        slot = self.uplink.fill(now, self._media_packet(now))
        if slot.displaced:
            self.tx.displaced += 1
        if slot.media_seq is not None:
            self.tx.sent[slot.media_seq] = now
            self.route_health.sent(now)
        self._judge_route(now)
        return slot.packet

    def _on_report(self, report: ReceiverReport, at: float) -> None:
        """A receiver report in the peer's media: a round-trip sample and route health."""
        rtt = rtt_sample(report, at, self.tx.sent)
        if rtt is not None:
            self.rtt.append((at, rtt))
            if self.on_rtt is not None:
                self.on_rtt(at, rtt)
        self.route_health.report(report, at)

    def _judge_route(self, now: float) -> None:
        """While the call is on with a route of its own: move to a spare route when the
        peer's reports say ours failed; with none left, count it and tell (never back to
        per-packet routes)."""
        if not self.uplink.routing.per_call or not self.media_out.sending:
            return
        if not self.connected.is_set() or self.ended.is_set():
            return
        reason = self.route_health.check(now)
        if reason is None:
            return
        self.route_verdicts.append((now, reason))
        if self.uplink.route_failed():
            self.route_failovers += 1
            self._event("route failover", now)
        else:
            self.route_no_spare += 1
            self._event("route failed", now)

    def _tick(self, now: float) -> None:
        for timer, deadline in list(self._timers.items()):
            if deadline <= now:
                del self._timers[timer]
                self._apply(self.call.fire(timer, now))
        if self._answer_at is not None and self._answer_at <= now:
            self._answer_at = None
            self._apply(self.call.accept(now))

    def _media_packet(self, now: float) -> tuple[int, bytes] | None:
        """Encode the frames captured during the slot that just ended, and seal them."""
        capture_start = self.tx.capture_start
        if not self.media_out.sending or capture_start is None:
            return None
        if not self.uplink.media_due(capture_start, now):
            return None
        return self.media_out.seal_next(self.media_in.report(now))

    async def _downlink(self) -> None:
        while True:
            received = await self.link.receive()
            if received.delivery.kind is not DownlinkKind.MESSAGE:
                self.received["other"] += 1  # a reply: this client hands out no SURBs
                continue
            self.deliver(received.delivery.data, received.at)

    def deliver(self, data: bytes, at: float) -> None:
        """One delivery from our mailbox (``at``: seconds on our clock): media, else
        signaling, else cover. Counted in ``received`` under ``media``, ``signal_frames``,
        ``cover`` (opened as neither and did not claim to be media: our loops, or noise,
        or media that came before our call started), or, for a frame that claimed to be
        media of the call and is not signaling either, the media drop reason
        (``media_forged``, ``media_replayed``, ``media_malformed``). Until our media keys
        exist, what opens as nothing is also kept (``EARLY_MEDIA_MAX``) and tried as media
        once they come: the peer's media that overtook its ANSWER then counts as ``media``
        and ``early_media``, not ``cover``.

        Raises ``UsageError`` when ``at`` lies ahead of ``trio.current_time()`` or more than
        ``MAX_STAMP_AGE_S`` behind it: it was read on another clock (the wall clock, or
        ``time.monotonic()`` without Trio's offset), and would shift the playout."""
        now = self._clock()
        if not now - MAX_STAMP_AGE_S <= at <= now + STAMP_SLACK_S:
            raise UsageError("arrival stamps must be on trio.current_time(), the caller's clock")
        refused: MediaError | None = None
        try:
            opened = self.media_in.open(data, at)
        except MediaError as err:
            refused = err
        else:
            if opened:
                self.received["media"] += 1
                self._apply(self.call.media_received(now))  # the peer is there
                self._playout_ready.set()
                return
        try:
            envelope = self.framer.open(data, now)
        except InvalidTag:
            self.received[
                "cover" if refused is None or isinstance(refused, NotMedia) else refused.reason
            ] += 1
            if not self.media_in.listening and not self.ended.is_set():
                self._keep_early(bytes(data), at)
            return
        self.received["signal_frames"] += 1
        if envelope is not None:
            self._apply(self.call.handle(envelope, now))

    async def play(self) -> None:
        """The playout clock alone (``run`` starts it too), until cancelled: for a client
        that runs the uplink and the downlink itself across calls."""
        await self._playout()

    async def _playout(self) -> None:
        await self._playout_ready.wait()
        start, frame_s = self.media_in.grid()
        k = 0
        while True:
            t = start + k * frame_s  # the jitter buffer's own playout grid
            await trio.sleep_until(t)
            self.media_in.play(t)
            k += 1

    # -- signaling actions ----------------------------------------------------------------

    def _apply(self, actions: list[Action]) -> None:
        now = self._clock()
        for act in actions:
            match act:
                case Send():
                    self.uplink.push_signal(self.framer.frames(act.envelope))
                case SetTimer():
                    self._timers[act.timer] = act.deadline
                case CancelTimer():
                    self._timers.pop(act.timer, None)
                case IncomingCall():
                    self._event("ringing", now)
                    if self.auto_answer:
                        self._answer_at = now + ANSWER_DELAY_S
                case RemoteRinging():
                    self._event("ringing", now)
                case StartMedia():
                    self._start_media(act, now)
                case MediaKeysChanged():
                    ours = (
                        Direction.CALLER_TO_CALLEE
                        if self.call.role is Role.CALLER
                        else Direction.CALLEE_TO_CALLER
                    )
                    if act.direction == ours and self.media_out.sending:
                        self.media_out.rekey(act.keys)
                    elif self.media_in.listening:
                        self.media_in.rekey(act.keys)
                case CallEnded():
                    self.media_out.stop()  # our media stops; we still listen
                    self._answer_at = None
                    self.end_reason = act.reason
                    self.ended.set()
                    self._event("ended", now)
                case _:
                    pass

    def _start_media(self, act: StartMedia, now: float) -> None:
        # The mic opens on the slot grid, so each packet leaves as its last frame is complete.
        # The callee's ACCEPT leaves in this slot and the caller opens no media before it
        # arrives: its first media packet leaves a slot later than it could, so that it
        # rarely overtakes the ACCEPT in the mixnet (one that does waits in ``_early``).
        head_start = self.slot_s if self.call.role is Role.CALLEE else 0.0
        self.media_out.start(act.tx_profile, act.tx_keys,
                             self.uplink.grid_at_or_after(now + head_start))  # fmt: skip
        self.media_in.start(act.rx_profile, act.rx_keys)
        self._open_early(now)
        self.connected.set()
        self._event("connected", now)

    def _keep_early(self, data: bytes, at: float) -> None:
        """Keep a delivery that opened as nothing until the media keys come; a copy of one
        kept already (a replay) is not kept again, so replays cannot push the peer's early
        media out (at most ``EARLY_MEDIA_MAX`` comparisons)."""
        if all(data != kept for kept, _ in self._early):
            self._early.append((data, at))

    def _open_early(self, now: float) -> None:
        """Open the deliveries kept from before our media keys (at most ``EARLY_MEDIA_MAX``,
        none older than ``EARLY_MEDIA_S``): the peer's media among them moves from
        ``cover`` to ``media`` in ``received`` (and is counted ``early_media``)."""
        early, self._early = list(self._early), deque(maxlen=EARLY_MEDIA_MAX)
        for data, at in early:
            if now - at > EARLY_MEDIA_S:
                continue
            try:
                opened = self.media_in.open(data, at)
            except MediaError:
                continue  # our own cover, or another call's: it stays counted as cover
            if opened:
                self.received["cover"] -= 1
                self.received["media"] += 1
                self.received["early_media"] += 1
                self._playout_ready.set()

    def _event(self, name: str, now: float) -> None:
        if name == "ringing":
            self.ringing.set()
        if self._on_event is not None:
            self._on_event(name, now)


_MONOTONIC_OFFSET: trio.lowlevel.RunVar[float] = trio.lowlevel.RunVar("monotonic_offset_s")


def monotonic_offset_s() -> float:
    """``time.monotonic()`` - ``trio.current_time()`` in seconds, read once per Trio run.

    Trio's default clock is CLOCK_MONOTONIC plus a random offset per run; adding this turns
    a time on it into CLOCK_MONOTONIC seconds, comparable across the processes of one
    machine. Every caller of one run gets the same value, so their times compare exactly
    (also on ``trio.testing.MockClock``, where the value has no meaning of its own). Must
    be called inside ``trio.run``.
    """
    try:
        return _MONOTONIC_OFFSET.get()
    except LookupError:
        offset = time.monotonic() - trio.current_time()
        _MONOTONIC_OFFSET.set(offset)
        return offset


def codec_delay_s(profile: VoiceProfile) -> float:
    """Algorithmic delay of the voice codec path: Opus look-ahead plus our decimator."""
    decimator = Decimator(DECODER_RATE_HZ // profile.sample_rate_hz)
    return OPUS_LOOKAHEAD_S + decimator.delay_samples_in / DECODER_RATE_HZ
