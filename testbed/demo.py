"""Two callers, one call through a real mixnet, and the measured report (Trio).

    doc = DirectoryClient(urls, keys, threshold).fetch()     # verified topology
    result = trio.run(run_call, doc, gw_a, gw_b, CallOptions(duration_s=8))
    report = call_report(result)                              # plain dict, JSON-ready

Both callers run as tasks of one process; each records its times on Trio's clock (monotonic)
and the report turns them into CLOCK_MONOTONIC seconds (``to_monotonic_s`` of each trace)
before it subtracts the capture time of a frame at one caller from its playout time at the
other, so the figures hold for two callers in two processes of one machine as well. The
wall clock is never read for a figure. Their packets still cross real UDP sockets and the
testnet's node processes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from client import (
    IdentityChannel,
    SecureChannel,
    VoiceProfile,
    artificial_voice,
    pesq_wb,
    public_identity,
)
from client._tasks import open_background
from client._voice import Pcm
from client.call import DEFAULT_MEAN_DELAY_S, Address, Caller, Contact, CoverKind, codec_delay_s
from client.gateway_link import GatewayLink, open_gateway_link
from client.phone import CALL_SETTINGS, call_settings, jitter_counts, route_record
from overlay import MailboxKey, TopologyDocument, UsageError

SETUP_TIMEOUT_S = 15.0  # offer to both sides' media start, at most
HANGUP_TIMEOUT_S = 10.0  # hangup to the peer's CallEnded, at most
DRAIN_S = 1.5  # after the hangup, listen this long for media still in flight
WARMUP_S = 1.0  # online with cover only before the call is placed
UPLINK_FAULTS = ("skipped", "unroutable")  # Caller.slots counters a clean call keeps at 0
KEY_AGREEMENT = "X25519"  # IdentityChannel: static X25519 of the two identities
ENVELOPE_MS = (300.0, 600.0)  # the target range of mouth-to-ear delay (DESIGN.md)
Progress = Callable[[float, float], None]  # (seconds of call so far, total seconds)
PhaseHook = Callable[[str, str], None]  # (phase, what it waits for), e.g. ("ringing", "...")
Emodel = Callable[[float, float], tuple[float, float]]  # (Ta ms, loss) -> (R, MOS)


@dataclass(frozen=True, slots=True)
class CallOptions:
    duration_s: float = 20.0
    mean_delay_s: float = DEFAULT_MEAN_DELAY_S
    profile: VoiceProfile = field(default_factory=VoiceProfile)
    cover: CoverKind = CoverKind.LOOP

    def __post_init__(self) -> None:
        if not isinstance(self.duration_s, int | float) or not 1.0 <= self.duration_s <= 3600:
            raise UsageError("duration_s must be a number of seconds in 1..3600")
        if not isinstance(self.mean_delay_s, int | float) or not 0 <= self.mean_delay_s <= 1:
            raise UsageError("mean_delay_s must be a number of seconds in 0..1")


@dataclass(frozen=True, slots=True)
class CallResult:
    """The two callers after the call, their voices, and how long setup took."""

    options: CallOptions
    a: Caller
    b: Caller
    voice_a: Pcm
    voice_b: Pcm
    setup_s: float
    wall_s: float
    clients: dict[str, dict[str, float]] = field(default_factory=dict)  # "A", "B": rates


@dataclass(frozen=True, slots=True)
class LinkSample:
    """A gateway link's byte counters at one moment (Trio clock, seconds)."""

    at_s: float
    sent_bytes: int
    received_bytes: int


def sample_link(link: GatewayLink) -> LinkSample:
    """The UDP payload bytes ``link`` has sent and received so far, stamped now."""
    return LinkSample(trio.current_time(), link.stats["sent_bytes"], link.stats["received_bytes"])


