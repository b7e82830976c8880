"""Control frames between a node's daemon and its worker processes (one UNIX datagram each).

    >>> from overlay import QuitFrame, PacketFrame, decode_control
    >>> QuitFrame().to_bytes()
    b'\\x01Q'
    >>> decode_control(PacketFrame(b"sphinx").to_bytes())
    PacketFrame(packet=b'sphinx')

Every frame is ``version (1 byte) | type (1 byte) | body``; integers are big-endian,
floats IEEE 754 doubles, byte strings and names carry a length prefix unless they are the
frame's last field (then they run to the end). Daemon -> worker: ``KeysFrame`` (epoch keys
with the replay filter's memfd number), ``TopologyFrame``, ``PacketFrame`` (a client's
uplink packet), ``QuitFrame``; worker -> daemon: ``DeliveryFrame``, ``StatsFrame``.
``WorkerSettings`` is how the daemon starts a worker (hex of its frame on the command line).
A file descriptor never travels inside a frame: the replay filter's memfd stays open in
the daemon and the worker opens it by number as ``/proc/<daemon pid>/fd/<n>``.

``from_bytes`` (and :func:`decode_control`) raise :class:`ControlFrameError` for anything
malformed (wrong version, unknown type, wrong length, out-of-range value) and nothing else;
``to_bytes`` raises it for a frame longer than ``CONTROL_MAX``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Final

from ._drop import DropReason
from ._errors import PhantomError
from ._geometry import MAILBOX_ID_LEN, NODE_ID_LEN
from ._link import DownlinkKind

CONTROL_VERSION: Final = 1  # first byte of every control frame
CONTROL_MAX: Final = 1 << 20  # bytes of one control frame at most (a topology fits easily)
EPOCH_KEY_LEN: Final = 32  # bytes, an X25519 private key
NAME_MAX: Final = 255  # bytes of a counter or geometry name (one length byte)

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")


_DELIVERY_HEAD = 2 + MAILBOX_ID_LEN + 1  # bytes before a DeliveryFrame's data
_DOWNLINK_KINDS: Final[dict[int, DownlinkKind]] = {k.value: k for k in DownlinkKind}


class ControlFrameError(PhantomError, ValueError):
    """A control frame is malformed, or a frame to send breaks its bounds."""


class _Reader:
    """Reads fields from the front of a frame's body; ControlFrameError past its end."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ControlFrameError("control frame truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def i32(self) -> int:
        return int(_I32.unpack(self.take(4))[0])

    def i64(self) -> int:
        return int(_I64.unpack(self.take(8))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self.take(8))[0])

    def f64(self) -> float:
        value = float(_F64.unpack(self.take(8))[0])
        if not math.isfinite(value):
            raise ControlFrameError("control frame holds a non-finite number")
        return value

    def name(self) -> str:
        raw = self.take(self.u8())
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise ControlFrameError("control frame name is not ASCII") from None

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ControlFrameError("control frame has trailing bytes")


def _name(text: str) -> bytes:
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ControlFrameError(f"name {text!r} is not ASCII") from None
    if len(raw) > NAME_MAX:
        raise ControlFrameError(f"name longer than {NAME_MAX} bytes")
    return _U8.pack(len(raw)) + raw


def _u64(value: int, what: str) -> bytes:
    if not 0 <= value < 1 << 64:
        raise ControlFrameError(f"{what} out of range: {value}")
    return _U64.pack(value)


def _frame(kind: bytes, body: bytes) -> bytes:
    out = bytes((CONTROL_VERSION,)) + kind + body
    if len(out) > CONTROL_MAX:
        raise ControlFrameError(f"control frame of {len(out)} bytes exceeds {CONTROL_MAX}")
    return out


def _check_head(data: bytes, kind: bytes) -> None:
    """Check ``data``'s length, version and type byte."""
    if len(data) > CONTROL_MAX:
        raise ControlFrameError(f"control frame of {len(data)} bytes exceeds {CONTROL_MAX}")
    if len(data) < 2:
        raise ControlFrameError("control frame shorter than its head")
    if data[0] != CONTROL_VERSION:
        raise ControlFrameError(f"control frame version {data[0]}, expected {CONTROL_VERSION}")
    if data[1:2] != kind:
        raise ControlFrameError(f"control frame type {data[1:2]!r}, expected {kind!r}")


def _body(data: bytes, kind: bytes) -> _Reader:
    """The body of ``data`` after checking its head."""
    _check_head(data, kind)
    return _Reader(data[2:])


