"""The always-on client: online at the constant rate for as long as it runs, calls on demand.

    phone = Phone(profile, doc, link, PhoneOptions(auto_answer=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(phone.run)        # one packet per slot from now until cancelled
        call = phone.dial("ada")              # or an OFFER from a contact rings
        await call.done.wait()

One ``UplinkScheduler`` grid for the whole time online: each slot sends exactly one packet,
a call's signaling or media while a call is on (``Caller.slot``: the call's ``Caller``
shares the scheduler and points it at its contact), cover otherwise (loops to our own
mailbox, DESKTOP policy: schedule ``always``, the call rate at all times). So the uplink's
packet count and sizes per second are the same before, during and after a call. A call's
signaling and media cross one route per call direction, with spare routes
(``PhoneOptions.policy``, DESKTOP: ``overlay.RoutePolicy(per_call=True, failover=2)``); cover
takes a fresh path per packet.

Contacts come from the profile. For each, the client holds the signaling channel
(``IdentityChannel`` from our identity and theirs, resumed from the state stored in the
profile and saved back after every call) and a ``SignalFramer`` keyed per contact pair:
``signal_key`` = BLAKE2b-256(X25519(our identity, theirs), key=conversation id,
person="pn-sigkey-v1"). Only the two ends can make or open these frames, so the exit
gateway cannot tell signaling from media or cover. The price: a frame from someone who is
not a contact (they hold our card, we do not hold theirs) opens under no key and is
indistinguishable from cover; it is counted with cover under ``unopened`` (never with an
identity) and never rings. While idle every delivery is tried under each contact's framer;
the first whole envelope that opens starts a call with that contact (a Caller as callee),
which rings (``ringing``), and is answered by ``answer()`` (a key, the control socket) or
after ``ANSWER_DELAY_S`` with ``auto_answer``. One call at a time: while a call is on,
other contacts' offers go unanswered (their setup times out).

The per-process report (:meth:`Phone.report`) holds, for each call: role, the local contact
name (never an identity key or an address), the CLOCK_MONOTONIC times of dial, ringing,
connected and ended, the end reason, the capture time of each frame sent and the play time
of each frame played (by frame index), so a test bed can subtract one process's times from
another's; the call's settings (``call_settings``: mean delay per hop, hops, signaling
channel, voice profile), what the jitter buffer did to the peer's frames
(``jitter_counts``), how many of our media packets signaling displaced, the route
failovers and round trips (:func:`route_record`); and for the whole time online the UDP
payload bytes and datagrams per second each way (``GatewayLink.meter``), the sizes of the
packets sent, and the key agreement of the calls.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trio
from cryptography.exceptions import InvalidTag

from overlay import CoverKind, DownlinkKind, TopologyDocument, UplinkScheduler, UsageError

from ._frames import Address, Contact, SignalFramer
from ._signaling import EndReason, Role, SecurityLog, SecurityRecord
from ._voice import Pcm, VoiceProfile
from .audio import AudioError, LiveDevice, LiveMic, LiveSpeaker, write_speaker_file
from .call import DEFAULT_MEAN_DELAY_S, Caller, monotonic_offset_s
from .calllog import CallDirection, CallRecord
from .calllog import CallResult as LogResult
from .contacts import Contact as BookContact
from .contacts import ContactError, TrustState
from .gateway_link import GatewayLink
from .identity_channel import ChannelState, ChannelStateError, IdentityChannel
from .policy import DESKTOP, ClientPolicy
from .profile import Profile, ProfileError, atomic_write, lock_profile
from .screen import LiveFigures

SIGNAL_KEY_PERSON = b"pn-sigkey-v1"  # BLAKE2b personalisation of a contact pair's frame key
MODE_BADGE = "PARANOID"  # Mode C: the only mode this client offers or accepts
DRAIN_S = 1.0  # after a call ends, keep its media path this long (late frames, our HANGUP)
CONTACTS_REFRESH_S = 10.0  # contacts added by another command are seen within this long
ROUTE_EVENTS = ("route failover", "route failed")  # Caller events about the call's route
DIALER_GONE = "dialer gone"  # end reason when the dial command's connection closes mid-call
PROFILE_LOCK_WAIT_S = 10.0  # seconds a write waits for another command using the profile


KEY_AGREEMENT = "X25519+ML-KEM-768"  # the call keys' agreement (client._signaling.keys)


def pair_signal_key(profile: Profile, contact: BookContact, conversation_id: bytes) -> bytes:
    """The 32-byte frame key shared by us and ``contact`` (see the module docstring)."""
    shared = profile.identity.dh(contact.card.identity)
    return hashlib.blake2b(
        shared, key=conversation_id, digest_size=32, person=SIGNAL_KEY_PERSON
    ).digest()


CALL_SETTINGS = ("mean_delay_ms_per_hop", "hops", "channel", "profile")  # call_settings' keys


def call_settings(caller: Caller) -> dict[str, object]:
    """How ``caller``'s call was set up, as its report gives it: ``mean_delay_ms_per_hop``
    (the mean sender-chosen delay per hop, ms), ``hops`` (gateway, mix layers, gateway),
    ``channel`` (the signaling channel's description, e.g. "identity X25519, hash
    ratchet"), ``profile`` (``sample_rate_hz``, ``frames_per_packet``, ``bitrate_bps``,
    ``redundancy`` of the voice)."""
    voice, channel = caller.profile, caller.call.channel
    return {
        "mean_delay_ms_per_hop": round(caller.uplink.mean_delay_s * 1000, 6),
        "hops": len(caller.doc.layers) + 2,
        "channel": str(getattr(channel, "description", type(channel).__name__)),
        "profile": {
            "sample_rate_hz": voice.sample_rate_hz,
            "frames_per_packet": voice.frames_per_packet,
            "bitrate_bps": voice.bitrate_bps,
            "redundancy": voice.redundancy,
        },
    }


def jitter_counts(caller: Caller) -> dict[str, int]:
    """What ``caller``'s jitter buffer did to the peer's media, in frames: ``late``
    (arrived after they were concealed), ``recovered`` (only the redundant copy came, and
    played), ``skipped`` (dropped to shrink the delay); all 0 before any playout."""
    stats = caller.rx.stats
    if stats is None:
        return {"late": 0, "recovered": 0, "skipped": 0}
    return {"late": stats.late, "recovered": stats.recovered, "skipped": stats.skipped}


@dataclass(slots=True)
class PhoneOptions:
    """How the always-on client behaves.

    ``auto_answer``: pick up incoming calls after ``ANSWER_DELAY_S``; ``mic``: PCM at
    ``voice.sample_rate_hz`` sent from frame 0 of each call (None: silence), or a live
    microphone; ``speaker``: WAV file written with what was heard at the end of each call,
    or a live speaker (a live device opens when a call connects, closes when it ends,
    and its counters go in the call's record under ``devices``); ``report``:
    JSON report file (written atomically at each call's end and on ``write_report``);
    ``mean_delay_s``: mean sender-chosen delay per hop (seconds); ``bind``: the local IP
    of the gateway link, for the report only; ``policy``: the client policy whose routes
    the uplink follows (DESKTOP: one route per call direction, 2 spares); ``keys``: the
    call screen's keys answer and decline (the ringing line names them; else it names the
    ``phantom-call answer`` and ``decline`` commands)."""

    auto_answer: bool = False
    mic: Pcm | LiveMic | None = None
    speaker: Path | LiveSpeaker | None = None
    report: Path | None = None
    mean_delay_s: float = DEFAULT_MEAN_DELAY_S
    voice: VoiceProfile = field(default_factory=VoiceProfile)
    bind: str | None = None
    policy: ClientPolicy = DESKTOP
    keys: bool = False


@dataclass(slots=True)
class Peer:
    """One contact as the client holds it while online."""

    contact: BookContact
    channel: IdentityChannel
    framer: SignalFramer
    signal_key: bytes = field(repr=False)


@dataclass(slots=True)
class ActiveCall:
    """One call of the always-on client, from dial or offer to the end of its drain.

    ``times``: name ("dial", "ringing", "connected", "ended") -> CLOCK_MONOTONIC seconds of
    its first occurrence; ``reason``: the end reason's name, or DIALER_GONE, or
    "listener stopped"; ``done`` is set once the call is recorded (report, log, speaker).
    ``changed`` is set (and replaced) at every event and mute switch. ``live``: the jitter
    and loss of the peer's media as it arrives, and the one-way delay estimate: half the
    round trip the peer's receiver reports give (its packets carry no capture time; ``rtt``)."""

    name: str
    role: Role
    state: TrustState
    caller: Caller
    times: dict[str, float] = field(default_factory=dict)
    reason: str | None = None
    ended_here: bool = False  # this side hung up or declined (not the peer)
    duration_s: float | None = None  # hang up this long after connecting (None: when asked)
    concluded: bool = False  # recorded (or being recorded): finish does nothing more
    security_taken: int = 0  # records of the caller's security log already stored
    done: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    live: LiveFigures = field(default_factory=LiveFigures)

    def arrived(self, seq: int, at: float, media_s: float) -> None:
        """A media packet of the peer (see ``MediaIn.on_arrival``); one stamped earlier
        than the last (another clock's reading) is left out of the figures."""
        if self.live.last_arrival is None or at >= self.live.last_arrival:
            self.live.arrived(seq, at, media_s)

    def rtt(self, at: float, rtt_s: float) -> None:
        """A round trip (seconds) measured at ``at`` (see ``Caller.on_rtt``)."""
        self.live.rtt(at, rtt_s)

    @property
    def muted(self) -> bool:
        """Our microphone is muted: silence goes out at the same rate and size."""
        return self.caller.media_out.muted

    def mark(self, name: str, t: float) -> None:
        self.times.setdefault(name, t)
        self.notify()

    def notify(self) -> None:
        """Wake whoever waits on ``changed`` (an event, or the mute switched)."""
        self.changed.set()
        self.changed = trio.Event()

    @property
    def connected_ok(self) -> bool:
        """True when media flowed and the call ended by a hang-up (either side)."""
        return "connected" in self.times and self.reason == EndReason.HANGUP.name


class Phone:
    """The always-on client (see the module docstring). ``ui`` gets one line of text per
    thing the user should see (ringing, connected, ended, refusals); ``wall_clock`` gives
    unix seconds for the call log (None: calls are not logged)."""

    def __init__(
        self,
        profile: Profile,
        doc: TopologyDocument,
        link: GatewayLink,
        options: PhoneOptions | None = None,
        *,
        ui: Callable[[str], None] | None = None,
        wall_clock: Callable[[], float] | None = None,
    ):
        self.profile, self.link = profile, link
        self.options = options or PhoneOptions()
        self.me = Address(profile.gateway_id, profile.mailbox_key.mailbox_id)
        mine = (self.me.gateway_id, self.me.mailbox)
        self.uplink = UplinkScheduler(
            doc, mine, mine, slot_s=self.options.voice.packet_interval_ms / 1000,
            mean_delay_s=self.options.mean_delay_s, cover=CoverKind.LOOP,
            routing=self.options.policy.routing(),
        )  # fmt: skip
        self._ui = ui or (lambda line: None)
        # Unix seconds for the call log's records only (client._commands.wall_clock); the
        # calls themselves never read it. None: no call log records.
        self._wall_clock = wall_clock
        self.peers: dict[str, Peer] = {}
        self.current: ActiveCall | None = None
        self.calls: list[dict[str, object]] = []  # the report's records of finished calls
        self.counters: Counter[str] = Counter()  # deliveries by what they turned out to be
        self.started_at: float | None = None  # CLOCK_MONOTONIC seconds
        self._offset = 0.0  # trio.current_time() + this = time.monotonic()
        self._nursery: trio.Nursery | None = None
        self._pid = os.getpid()
        self.load_contacts()

    # -- contacts ------------------------------------------------------------------------

    def load_contacts(self) -> None:
        """(Re)read the contact book; a contact's channel and framer are kept while its
        card is unchanged. ProfileError if the stores cannot be read."""
        book = self.profile.load_contacts()
        states = self.profile.load_channel_states()
        my_public = self.profile.identity.public.to_bytes()
        dh_private = self.profile.identity.to_bytes()[32:]
        peers: dict[str, Peer] = {}
        for contact in book:
            old = self.peers.get(contact.name)
            if old is not None and old.contact.card_bytes == contact.card_bytes:
                peers[contact.name] = old
                continue
            their = contact.card.identity.to_bytes()
            try:
                channel = IdentityChannel(dh_private, my_public, their)
                stored = states.get(channel.conversation_id)
                if stored is not None:
                    channel.close()
                    state = ChannelState.from_bytes(stored)
                    channel = IdentityChannel(dh_private, my_public, their, state=state)
            except (UsageError, ChannelStateError):
                self.counters["contact_unusable"] += 1
                continue
            key = pair_signal_key(self.profile, contact, channel.conversation_id)
            address = Address(contact.card.gateway_id, contact.card.mailbox_id)
            peers[contact.name] = Peer(contact, channel, SignalFramer(key, self.me, address), key)
        self.peers = peers

    def save_channels(self) -> None:
        """Store every contact's channel state in the profile (sealed, atomic)."""
        self._save_states({p.channel.conversation_id: p.channel.to_bytes()
                           for p in self.peers.values()})  # fmt: skip

    def _save_states(self, states: dict[bytes, bytes]) -> None:
        with self._profile_locked():
            stored = self.profile.load_channel_states()
            self.profile.save_channel_states({**stored, **states})

    async def _save_states_in_thread(self) -> None:
        states = {p.channel.conversation_id: p.channel.to_bytes() for p in self.peers.values()}
        try:
            await trio.to_thread.run_sync(self._save_states, states)
        except ProfileError as exc:
            self._ui(f"warning: {exc}")

    @contextmanager
    def _profile_locked(self) -> Iterator[None]:
        """The profile's lock (``lock_profile``) around one read-modify-write, so that a
        ``contact add`` or ``calls`` of another process never interleaves with ours. The
        listener holds it only for these moments."""
        fd = lock_profile(self.profile.directory, PROFILE_LOCK_WAIT_S)
        try:
            yield
        finally:
            if fd is not None:
                os.close(fd)

    def adopt(self, doc: TopologyDocument) -> None:
        """Use ``doc``, the topology of a newer epoch: new paths take its keys, and a
        re-attach to our gateway its key for ``doc.epoch`` (the session in use is kept).
        Counted in ``counters`` (``topology_adopted``; ``gateway_not_in_topology`` when our
        gateway, or its key for the epoch, is missing: the link keeps the key it has)."""
        self.uplink.doc = doc
        self.counters["topology_adopted"] += 1
        node = doc.by_id.get(self.me.gateway_id)
        if node is None or doc.epoch not in node.epoch_keys:
            self.counters["gateway_not_in_topology"] += 1
            return
        self.link.set_gateway_key(node.epoch_key(doc.epoch))

    def close(self) -> None:
        """Zero every channel's keys (call after ``save_channels``); close live devices."""
        for peer in self.peers.values():
            peer.channel.close()
        for device in self.live_devices():
            device.stop()

    def live_devices(self) -> list[LiveDevice]:
        """The live microphone and speaker of the options, if any."""
        mic, speaker = self.options.mic, self.options.speaker
        return [d for d in (mic, speaker) if isinstance(d, LiveMic | LiveSpeaker)]

    async def _open_devices(self, call: ActiveCall) -> None:
        """Open the live devices for a call that connected, each in a worker thread (PortAudio
        blocks while it opens one); closed again if the call ended meanwhile. A device that
        cannot be opened is a warning: the call goes on (silence, or not heard)."""
        for device in self.live_devices():
            try:
                await trio.to_thread.run_sync(device.start)
            except AudioError as exc:
                self.counters["device_unavailable"] += 1
                self._ui(f"warning: {exc}")
            if call.concluded:
                await trio.to_thread.run_sync(device.stop)

    # -- the tasks -----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Be online until cancelled: the uplink on its grid, the downlink, contact refresh."""
        self._offset = monotonic_offset_s()
        self.started_at = trio.current_time() + self._offset
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._uplink_task)
            nursery.start_soon(self._downlink_task)
            nursery.start_soon(self._refresh_task)
            task_status.started()

    def _mono(self) -> float:
        return trio.current_time() + self._offset

    @property
    def offset(self) -> float:
        """``time.monotonic()`` - ``trio.current_time()`` (seconds), once online."""
        return self._offset

    def uplink_bytes_per_s(self) -> float | None:
        """UDP payload bytes sent in the last whole second (cover included), or None."""
        series = self.link.meter.series()
        up = series["up_bytes"]
        assert isinstance(up, list)
        return float(up[-2]) if len(up) >= 2 else None

    async def _uplink_task(self) -> None:
        up = self.uplink
        up.start(trio.current_time())
        while True:
            await trio.sleep_until(up.due)
            at = up.take_slot(trio.current_time())
            call = self.current
            packet = call.caller.slot(at) if call is not None else up.fill(at).packet
            if packet is not None:
                await self.link.send(packet)

    async def _downlink_task(self) -> None:
        while True:
            received = await self.link.receive()
            if received.delivery.kind is not DownlinkKind.MESSAGE:
                self.counters["other"] += 1
                continue
            call = self.current
            if call is not None:
                call.caller.deliver(received.delivery.data, received.at)
                continue
            self._idle_delivery(received.delivery.data, received.at)

    async def _refresh_task(self) -> None:
        while True:
            await trio.sleep(CONTACTS_REFRESH_S)
            if self.current is None:
                try:
                    self.load_contacts()
                except ProfileError:
                    self.counters["contacts_unreadable"] += 1

    def _idle_delivery(self, data: bytes, at: float) -> None:
        """A delivery while no call is on: a contact's signaling (an offer rings), else
        cover (ours, or a frame of someone who is not a contact: ``unopened``)."""
        for name, peer in self.peers.items():
            try:
                envelope = peer.framer.open(data)
            except InvalidTag:  # not this contact's frame
                continue
            self.counters["signal_frames"] += 1
            if envelope is None:
                return  # a fragment; the rest follows
            call = self._new_call(name, Role.CALLEE)
            call.caller.handle_envelope(envelope, trio.current_time())
            if not call.caller.ringing.is_set() and not call.caller.ended.is_set():
                self.counters["stray_signal"] += 1  # not an offer (a late HANGUP, a replay)
                self._drop_call(call)
                events = self._security_events(call)
                if events and self._nursery is not None:  # e.g. a downgraded offer, refused
                    self._nursery.start_soon(self._save_security_in_thread, events)
            return
        self.counters["unopened"] += 1

    # -- calls ---------------------------------------------------------------------------

    def _new_call(self, name: str, role: Role, duration_s: float | None = None) -> ActiveCall:
        peer = self.peers[name]
        card = peer.contact.card
        contact = Contact(Address(card.gateway_id, card.mailbox_id), peer.signal_key)
        voice = self.options.mic if self.options.mic is not None else np.zeros(0, np.int16)
        holder: list[ActiveCall] = []

        def on_event(what: str, now: float) -> None:
            if holder:
                self._on_event(holder[0], what, now)

        caller = Caller(
            self.link, self.uplink.doc, self.me, contact, peer.channel, voice,
            profile=self.options.voice, mean_delay_s=self.options.mean_delay_s,
            auto_answer=self.options.auto_answer, uplink=self.uplink, framer=peer.framer,
            on_event=on_event, security_log=SecurityLog(clock=self._wall_clock),
        )  # fmt: skip
        caller.tx.to_monotonic_s = caller.rx.to_monotonic_s = self._offset
        call = ActiveCall(name, role, peer.contact.state, caller, duration_s=duration_s)
        caller.media_in.on_arrival = call.arrived
        # Decoded audio is kept only for a speaker file (written at the call's end).
        caller.rx.keep_pcm = isinstance(self.options.speaker, Path)
        if isinstance(self.options.speaker, LiveSpeaker):
            caller.media_in.on_play = self.options.speaker.play
        caller.on_rtt = call.rtt
        holder.append(call)
        self.current = call
        assert self._nursery is not None
        self._nursery.start_soon(self._call_task, call)
        return call

    def _drop_call(self, call: ActiveCall) -> None:
        call.cancel.cancel()
        if self.current is call:
            self.current = None
        self.uplink.peer = (self.me.gateway_id, self.me.mailbox)

    def dial(self, name: str, duration_s: float | None = None) -> ActiveCall:
        """Call the contact ``name``; hang up ``duration_s`` seconds after it connects
        (None: when asked). ContactError for an unknown name, UsageError while a call is
        on or before ``run``."""
        if self._nursery is None:
            raise UsageError("the client is not online yet")
        if self.current is not None:
            raise UsageError("busy: a call is on")
        if name not in self.peers:
            self.load_contacts()
        if name not in self.peers:
            raise ContactError(f"no contact called {name!r} (see: contact list)")
        call = self._new_call(name, Role.CALLER, duration_s)
        call.mark("dial", self._mono())
        call.caller.place()
        self._ui(f"calling {name} [{call.state}] {MODE_BADGE}")
        return call

    async def _hang_up_after(self, call: ActiveCall, duration_s: float) -> None:
        await call.caller.connected.wait()
        await trio.sleep(duration_s)
        self.hangup(call)

    def hangup(self, call: ActiveCall | None = None, reason: str | None = None) -> bool:
        """Hang up ``call`` (default: the current one); ``reason`` overrides the reason
        recorded for our side. False when there is no such call or it already ended."""
        call = call or self.current
        if call is None or call.caller.ended.is_set() or call is not self.current:
            return False
        if reason is not None:
            call.reason = reason
        call.ended_here = True
        call.caller.hangup()
        return True

    def mute(self, on: bool) -> bool:
        """Mute (``on``) or unmute the microphone of the current call: while muted the call
        sends encoded silence, at the same packet rate and size. False when no call is on."""
        call = self.current
        if call is None or call.caller.ended.is_set():
            return False
        if call.caller.media_out.muted != on:
            call.caller.media_out.muted = on
            call.notify()
        return True

    def answer(self) -> bool:
        """Pick up the ringing call; False when nothing rings."""
        return self._decide(accept=True)

    def decline(self) -> bool:
        """Refuse the ringing call; False when nothing rings."""
        return self._decide(accept=False)

    def _decide(self, *, accept: bool) -> bool:
        call = self.current
        if call is None or call.role is not Role.CALLEE or "connected" in call.times:
            return False
        try:
            call.caller.accept() if accept else call.caller.decline()
            call.ended_here = not accept
        except UsageError:
            return False
        return True

    def _on_event(self, call: ActiveCall, what: str, now: float) -> None:
        if what in ROUTE_EVENTS:  # may recur; counted in the call record, not in times
            self._route_event(call, what)
            return
        first = what not in call.times
        call.mark(what, now + self._offset)
        if not first:
            return
        who = f"{call.name} [{call.state}] {MODE_BADGE}"
        if what == "ringing" and call.role is Role.CALLEE:
            hint = "answering" if self.options.auto_answer else (
                "a: answer, d: decline" if self.options.keys else
                f"phantom-call answer or decline --dir {self.profile.directory}")  # fmt: skip
            self._ui(f"RINGING  {who}  ({hint})")
        elif what == "ringing":
            self._ui(f"ringing at {call.name}")
        elif what == "connected":
            self._ui(f"connected with {who}")
            if self._nursery is not None:  # the setup's messages advanced the channel
                self._nursery.start_soon(self._save_states_in_thread)
                self._nursery.start_soon(self._open_devices, call)
        elif what == "ended":
            reason = call.caller.end_reason
            if call.reason is None:
                call.reason = reason.name if reason is not None else "unknown"
            self._ui(f"call with {call.name} ended: {call.reason}")

    def _route_event(self, call: ActiveCall, what: str) -> None:
        caller = call.caller
        if what == "route failover":
            left = self.uplink.spare_routes
            self._ui(f"call with {call.name}: route lost packets, moved to a spare ({left} left)")
        elif caller.route_no_spare == 1:  # said once per call; counted every time
            self._ui(f"warning: call with {call.name}: route lost packets, no spare route left")
        call.changed.set()
        call.changed = trio.Event()

    async def _call_task(self, call: ActiveCall) -> None:
        """The call's playout, then, once it ended and drained, its records."""
        with call.cancel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call.caller.play)
                if call.duration_s is not None:
                    nursery.start_soon(self._hang_up_after, call, call.duration_s)
                await call.caller.ended.wait()
                await trio.sleep(DRAIN_S)
                nursery.cancel_scope.cancel()
        if call.caller.ended.is_set() or call.reason is not None:
            await self._finish_in_thread(call)

    def finish(self, call: ActiveCall) -> None:
        """Record the call (report, call log, speaker file, channel state) and go idle,
        writing the files here (at shutdown; a call's own end writes them in a thread)."""
        if not call.concluded:
            self._finished(call, self._conclude(call)())

    async def _finish_in_thread(self, call: ActiveCall) -> None:
        """``finish``, with the file writes (fsync, sealing) in a worker thread, so the
        uplink's slots keep their time while they run."""
        if not call.concluded:
            persist = self._conclude(call)
            self._finished(call, await trio.to_thread.run_sync(persist))

    def _finished(self, call: ActiveCall, problems: list[str]) -> None:
        for problem in problems:
            self._ui(f"warning: {problem}")
        call.done.set()
        call.changed.set()

    def _conclude(self, call: ActiveCall) -> Callable[[], list[str]]:
        """Go idle and take what the records need now; returns the blocking writes, which
        return the problems they met (as text)."""
        call.concluded = True
        if "ended" not in call.times:
            call.mark("ended", self._mono())
        self._drop_call(call)
        self.calls.append(self._call_record(call))
        speaker, rate = self.options.speaker, call.caller.profile.sample_rate_hz
        speaker = speaker if isinstance(speaker, Path) else None  # a live one is closed here
        devices = self.live_devices()
        pcm = np.concatenate(call.caller.rx.pcm) if speaker and call.caller.rx.pcm else None
        states = {p.channel.conversation_id: p.channel.to_bytes() for p in self.peers.values()}
        report = self._report_bytes()
        security = self._security_events(call)
        record = None
        if self._wall_clock is not None:
            now = self._wall_clock()
            record = (self._log_record(call, now), now)

        def persist() -> list[str]:
            for device in devices:
                device.stop()
            problems = []
            if speaker is not None and pcm is not None:
                try:
                    write_speaker_file(speaker, pcm, rate)
                except AudioError as exc:
                    problems.append(str(exc))
            try:
                self._save_states(states)
                if record is not None:
                    with self._profile_locked():
                        self.profile.append_call(*record)
                self._save_security(security)
            except ProfileError as exc:
                problems.append(str(exc))
            problem = self._write_report_bytes(report)
            return problems if problem is None else [*problems, problem]

        return persist

    @staticmethod
    def _security_events(call: ActiveCall) -> list[tuple[str, SecurityRecord]]:
        """The call's security log records (mode changes, refused downgrades) not taken
        yet, with the contact's local name."""
        records = list(call.caller.security_log)
        events = [(call.name, record) for record in records[call.security_taken :]]
        call.security_taken = len(records)
        return events

    def _save_security(self, events: list[tuple[str, SecurityRecord]]) -> None:
        """Append ``events`` to the profile's security log (``phantom-call security-log``)."""
        if events:
            with self._profile_locked():
                self.profile.append_security_events(events)

    async def _save_security_in_thread(self, events: list[tuple[str, SecurityRecord]]) -> None:
        try:
            await trio.to_thread.run_sync(self._save_security, events)
        except ProfileError as exc:
            self._ui(f"warning: {exc}")

    def _log_record(self, call: ActiveCall, wall_now: float) -> CallRecord:
        times = call.times
        connected = "connected" in times
        duration = int(times["ended"] - times["connected"]) if connected else 0
        if connected:
            result = LogResult.ANSWERED
        elif call.reason == EndReason.DECLINED.name:
            result = LogResult.DECLINED
        elif call.role is Role.CALLEE:
            result = LogResult.MISSED
        elif call.reason == EndReason.HANGUP.name:
            result = LogResult.CANCELLED
        else:
            result = LogResult.FAILED
        direction = CallDirection.OUTGOING if call.role is Role.CALLER else CallDirection.INCOMING
        began = wall_now - (self._mono() - min(times.values()))
        return CallRecord(int(began), max(0, duration), direction, result, call.name)

    def _call_record(self, call: ActiveCall) -> dict[str, object]:
        caller, off = call.caller, self._offset
        tx, rx = caller.tx, caller.rx
        frame_s = caller.profile.frame_ms / 1000
        capture = None
        if tx.capture_start is not None:
            start = tx.capture_start + off
            capture = [round(start + i * frame_s, 6) for i in range(tx.frames_sent)]
        return {
            "role": "caller" if call.role is Role.CALLER else "callee",
            "contact": call.name,
            "trust": str(call.state),
            "mode": MODE_BADGE,
            "key_agreement": KEY_AGREEMENT,
            "devices": {d.role: d.record() for d in self.live_devices()},  # live mic, speaker
            "times": {k: round(v, 6) for k, v in call.times.items()},
            "end_reason": call.reason,
            **call_settings(caller),  # mean_delay_ms_per_hop, hops, channel, profile
            "jitter": jitter_counts(caller),  # the peer's frames: late, recovered, skipped
            "displaced": tx.displaced,  # our media packets whose slot signaling took
            "frame_ms": caller.profile.frame_ms,
            "frames_per_packet": caller.profile.frames_per_packet,
            "capture": capture,  # CLOCK_MONOTONIC s of frame i's first sample, i = 0..
            "sent": {str(s): round(t + off, 6) for s, t in tx.sent.items()},
            "arrived": {str(s): round(t + off, 6) for s, t in rx.arrived.items()},
            "played": [[i, kind, round(t + off, 6)] for i, kind, t in rx.items],
            "received": dict(caller.received),
            "signaling": {"channel_refused": caller.call.counters.channel},
            **route_record(caller),
        }

    # -- the report ----------------------------------------------------------------------

    def report(self) -> dict[str, object]:
        """The per-process report (see the module docstring); JSON-ready."""
        return {
            "pid": self._pid,
            "ip": self.options.bind,
            "online_since": self.started_at,
            "slot_ms": self.options.voice.packet_interval_ms,
            "key_agreement": KEY_AGREEMENT,
            "calls": list(self.calls),
            "traffic": self.link.meter.series(self._offset),
            "uplink_slots": dict(self.uplink.slots),
            "packet_sizes": sorted(self.uplink.sent_sizes),  # bytes, of every slot sent
            "deliveries": dict(self.counters),
            "link": dict(self.link.stats),
        }

    def write_report(self) -> None:
        """Write the report to ``options.report`` atomically (0600), if one was asked."""
        problem = self._write_report_bytes(self._report_bytes())
        if problem is not None:
            self._ui(f"warning: {problem}")

    def _report_bytes(self) -> bytes:
        return json.dumps(self.report(), indent=1).encode() + b"\n"

    def _write_report_bytes(self, data: bytes) -> str | None:
        """Write ``data`` as the report; the problem as text, or None."""
        if self.options.report is None:
            return None
        try:
            atomic_write(self.options.report, data)
        except OSError as exc:
            return f"--report {self.options.report}: {exc.strerror}"
        return None