def link_rates(first: LinkSample, last: LinkSample) -> dict[str, float]:
    """Bytes per second between two samples of one link: ``uplink_bytes_per_s`` (sent),
    ``downlink_bytes_per_s`` (received), ``online_s``; UDP payload, cover included.
    UsageError if ``last`` is not later than ``first``."""
    span = last.at_s - first.at_s
    if span <= 0:
        raise UsageError("link_rates needs a later second sample")
    return {
        "uplink_bytes_per_s": round((last.sent_bytes - first.sent_bytes) / span, 1),
        "downlink_bytes_per_s": round((last.received_bytes - first.received_bytes) / span, 1),
        "online_s": round(span, 3),
    }


async def run_call(
    doc: TopologyDocument,
    gateway_a: bytes,
    gateway_b: bytes,
    options: CallOptions | None = None,
    *,
    progress: Progress | None = None,
    phase: PhaseHook | None = None,
) -> CallResult:
    """A attached to ``gateway_a`` calls B at ``gateway_b``; both talk; A hangs up.
    ``phase`` (if given) hears of each phase as it begins (testbed.report.PHASES names).

    Raises ``AttachError`` if a gateway does not acknowledge its caller, ``TooSlowError``
    if the call does not connect within ``SETUP_TIMEOUT_S`` or end within
    ``HANGUP_TIMEOUT_S`` seconds (each as itself, not inside an ``ExceptionGroup``).
    """
    opts = options or CallOptions()
    began = time.monotonic()
    # Each caller has its own identity and builds its channel from its own private key and
    # the other's public identity (from the contact card), as two callers on two machines.
    sign_a, dh_a, sign_b, dh_b = (os.urandom(32) for _ in range(4))
    id_a, id_b = public_identity(sign_a, dh_a), public_identity(sign_b, dh_b)
    chan_a, chan_b = IdentityChannel(dh_a, id_a, id_b), IdentityChannel(dh_b, id_b, id_a)
    signal_key = os.urandom(32)  # exchanged over the E2EE chat with the addresses
    key_a, key_b = MailboxKey.generate(), MailboxKey.generate()  # each stays with its client
    addr_a = Address(gateway_a, key_a.mailbox_id)  # what contacts know: ids, never keys
    addr_b = Address(gateway_b, key_b.mailbox_id)
    seconds = opts.duration_s + 5.0  # the mic never runs dry during the call
    voice_a = artificial_voice(seconds, seed=1)
    voice_b = artificial_voice(seconds, seed=2, female=True)

    def endpoint(gw: bytes) -> tuple[tuple[str, int], bytes]:
        node = doc.node(gw)
        if node.client_port is None:
            raise UsageError("a caller's gateway must have a client port")
        return (node.host, node.client_port), node.epoch_key(doc.epoch)

    (addr_ga, key_ga), (addr_gb, key_gb) = endpoint(gateway_a), endpoint(gateway_b)
    async with (
        open_gateway_link(doc.geometry, addr_ga, key_ga, key_a) as link_a,
        open_gateway_link(doc.geometry, addr_gb, key_gb, key_b) as link_b,
    ):
        online = {"A": sample_link(link_a), "B": sample_link(link_b)}  # attached from here

        def caller(link: GatewayLink, me: Address, peer: Address, chan: SecureChannel,
                   voice: Pcm) -> Caller:  # fmt: skip
            return Caller(link, doc, me, Contact(peer, signal_key), chan, voice,
                          profile=opts.profile, mean_delay_s=opts.mean_delay_s,
                          cover=opts.cover)  # fmt: skip

        a = caller(link_a, addr_a, addr_b, chan_a, voice_a)
        b = caller(link_b, addr_b, addr_a, chan_b, voice_b)

        # TooSlowError leaves as itself; the channels' keys are zeroed once both tasks ended.
        def tell(name: str, waiting_for: str) -> None:
            if phase is not None:
                phase(name, waiting_for)

        async with _closed_after(chan_a, chan_b), open_background() as nursery:
            tell("online", f"A and B send cover only for {WARMUP_S:g} s before the call")
            await nursery.start(a.run)
            await nursery.start(b.run)
            await trio.sleep(WARMUP_S)
            placed = trio.current_time()
            a.place()
            tell("ringing", f"A calls B; both connect within {SETUP_TIMEOUT_S:g} s")
            with trio.fail_after(SETUP_TIMEOUT_S):
                await a.connected.wait()
                await b.connected.wait()
            setup_s = trio.current_time() - placed
            tell("in call", f"calling for {opts.duration_s:g} s")
            start = trio.current_time()
            while (elapsed := trio.current_time() - start) < opts.duration_s:
                if progress is not None:
                    progress(elapsed, opts.duration_s)
                await trio.sleep(min(0.25, opts.duration_s - elapsed))
            if progress is not None:
                progress(opts.duration_s, opts.duration_s)
            a.hangup()
            tell("after call", f"A hung up; B hears it within {HANGUP_TIMEOUT_S:g} s")
            with trio.fail_after(HANGUP_TIMEOUT_S):
                await b.ended.wait()
            tell("after call", f"B ended the call; media still in flight for {DRAIN_S:g} s")
            await trio.sleep(DRAIN_S)
        clients = {
            name: link_rates(online[name], sample_link(link))
            for name, link in (("A", link_a), ("B", link_b))
        }
    return CallResult(opts, a, b, voice_a, voice_b, setup_s, time.monotonic() - began, clients)


