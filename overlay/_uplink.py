"""The constant-rate uplink of a Mode C client, sans-IO: which frame goes in the next slot.

    >>> import os
    >>> from overlay import VOICE, UplinkScheduler, build_document
    >>> doc = build_document(7, epoch_length_s=600, geometry=VOICE, descriptors=[])
    >>> me, peer = (os.urandom(16), os.urandom(16)), (os.urandom(16), os.urandom(16))
    >>> up = UplinkScheduler(doc, me, peer, slot_s=0.04)
    >>> up.start(100.0)
    >>> up.due, up.take_slot(100.0), up.due
    (100.0, 100.0, 100.04)
    >>> up.take_slot(100.13)  # woke up 90 ms late: two whole slots are skipped, never burst
    100.12
    >>> up.push_signal([b"s" * VOICE.user_payload])
    >>> slot = up.fill(100.12, media=(0, b"m" * VOICE.user_payload))
    >>> slot.packet, slot.displaced, up.signal_pending  # an empty document: skipped, it waits
    (None, True, 1)
    >>> sorted(up.slots.items())
    [('missed', 2), ('skipped', 1), ('unroutable', 1)]

Every slot (``slot_s`` seconds, on a fixed grid from ``start``) carries exactly one Sphinx
packet of the document's geometry: the oldest queued signaling frame, else the media frame
offered for this slot, else cover (a loop to our own mailbox, or a drop). A media frame a
signaling frame displaces is dropped (the next media packet's redundancy carries its
audio). By default (``RoutePolicy()``, ``per_call=False``) each packet takes a fresh path with
sender-chosen exponential delays. With ``RoutePolicy(per_call=True, failover=n)`` the
signaling and media of one call direction cross one route: the mixes of each layer are drawn
(:func:`sample_path`) at the call's first signaling or media packet after ``peer`` is set,
together with ``n`` spare routes, each keeping off the mixes of the routes before it where a
layer has mixes to spare; the per-hop delays are still drawn per packet.
``route_failed()`` moves the call to the next spare. Cover keeps a fresh path per packet (it
belongs to no call direction; docs/research.md "Client policy"). When the
document offers no path the slot still sends: drop cover to our own gateway alone, counted
``unroutable``, the signaling frame waiting for the next slot; only when not even our own
gateway is listed with a key is the slot ``skipped`` (no packet).

The scheduler holds no clock and no socket: the caller passes ``now`` (seconds on any one
monotonic clock) and sends what ``fill`` returns; randomness comes from the injected ``rng``.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from ._errors import UsageError
from ._sphinx import Hop, Rng, create_drop, create_forward
from ._topology import (
    DirectoryError,
    NodeRole,
    NoRouteError,
    TopologyDocument,
    sample_path,
    select_path,
    uniform_index,
)

GRID_EPSILON_S = 1e-9  # seconds: a time this close before a grid point counts as on it


class SlotKind(Enum):
    """What one uplink slot carried."""

    SIGNAL = "signal"
    MEDIA = "media"
    COVER = "cover"


class CoverKind(Enum):
    """The cover a slot with nothing to say sends."""

    LOOP = "loop"  # to our own mailbox (keeps our downlink busy too)
    DROP = "drop"  # discarded by the last hop


Endpoint = tuple[bytes, bytes]  # (gateway node id, mailbox id)
MAX_ROUTE_FAILOVER = 16  # spare routes a call direction may hold (client.policy's bound)


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """How the uplink routes a call's signaling and media.

    ``per_call``: False, a fresh path per packet (the default); True, one route per call
    direction (the mixes fixed, the delays drawn per packet). ``failover``: spare routes
    drawn with it, 0..16 (only with ``per_call``). Raises ``UsageError`` out of range.

        >>> RoutePolicy(per_call=True, failover=2)
        RoutePolicy(per_call=True, failover=2)
        >>> RoutePolicy(failover=1)
        Traceback (most recent call last):
        ...
        overlay._errors.UsageError: failover: spare routes need per_call routes
    """

    per_call: bool = False
    failover: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.per_call, bool):
            raise UsageError(f"per_call: want a bool, got {self.per_call!r}")
        f = self.failover
        if isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= MAX_ROUTE_FAILOVER:
            raise UsageError(f"failover: want an integer in [0, {MAX_ROUTE_FAILOVER}], got {f!r}")
        if f and not self.per_call:
            raise UsageError("failover: spare routes need per_call routes")


@dataclass(frozen=True, slots=True)
class Slot:
    """What ``UplinkScheduler.fill`` decided for the slot at ``at`` (seconds).

    ``packet`` is None only when the slot was skipped (nothing routable, not even our own
    gateway); ``kind`` is then COVER. ``media_seq`` is the sequence number of the media
    frame sent (``kind`` MEDIA), else None. ``displaced``: a media frame was offered and a
    signaling frame took the slot. ``unroutable``: the chosen frame had no path and the
    slot fell back to last-resort cover (or was skipped).
    """

    at: float
    kind: SlotKind
    packet: bytes | None = field(repr=False)
    media_seq: int | None = None
    displaced: bool = False
    unroutable: bool = False


class UplinkScheduler:
    """The slot grid and the choice of each slot's frame, for one client.

    ``me`` and ``peer`` are ``(gateway node id, mailbox id)``; ``slot_s`` the slot length
    in seconds (> 0); ``mean_delay_s`` the mean sender-chosen delay per hop in seconds.
    ``slots`` counts slots by ``SlotKind`` value and ``skipped``, ``unroutable`` and
    ``missed`` (whole slots the caller woke up too late for); ``sent_sizes`` holds the
    lengths of the packets returned. ``routing`` (:class:`RoutePolicy`): a path per packet
    (default) or a route per call direction with spares. Setting ``peer`` starts a new call
    direction: its route is drawn at its first signaling or media packet. Raises
    ``UsageError`` for a non-positive ``slot_s`` or a negative ``mean_delay_s``.
    """

    def __init__(
        self,
        doc: TopologyDocument,
        me: Endpoint,
        peer: Endpoint,
        *,
        slot_s: float,
        mean_delay_s: float = 0.0,
        cover: CoverKind = CoverKind.LOOP,
        rng: Rng = os.urandom,
        routing: RoutePolicy = RoutePolicy(),
    ):
        if not slot_s > 0:
            raise UsageError("slot_s must be a positive number of seconds")
        if not mean_delay_s >= 0:
            raise UsageError("mean_delay_s must be a non-negative number of seconds")
        if not isinstance(routing, RoutePolicy):
            raise UsageError(f"routing: want a RoutePolicy, got {routing!r}")
        self.routing = routing
        self._routes: list[list[bytes]] = []  # the call's route, then its spares (node ids)
        self.failovers = 0  # moves to a spare route, over all calls
        self.doc, self.me, self.peer = doc, me, peer
        self.slot_s, self.mean_delay_s, self.cover = slot_s, mean_delay_s, cover
        self._rng = rng
        self._signals: deque[bytes] = deque()
        self._start: float | None = None
        self._k = 0  # index of the next slot on the grid
        self.slots: Counter[str] = Counter()
        self.sent_sizes: set[int] = set()

    # -- the call's route ---------------------------------------------------------------

    @property
    def peer(self) -> Endpoint:
        """Where signaling and media go. Setting it (even to the same value) starts a new
        call direction: with per-call routes, its route and spares are drawn afresh."""
        return self._peer

    @peer.setter
    def peer(self, value: Endpoint) -> None:
        self._peer = value
        self._routes = []

    @property
    def route(self) -> tuple[bytes, ...] | None:
        """The node ids (entry gateway, one mix per layer, exit gateway) of the current call
        direction's route; None before its first packet or with per-packet routes."""
        return tuple(self._routes[0]) if self._routes else None

    @property
    def spare_routes(self) -> int:
        """Spare routes the current call direction may still move to."""
        return max(0, len(self._routes) - 1)

    def route_failed(self) -> bool:
        """The current call direction's route loses packets: move to the next spare.

        The edge calls it when the peer reports loss or when media stopped arriving. True
        if it moved; False with no spare left (or no route drawn yet, or per-packet routes):
        the route stays and the caller should report the failure rather than fall back to
        per-packet routes (docs/research.md "Client policy")."""
        if len(self._routes) < 2:
            return False
        self._routes.pop(0)
        self.failovers += 1
        return True

    def _draw_routes(self) -> None:
        """The call's route and its spares: ``sample_path`` over the entry gateway, every
        mix layer and the exit gateway (the delays drawn with them are not kept). Each
        spare keeps off the mixes of the routes drawn before it (:meth:`_spare_avoid`), so
        that one failed mix cannot take the spares down with the route."""
        own_gw, peer_gw = self.me[0], self.peer[0]
        routes: list[list[bytes]] = []
        for _ in range(1 + self.routing.failover):
            avoid = self._spare_avoid(routes)
            hops = select_path(self.doc, own_gw, peer_gw, self.mean_delay_s, self._rng,
                               avoid=avoid)  # fmt: skip
            routes.append([hop.node_id for hop in hops])
        self._routes = routes

    def _spare_avoid(self, routes: list[list[bytes]]) -> set[bytes]:
        """The mixes the next route of ``routes`` (entry, one mix per layer, exit) keeps off:
        in each layer, the mixes of every route drawn before; where that would leave the
        layer no mix with a key for the document's epoch, only the mix of the route just
        before (if the layer has another); else none (a layer of one mix is reused)."""
        avoid: set[bytes] = set()
        epoch = self.doc.epoch
        for i, layer in enumerate(self.doc.layers, start=1):
            usable = {n.node_id for n in layer if epoch in n.epoch_keys}
            used = {route[i] for route in routes}
            if usable - used:
                avoid |= used
            elif routes and usable - {routes[-1][i]}:
                avoid.add(routes[-1][i])
        return avoid

    def _call_path(self) -> list[Hop]:
        """A path for one signaling or media packet (DirectoryError when none exists)."""
        own_gw, peer_gw = self.me[0], self.peer[0]
        if not self.routing.per_call:
            return select_path(self.doc, own_gw, peer_gw, self.mean_delay_s, self._rng)
        if not self._routes:
            self._draw_routes()
        try:
            return sample_path(self.doc, self._routes[0], self.mean_delay_s, self._rng)
        except DirectoryError:  # a new document (epoch) without the route's keys: redraw
            self._draw_routes()
            return sample_path(self.doc, self._routes[0], self.mean_delay_s, self._rng)

    # -- the grid ---------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Open the grid: slot 0 is due at ``now``; slot k at ``now + k * slot_s``."""
        self._start, self._k = now, 0

    @property
    def started(self) -> bool:
        return self._start is not None

    @property
    def next_index(self) -> int:
        """The index on the grid of the next slot (slot 0 is due at ``start``)."""
        return self._k

    @property
    def due(self) -> float:
        """When the next slot is due (seconds). Raises ``UsageError`` before ``start``."""
        if self._start is None:
            raise UsageError("the uplink grid has not started")
        return self._start + self._k * self.slot_s  # a fixed grid: no drift from addition

    def take_slot(self, now: float) -> float:
        """Claim the slot due at or before ``now`` and return its time (seconds).

        Whole slots already past at ``now`` are skipped and counted ``missed`` (a caller
        that fell behind never sends a burst). Raises ``UsageError`` before ``start``.
        """
        t = self.due
        late = int((now - t) // self.slot_s)
        if late > 0:
            self.slots["missed"] += late
            self._k += late
            t = self.due
        self._k += 1
        return t

    def grid_at_or_after(self, now: float) -> float:
        """The first grid time at or after ``now`` (``now`` itself before ``start``)."""
        if self._start is None:
            return now
        # A ``now`` on the grid up to float rounding is that grid time, not the next one.
        k = -(-(now - self._start - GRID_EPSILON_S) // self.slot_s)
        return self._start + k * self.slot_s

    def media_due(self, capture_start: float, now: float) -> bool:
        """True when the slot at ``now`` ends a whole slot of capture begun at
        ``capture_start`` (seconds), so a media frame may be offered for it."""
        return now >= capture_start + self.slot_s - GRID_EPSILON_S

    # -- the frames -------------------------------------------------------------------

    def push_signal(self, frames: Iterable[bytes]) -> None:
        """Queue signaling frames (each ``doc.geometry.user_payload`` bytes), in order.

        Exactly that length, as media: the exit gateway sees the delivered length, so every
        kind must look alike. Raises ``UsageError`` (and queues none) for another length."""
        frames = list(frames)
        for frame in frames:
            self._check_payload(frame)
        self._signals.extend(frames)

    def _check_payload(self, payload: bytes) -> None:
        if len(payload) != self.doc.geometry.user_payload:
            raise UsageError(f"a frame must be {self.doc.geometry.user_payload} bytes")

    @property
    def signal_pending(self) -> int:
        """Signaling frames waiting for a slot."""
        return len(self._signals)

    def fill(self, now: float, media: tuple[int, bytes] | None = None) -> Slot:
        """The one packet of the slot at ``now``: signaling, else ``media``, else cover.

        ``media`` is ``(sequence number, sealed payload)`` offered for this slot, or None.
        Never raises for what the document lacks (an empty layer, an unknown gateway):
        see the module docstring. Counts exactly one of ``signal``, ``media``, ``cover``
        or ``skipped`` in ``slots``. Raises ``UsageError`` for a media payload of another
        length than ``doc.geometry.user_payload``.
        """
        if media is not None:
            self._check_payload(media[1])
        displaced = False
        seq: int | None = None
        if self._signals:
            payload, kind = self._signals.popleft(), SlotKind.SIGNAL
            displaced = media is not None  # redundancy in the next packet carries its frames
        elif media is not None:
            (seq, payload), kind = media, SlotKind.MEDIA
        else:
            payload, kind = b"", SlotKind.COVER
        try:
            packet = self._sphinx(kind, payload)
        except DirectoryError:  # NoRouteError, or a listed node without the epoch's key
            self.slots["unroutable"] += 1
            if kind is SlotKind.SIGNAL:
                self._signals.appendleft(payload)
            fallback = self._last_resort_cover()
            if fallback is None:
                self.slots["skipped"] += 1
                return Slot(now, SlotKind.COVER, None, None, displaced, True)
            self.slots[SlotKind.COVER.value] += 1
            self.sent_sizes.add(len(fallback))
            return Slot(now, SlotKind.COVER, fallback, None, displaced, True)
        self.slots[kind.value] += 1
        self.sent_sizes.add(len(packet))
        return Slot(now, kind, packet, seq, displaced)

    def _sphinx(self, kind: SlotKind, payload: bytes) -> bytes:
        """The packet of one slot; DirectoryError (NoRouteError) when no path exists."""
        geometry, doc, rng = self.doc.geometry, self.doc, self._rng
        (own_gw, own_box), peer_box = self.me, self.peer[1]
        if kind is not SlotKind.COVER:
            path = self._call_path()
            return create_forward(geometry, path, peer_box, payload, rng=rng)
        if self.cover is CoverKind.LOOP:
            path = select_path(doc, own_gw, own_gw, self.mean_delay_s, rng)
            noise = rng(geometry.user_payload)
            return create_forward(geometry, path, own_box, noise, rng=rng)
        if not doc.gateways:
            raise NoRouteError("the topology document lists no gateway")
        exit_ = doc.gateways[uniform_index(len(doc.gateways), rng)].node_id
        path = select_path(doc, own_gw, exit_, self.mean_delay_s, rng)
        return create_drop(geometry, path, rng=rng)

    def _last_resort_cover(self) -> bytes | None:
        """Drop cover over one hop, our own gateway, which discards it; None if the
        document does not list that gateway with a key for its epoch. The gateway learns
        that this slot is cover, which it could tell anyway while no path exists. The hop is
        drawn as every path is (:func:`sample_path`: its delay capped at the document's
        ``max_delay_us``)."""
        own_gw = self.me[0]
        node = self.doc.by_id.get(own_gw)
        if node is None or node.role is not NodeRole.GATEWAY:
            return None
        try:
            path = sample_path(self.doc, [own_gw], self.mean_delay_s, self._rng)
        except NoRouteError:  # no key for the document's epoch
            return None
        return create_drop(self.doc.geometry, path, rng=self._rng)