def route_record(caller: Caller) -> dict[str, object]:
    """The call record's route keys: ``route_failovers`` (moves to a spare route),
    ``route_no_spare`` (the route was judged failed with no spare left), ``route_verdicts``
    (``[[CLOCK_MONOTONIC s, reason], ...]``, client._route_health), ``rtt_ms`` (percentiles
    ``p50``/``p90``/``p99`` and count ``n`` of the round trips the peer's receiver reports
    gave, or None) and ``one_way_estimate_ms`` (the same halved: an estimate, the two
    directions' delays being drawn alike)."""
    off = caller.tx.to_monotonic_s
    rtt_ms = np.array([1000 * r for _, r in caller.rtt])

    def percentiles(values: np.ndarray) -> dict[str, float] | None:
        if not len(values):
            return None
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return {"n": len(values), "p50": round(float(p50), 1), "p90": round(float(p90), 1),
                "p99": round(float(p99), 1)}  # fmt: skip

    return {
        "route_failovers": caller.route_failovers,
        "route_no_spare": caller.route_no_spare,
        "route_verdicts": [[round(t + off, 6), why] for t, why in caller.route_verdicts],
        "rtt_ms": percentiles(rtt_ms),
        "one_way_estimate_ms": percentiles(rtt_ms / 2),
    }