@asynccontextmanager
async def _closed_after(*channels: IdentityChannel) -> AsyncIterator[None]:
    """Close (zero the keys of) ``channels`` when the block ends, however it ends."""
    try:
        yield
    finally:
        for channel in channels:
            channel.close()


# -- the report ------------------------------------------------------------------------


def _pcts(values_s: list[float]) -> dict[str, float] | None:
    if not values_s:
        return None
    ms = np.asarray(values_s) * 1000
    return {
        "p50": round(float(np.percentile(ms, 50)), 1),
        "p95": round(float(np.percentile(ms, 95)), 1),
        "p99": round(float(np.percentile(ms, 99)), 1),
        "max": round(float(ms.max()), 1),
        "mean": round(float(ms.mean()), 1),
    }


def _rfc3550_jitter_ms(sent: dict[int, float], arrived: dict[int, float]) -> float:
    """Interarrival jitter J of RFC 3550 (6.4.1), over packets in arrival order; both
    stamps in seconds on one clock."""
    order = sorted((t, seq) for seq, t in arrived.items() if seq in sent)
    j, prev = 0.0, None
    for at, seq in order:
        transit = at - sent[seq]
        if prev is not None:
            j += (abs(transit - prev) - j) / 16
        prev = transit
    return round(j * 1000, 2)


def direction_figures(
    sent: dict[int, float],
    arrived: dict[int, float],
    mouth_to_ear_s: list[float],
    *,
    frames_sent: int,
    played: int,
    concealed: int,
    stretched: int | None,
    codec_s: float,
    jitter: dict[str, int] | None,
    displaced: int | None,
    route: dict[str, Any] | None = None,
    emodel: Emodel | None = None,
) -> dict[str, object]:
    """The figures of one direction, in both modes (``direction_report`` in one process,
    ``testbed.callers.record_direction`` from two processes' records), without PESQ.

    ``sent``, ``arrived``: media seq -> send slot and arrival time, seconds on one clock;
    ``mouth_to_ear_s``: per frame played, seconds (codec delay included); ``frames_sent``,
    ``played``, ``concealed``, ``stretched``: frames of the sender, counted at the receiver;
    ``codec_s``: the codec delay, seconds; ``jitter``: the receiver's jitter buffer's
    ``late``, ``recovered``, ``skipped`` frames (``client.phone.jitter_counts``; None:
    unknown, each figure null); ``displaced``: the sender's media packets whose slot
    signaling took; ``route``: the sender's route keys (``client.phone.route_record``: the
    round trips its peer's receiver reports gave, halved into the one-way estimate the
    call screen shows, and its route failovers; None: unknown). Besides the JSON figures,
    ``one_way_s`` (seconds, removed before JSON; compared with the simulator) and
    ``pesq_wb`` = None (the caller scores it)."""
    received = [s for s in sent if s in arrived]
    one_way = [arrived[s] - sent[s] for s in received]
    late_loss = concealed / (played + concealed) if played + concealed else None
    counts = jitter or {}
    out: dict[str, object] = {
        "packets_sent": len(sent),
        "packets_received": len(received),
        "packets_displaced_by_signaling": displaced,
        "loss": round(1 - len(received) / len(sent), 4) if sent else None,
        "one_way_ms": _pcts(one_way),
        "jitter_ms": _rfc3550_jitter_ms(sent, arrived),
        "mouth_to_ear_ms": _pcts(mouth_to_ear_s),
        "codec_delay_ms": round(codec_s * 1000, 2),
        "frames_sent": frames_sent,
        "frames_played": played,
        "concealed_frames": concealed,
        "late_frames": counts.get("late"),
        "late_loss": round(late_loss, 4) if late_loss is not None else None,
        "recovered_by_redundancy": counts.get("recovered"),
        "stretched": stretched,
        "skipped": counts.get("skipped"),
        # what the sender's screen estimated from receiver reports (RTT/2), to set beside
        # the true one-way delay above; and how often its route failed over
        "one_way_estimate_ms": (route or {}).get("one_way_estimate_ms"),
        "route_failovers": (route or {}).get("route_failovers"),
        "pesq_wb": None,
        "one_way_s": one_way,  # removed before JSON; compared with the simulator
    }
    if emodel is not None and mouth_to_ear_s and late_loss is not None:
        r, mos = emodel(float(np.mean(mouth_to_ear_s)) * 1000, late_loss)
        out["emodel"] = {"r": round(r, 1), "mos": round(mos, 2)}
    return out


