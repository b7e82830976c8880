"""Measure one-way latency through a running testnet the way a voice stream sees it.

    state = TestnetState.load(Path("testnet"))
    result = trio.run(probe, state, ProbeSettings(duration_s=20))
    Path("measured.json").write_text(json.dumps(result.to_dict()))
    # then: phantom-sim validate --measured measured.json --scenario scenarios/voice.toml

A sender attached to the first gateway produces one packet per 20 ms audio frame and sends
it in the next slot of its own constant-rate grid (random phase), over a fresh path with
sender-chosen exponential delays, to a mailbox at the second gateway, whose receiver is
served by the gateway's constant-rate downlink. Latency counts from "ready at the sender"
(the frame is complete) to "arrived at the receiving client": the span ``sim.validate``
simulates, so the two can be compared.
"""

from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from overlay import MailboxKey, NoRouteError, create_forward, select_path, uniform01

from . import loadgen
from ._state import TestnetState

_HEAD = struct.Struct(">Qd")  # sequence number, ready time (seconds, trio.current_time())
DRAIN_S = 3.0  # seconds to keep listening after the last send


class ProbeError(Exception):
    """The probe cannot run (too few gateways, bad settings)."""


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """What the probe sends; times in seconds."""

    duration_s: float = 20.0
    frame_s: float = 0.020  # one audio frame
    frames_per_packet: int = 1  # slot = frames_per_packet * frame_s
    mean_delay_s: float = 0.0275  # sender-chosen delay per hop (sweep default)
    streams: int = 4  # concurrent streams, each with its own random frame and slot phase
    warmup_packets: int = 25  # left out of the samples (links attaching, caches cold)

    def __post_init__(self) -> None:
        if not (self.duration_s > 0 and self.frame_s > 0 and self.mean_delay_s >= 0):
            raise ProbeError("duration_s and frame_s must be > 0, mean_delay_s >= 0")
        if self.frames_per_packet < 1 or self.warmup_packets < 0 or self.streams < 1:
            raise ProbeError("frames_per_packet, streams must be >= 1; warmup_packets >= 0")

    @property
    def slot_s(self) -> float:
        """The sender's constant uplink interval."""
        return self.frame_s * self.frames_per_packet


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Measured one-way latencies (seconds) and counts; JSON-ready via :meth:`to_dict`."""

    settings: ProbeSettings
    sent: int
    received: int
    one_way_s: list[float] = field(repr=False)

    @property
    def loss(self) -> float:
        """Fraction of measured packets that never arrived."""
        return 0.0 if self.sent == 0 else 1.0 - self.received / self.sent

    def percentiles_ms(self) -> dict[str, float]:
        """p50/p90/p95/p99/max of the samples, in milliseconds."""
        xs = sorted(self.one_way_s)
        if not xs:
            return {}

        def q(p: float) -> float:
            return round(1000.0 * xs[min(len(xs) - 1, math.ceil(p / 100.0 * len(xs)) - 1)], 2)

        return {"p50": q(50), "p90": q(90), "p95": q(95), "p99": q(99), "max": q(100)}

    def to_dict(self) -> dict[str, Any]:
        """The file ``phantom-sim validate --measured`` reads."""
        return {
            "settings": asdict(self.settings),
            "sent": self.sent,
            "received": self.received,
            "loss": round(self.loss, 5),
            "percentiles_ms": self.percentiles_ms(),
            "one_way_s": [round(x, 6) for x in self.one_way_s],
        }


async def probe(state: TestnetState, settings: ProbeSettings) -> ProbeResult:
    """Run ``settings.streams`` streams from the first gateway to the second at once.

    One stream sees one fixed offset between its frame grid, its uplink slots and the
    gateway's downlink slots; several streams with random offsets sample what a population
    of callers sees, which is what the simulator models.
    """
    doc = await trio.to_thread.run_sync(loadgen.fetch_topology, state)
    gateways = sorted(doc.gateways, key=lambda g: g.port)
    if len(gateways) < 2:
        raise ProbeError("the probe needs a testnet with at least two gateways")
    src, dst = gateways[0].node_id, gateways[1].node_id
    try:  # the document is fixed for the whole probe: a route found now is found later
        select_path(doc, src, dst, settings.mean_delay_s)
    except NoRouteError as exc:
        raise ProbeError(f"the testnet's document has no route: {exc}") from None
    n = int(settings.duration_s / settings.slot_s)
    samples: list[float] = []
    received = 0

    async def stream() -> None:
        nonlocal received
        send_key, recv_key = MailboxKey.generate(), MailboxKey.generate()
        recv_box = recv_key.mailbox_id
        slot_s = settings.slot_s
        async with (
            loadgen.attach(doc, src, send_key) as uplink,
            loadgen.attach(doc, dst, recv_key) as downlink,
        ):

            async def receive() -> None:
                nonlocal received
                while True:
                    got = await downlink.receive()
                    if len(got.delivery.data) < _HEAD.size:
                        continue  # not one of ours: nothing to measure
                    seq, ready = _HEAD.unpack_from(got.delivery.data)
                    if seq >= settings.warmup_packets:
                        received += 1
                        samples.append(got.at - ready)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive)
                # Frames complete on a grid; the uplink sends on its own grid, both with
                # random offsets against every other clock in the network.
                offset = 0.5 + uniform01() * slot_s
                mono0 = trio.current_time() + offset  # the link stamps arrivals on it too
                phase = uniform01() * slot_s
                for seq in range(n):
                    ready = (seq + 1) * slot_s
                    slot = phase + math.ceil((ready - phase) / slot_s) * slot_s
                    await trio.sleep_until(mono0 + slot)
                    hops = select_path(doc, src, dst, settings.mean_delay_s)
                    body = _HEAD.pack(seq, mono0 + ready)
                    await uplink.send(create_forward(doc.geometry, hops, recv_box, body))
                await trio.sleep(DRAIN_S + 10 * settings.mean_delay_s)
                nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for _ in range(settings.streams):
            nursery.start_soon(stream)
    measured = settings.streams * max(0, n - settings.warmup_packets)
    return ProbeResult(settings, measured, received, samples)