def _check_finite(**values: float) -> None:
    for what, value in values.items():
        if not math.isfinite(value) or value < 0:
            raise ControlFrameError(f"{what} must be finite and >= 0, got {value}")


@dataclass(frozen=True, slots=True)
class EpochKey:
    """One epoch key for the workers: ``private_key`` (32 bytes) opens packets of ``epoch``
    until ``expires_at`` (unix seconds); ``replay_fd`` is the daemon's memfd number of the
    key's replay filter, or None for a private filter (tests)."""

    epoch: int
    private_key: bytes
    expires_at: float
    replay_fd: int | None = None

    def __post_init__(self) -> None:
        if not -(1 << 63) <= self.epoch < 1 << 63:
            raise ControlFrameError(f"epoch out of range: {self.epoch}")
        if len(self.private_key) != EPOCH_KEY_LEN:
            raise ControlFrameError(f"an epoch key is {EPOCH_KEY_LEN} bytes")
        if not math.isfinite(self.expires_at):
            raise ControlFrameError("expires_at must be finite")
        if self.replay_fd is not None and not 0 <= self.replay_fd < 1 << 31:
            raise ControlFrameError(f"replay fd out of range: {self.replay_fd}")


@dataclass(frozen=True, slots=True)
class KeysFrame:
    """Daemon -> worker: the epoch keys to hold (installing is idempotent)."""

    TYPE: ClassVar[bytes] = b"K"
    keys: tuple[EpochKey, ...] = ()

    def to_bytes(self) -> bytes:
        """The frame; ControlFrameError beyond 65535 keys."""
        if len(self.keys) > 0xFFFF:
            raise ControlFrameError("too many keys for one frame")
        body = [_U16.pack(len(self.keys))]
        for k in self.keys:
            fd = -1 if k.replay_fd is None else k.replay_fd
            body += [_I64.pack(k.epoch), k.private_key, _F64.pack(k.expires_at), _I32.pack(fd)]
        return _frame(self.TYPE, b"".join(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> KeysFrame:
        """Parse a KeysFrame; ControlFrameError if malformed."""
        r = _body(data, cls.TYPE)
        keys = []
        for _ in range(r.u16()):
            epoch, sk, expires_at, fd = r.i64(), r.take(EPOCH_KEY_LEN), r.f64(), r.i32()
            keys.append(EpochKey(epoch, sk, expires_at, None if fd == -1 else fd))
        r.end()
        return cls(tuple(keys))


@dataclass(frozen=True, slots=True)
class TopologyFrame:
    """Daemon -> worker: a verified topology document (``TopologyDocument.to_bytes()``)."""

    TYPE: ClassVar[bytes] = b"T"
    document: bytes

    def to_bytes(self) -> bytes:
        """The frame; ControlFrameError beyond CONTROL_MAX."""
        return _frame(self.TYPE, self.document)

    @classmethod
    def from_bytes(cls, data: bytes) -> TopologyFrame:
        """Parse a TopologyFrame; ControlFrameError if malformed."""
        return cls(_body(data, cls.TYPE).rest())


@dataclass(frozen=True, slots=True)
class PacketFrame:
    """Daemon -> worker: a Sphinx packet a client sent up through this gateway."""

    TYPE: ClassVar[bytes] = b"P"
    packet: bytes

    def to_bytes(self) -> bytes:
        """The frame; ControlFrameError beyond CONTROL_MAX."""
        return _frame(self.TYPE, self.packet)

    @classmethod
    def from_bytes(cls, data: bytes) -> PacketFrame:
        """Parse a PacketFrame; ControlFrameError if malformed."""
        _check_head(data, cls.TYPE)  # (one per client packet: kept short)
        return cls(data[2:])


@dataclass(frozen=True, slots=True)
class QuitFrame:
    """Daemon -> worker: stop (after a last StatsFrame)."""

    TYPE: ClassVar[bytes] = b"Q"

    def to_bytes(self) -> bytes:
        """The frame (two bytes)."""
        return _frame(self.TYPE, b"")

    @classmethod
    def from_bytes(cls, data: bytes) -> QuitFrame:
        """Parse a QuitFrame; ControlFrameError if malformed."""
        _body(data, cls.TYPE).end()
        return cls()


@dataclass(frozen=True, slots=True)
class DeliveryFrame:
    """Worker -> daemon: ``data`` of ``kind`` for the client mailbox ``mailbox`` (16 bytes)."""

    TYPE: ClassVar[bytes] = b"D"
    mailbox: bytes
    kind: DownlinkKind
    data: bytes

    def __post_init__(self) -> None:
        if len(self.mailbox) != MAILBOX_ID_LEN:
            raise ControlFrameError(f"a mailbox id is {MAILBOX_ID_LEN} bytes")

    def to_bytes(self) -> bytes:
        """The frame; ControlFrameError beyond CONTROL_MAX."""
        return _frame(self.TYPE, self.mailbox + _U8.pack(self.kind) + self.data)

    @classmethod
    def from_bytes(cls, data: bytes) -> DeliveryFrame:
        """Parse a DeliveryFrame; ControlFrameError if malformed or of an unknown kind."""
        _check_head(data, cls.TYPE)  # (one per delivered packet: kept short)
        if len(data) < _DELIVERY_HEAD:
            raise ControlFrameError("control frame truncated")
        dk = _DOWNLINK_KINDS.get(data[_DELIVERY_HEAD - 1])
        if dk is None:
            raise ControlFrameError(f"unknown downlink kind {data[_DELIVERY_HEAD - 1]}")
        return cls(data[2 : _DELIVERY_HEAD - 1], dk, data[_DELIVERY_HEAD:])


@dataclass(frozen=True, slots=True)
class StatsFrame:
    """Worker -> daemon: cumulative statistics since the worker started.

    ``counters`` by name (packets_in, packets_out, replays, cover_sent ...), ``drops`` by
    DropReason, ``queue_depth`` and ``replay_entries`` (now), ``hist`` the processing-time
    bucket counts (not cumulative over buckets; one per bucket, +Inf last) and ``hist_sum``
    their sum in seconds. Counts are >= 0 and < 2**64. ``loops_sent`` lists the loop cover
    packets sent since the last frame as (marker, node ids crossed before coming back) and
    ``loops_back`` the markers of loops that came back (mixnode.reachability); at most
    LOOP_LOG_MAX each, node ids at most 255 bytes.
    """

    TYPE: ClassVar[bytes] = b"S"
    counters: Mapping[str, int] = field(default_factory=dict)
    drops: Mapping[DropReason, int] = field(default_factory=dict)
    queue_depth: int = 0
    replay_entries: int = 0
    hist: tuple[int, ...] = ()
    hist_sum: float = 0.0
    loops_sent: tuple[tuple[int, tuple[bytes, ...]], ...] = ()
    loops_back: tuple[int, ...] = ()

    def to_bytes(self) -> bytes:
        """The frame; ControlFrameError for a count out of range."""
        body = [_U16.pack(len(self.counters))]
        for name, n in self.counters.items():
            body += [_name(name), _u64(n, name)]
        body.append(_U16.pack(len(self.drops)))
        for reason, n in self.drops.items():
            body += [_name(reason.value), _u64(n, reason.value)]
        body += [
            _u64(self.queue_depth, "queue_depth"),
            _u64(self.replay_entries, "replay_entries"),
            _U16.pack(len(self.hist)),
        ]
        body += [_u64(c, "hist") for c in self.hist]
        _check_finite(hist_sum=self.hist_sum)
        body.append(_F64.pack(self.hist_sum))
        body.append(_U16.pack(len(self.loops_sent)))
        for marker, ids in self.loops_sent:
            body += [_u64(marker, "loop marker"), _U8.pack(len(ids))]
            for node_id in ids:
                if len(node_id) > 255:
                    raise ControlFrameError("loop node id longer than 255 bytes")
                body += [_U8.pack(len(node_id)), node_id]
        body.append(_U16.pack(len(self.loops_back)))
        body += [_u64(m, "loop marker") for m in self.loops_back]
        return _frame(self.TYPE, b"".join(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> StatsFrame:
        """Parse a StatsFrame; ControlFrameError if malformed or naming an unknown reason."""
        r = _body(data, cls.TYPE)
        counters = {}
        for _ in range(r.u16()):
            name = r.name()
            counters[name] = r.u64()
        drops = {}
        for _ in range(r.u16()):
            value = r.name()
            try:
                reason = DropReason(value)
            except ValueError:
                raise ControlFrameError(f"unknown drop reason {value!r}") from None
            drops[reason] = r.u64()
        queue_depth, replay_entries = r.u64(), r.u64()
        hist = tuple(r.u64() for _ in range(r.u16()))
        hist_sum = r.f64()
        loops_sent = []
        for _ in range(r.u16()):
            marker = r.u64()
            ids = tuple(r.take(r.u8()) for _ in range(r.u8()))
            loops_sent.append((marker, ids))
        loops_back = tuple(r.u64() for _ in range(r.u16()))
        r.end()
        if hist_sum < 0:
            raise ControlFrameError("hist_sum must be >= 0")
        return cls(
            counters,
            drops,
            queue_depth,
            replay_entries,
            hist,
            hist_sum,
            tuple(loops_sent),
            loops_back,
        )


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How the daemon starts one worker.

    ``geometry`` names the Sphinx geometry (``voice``, ``bulk``), ``node_id`` the node
    (16 bytes); ``late_drop_ms`` and ``mix_delay_ms`` (the loop cover's mean delay per hop)
    are milliseconds, ``max_queue`` packets (>= 1), ``cover_rate_hz`` loop cover packets per
    second; ``link_*`` emulate a link (mean and jitter of an added delay in ms, a loss
    probability in [0, 1)). ``udp_fd`` and ``ctrl_fd`` are the worker's packet and control
    sockets as inherited file descriptors (-1: the sockets are handed over in-process).
    Raises ControlFrameError for a value out of range.
    """

    TYPE: ClassVar[bytes] = b"W"
    geometry: str
    node_id: bytes
    late_drop_ms: float
    max_queue: int
    cover_rate_hz: float
    mix_delay_ms: float
    link_delay_ms: float = 0.0
    link_jitter_ms: float = 0.0
    link_loss: float = 0.0
    udp_fd: int = -1
    ctrl_fd: int = -1

    def __post_init__(self) -> None:
        if not self.geometry or not self.geometry.isascii() or len(self.geometry) > NAME_MAX:
            raise ControlFrameError("geometry must be a name of 1..255 ASCII characters")
        if len(self.node_id) != NODE_ID_LEN:
            raise ControlFrameError(f"a node id is {NODE_ID_LEN} bytes")
        _check_finite(
            late_drop_ms=self.late_drop_ms,
            cover_rate_hz=self.cover_rate_hz,
            mix_delay_ms=self.mix_delay_ms,
            link_delay_ms=self.link_delay_ms,
            link_jitter_ms=self.link_jitter_ms,
        )
        if not 1 <= self.max_queue < 1 << 64:
            raise ControlFrameError(f"max_queue must be >= 1, got {self.max_queue}")
        if not 0.0 <= self.link_loss < 1.0:
            raise ControlFrameError(f"link_loss must be in [0, 1), got {self.link_loss}")
        for fd in (self.udp_fd, self.ctrl_fd):
            if not -1 <= fd < 1 << 31:
                raise ControlFrameError(f"file descriptor out of range: {fd}")

    def to_bytes(self) -> bytes:
        """The frame."""
        floats = (
            self.cover_rate_hz,
            self.mix_delay_ms,
            self.link_delay_ms,
            self.link_jitter_ms,
            self.link_loss,
        )
        body = [_name(self.geometry), self.node_id, _F64.pack(self.late_drop_ms)]
        body += [_u64(self.max_queue, "max_queue"), *(_F64.pack(x) for x in floats)]
        body += [_I32.pack(self.udp_fd), _I32.pack(self.ctrl_fd)]
        return _frame(self.TYPE, b"".join(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> WorkerSettings:
        """Parse WorkerSettings; ControlFrameError if malformed or out of range."""
        r = _body(data, cls.TYPE)
        geometry, node_id, late, queue = r.name(), r.take(NODE_ID_LEN), r.f64(), r.u64()
        cover, mix, delay, jitter, loss = (r.f64() for _ in range(5))
        udp_fd, ctrl_fd = r.i32(), r.i32()
        r.end()
        return cls(geometry, node_id, late, queue, cover, mix, delay, jitter, loss, udp_fd, ctrl_fd)


ControlFrame = KeysFrame | TopologyFrame | PacketFrame | QuitFrame | DeliveryFrame | StatsFrame

_BY_TYPE: Final[dict[bytes, type[ControlFrame]]] = {
    t.TYPE: t for t in (KeysFrame, TopologyFrame, PacketFrame, QuitFrame, DeliveryFrame, StatsFrame)
}


def decode_control(data: bytes) -> ControlFrame:
    """The control frame in ``data``, by its type byte; ControlFrameError if malformed.

    (WorkerSettings travel on the command line, not as datagrams: they are not decoded
    here.)
    """
    if len(data) < 2:
        raise ControlFrameError("control frame shorter than its head")
    cls = _BY_TYPE.get(data[1:2])
    if cls is None:
        raise ControlFrameError(f"unknown control frame type {data[1:2]!r}")
    return cls.from_bytes(data)