def direction_report(
    tx: Caller, rx: Caller, voice: Pcm, *, pesq: bool = True, emodel: Emodel | None = None
) -> dict[str, object]:
    """Figures of the media that ``tx`` sent and ``rx`` played (:func:`direction_figures`,
    plus ``pesq_wb`` and ``received_pcm``, removed before JSON).

    Differences of a time at ``rx`` and one at ``tx`` are taken on CLOCK_MONOTONIC: each
    trace's ``to_monotonic_s`` is added to its own times (``shift``), so the two callers
    may run in different Trio runs or processes of one machine."""
    shift = rx.rx.to_monotonic_s - tx.tx.to_monotonic_s  # rx's clock to tx's clock
    arrived = {s: t + shift for s, t in rx.rx.arrived.items()}
    frame_s = tx.profile.frame_ms / 1000
    capture = tx.tx.capture_start or 0.0
    codec = codec_delay_s(tx.profile)
    # Only the frames the sender produced: after its last one the receiver conceals on.
    kept = [k for k, (i, _, _) in enumerate(rx.rx.items) if i < tx.tx.frames_sent]
    items = [rx.rx.items[k] for k in kept]
    m2e = [t + shift - (capture + i * frame_s) + codec for i, kind, t in items if kind == "frame"]
    out = direction_figures(
        tx.tx.sent, arrived, m2e, frames_sent=tx.tx.frames_sent,
        played=sum(1 for _, kind, _ in items if kind == "frame"),
        concealed=sum(1 for _, kind, _ in items if kind == "missing"),
        stretched=sum(1 for _, kind, _ in items if kind == "stretch"), codec_s=codec,
        jitter=jitter_counts(rx), displaced=tx.tx.displaced, route=route_record(tx),
        emodel=emodel,
    )  # fmt: skip
    chunks = [rx.rx.pcm[k] for k in kept]
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    out["received_pcm"] = pcm  # removed before JSON; written as WAV on request
    reference = voice[: tx.tx.frames_sent * tx.profile.samples_per_frame]
    if pesq and len(pcm) >= 16000 and len(reference) >= 16000:
        try:
            out["pesq_wb"] = round(pesq_wb(reference, pcm).mos, 3)
        except ImportError:  # the `pesq` package comes with the test extra
            out["pesq_wb_missing"] = "pip install pesq"
    return out


def envelope_verdict(p99_ms: float | None) -> str:
    """'below', 'inside' or 'above' the 300-600 ms envelope; 'none' without data."""
    if p99_ms is None or math.isnan(p99_ms):
        return "none"
    lo, hi = ENVELOPE_MS
    return "below" if p99_ms < lo else "inside" if p99_ms <= hi else "above"


def call_report(
    result: CallResult, *, pesq: bool = True, emodel: Emodel | None = None
) -> dict[str, object]:
    """The whole report (:func:`assemble_report`) of a call in this process."""
    a, b, opts = result.a, result.b, result.options
    dirs = {
        "A->B": direction_report(a, b, result.voice_a, pesq=pesq, emodel=emodel),
        "B->A": direction_report(b, a, result.voice_b, pesq=pesq, emodel=emodel),
    }
    return assemble_report(
        dirs, duration_s=opts.duration_s, wall_s=result.wall_s,
        # one process: the offer reaches B in the same run, ringing is not told apart
        setup_s={"to_ringing": None, "to_connected": round(result.setup_s, 3)},
        key_agreement=KEY_AGREEMENT,
        end_reason={"A": _name(a.end_reason), "B": _name(b.end_reason)},
        settings=call_settings(a), slot_ms=opts.profile.packet_interval_ms,
        uplink_slots={"A": a.slots, "B": b.slots},
        packet_sizes=a.sent_sizes | b.sent_sizes,
        received={"A": a.received, "B": b.received}, clients=result.clients,
    )  # fmt: skip


def assemble_report(
    directions: Mapping[str, Mapping[str, object]],
    *,
    duration_s: float | None,
    wall_s: float | None,
    setup_s: dict[str, float | None],
    key_agreement: str | None,
    end_reason: dict[str, str | None],
    settings: Mapping[str, object],
    slot_ms: float | None,
    uplink_slots: Mapping[str, Mapping[str, int] | None],
    packet_sizes: Iterable[int],
    received: Mapping[str, Mapping[str, int] | None],
    clients: Mapping[str, Mapping[str, object]],
) -> dict[str, object]:
    """The report's keys, the same in both modes (one process: :func:`call_report`, two:
    ``testbed.callers.report_from_records``), JSON-ready but for each direction's
    ``one_way_s`` (and ``received_pcm`` in one process).

    ``directions``: "A->B" and "B->A" (:func:`direction_figures`); ``duration_s`` of the
    call and ``wall_s`` of the run, seconds; ``setup_s``: ``to_ringing`` and
    ``to_connected``, seconds from the dial; ``settings``: ``client.phone.call_settings``
    (``mean_delay_ms_per_hop``, ``hops``, ``channel``, ``profile``); ``uplink_slots``:
    per caller, slots by kind (None: unknown), "skipped" and "unroutable" always listed;
    ``packet_sizes``: bytes of every packet the callers sent; ``received``: per caller,
    deliveries by kind; ``clients``: per caller, UDP payload rates while online."""
    p99s = [m["p99"] for d in directions.values() if isinstance(m := d["mouth_to_ear_ms"], dict)]
    worst = max(p99s) if p99s else None
    return {
        "duration_s": duration_s,
        "wall_s": round(wall_s, 1) if wall_s is not None else None,
        "setup_s": setup_s,
        "key_agreement": key_agreement,
        "end_reason": end_reason,
        **{key: settings.get(key) for key in CALL_SETTINGS},
        "slot_ms": slot_ms,
        "directions": directions,
        "mouth_to_ear_p99_ms": worst,
        "p99_vs_300_600_ms": envelope_verdict(worst),
        "uplink": {  # slots per kind; "skipped" and "unroutable" are always listed
            **{name: _uplink_slots(slots) for name, slots in uplink_slots.items()},
            "packet_sizes": sorted(set(packet_sizes)),
        },
        "received": {name: None if r is None else dict(r) for name, r in received.items()},
        # per client: UDP payload bytes/s each way while online
        "clients": {name: dict(c) for name, c in clients.items()},
    }


def _uplink_slots(slots: Mapping[str, int] | None) -> dict[str, int] | None:
    return None if slots is None else {**dict.fromkeys(UPLINK_FAULTS, 0), **slots}


def _name(reason: object) -> str | None:
    return getattr(reason, "name", None)
