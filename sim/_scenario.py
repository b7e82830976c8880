"""Scenarios: every parameter of a simulated run, read from TOML and checked field by field.

    >>> from sim import load_scenario
    >>> sc = load_scenario({"seed": 7, "mixing": {"delay_mean_ms": 10.0}})
    >>> sc.hops, sc.mixing.delay_mean_ms, sc.voice.slot_ms
    (5, 10.0, 20.0)

Times in a scenario file are milliseconds (``*_ms``) or seconds (``*_s``); inside the
simulator every array of times is in seconds.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from overlay import GEOMETRIES, VOICE, Geometry, GeometryError, geometry_by_name

MEDIA_HEADER_BYTES = 8  # sequence number (4) and timestamp (4) in front of the frames
AEAD_TAG_BYTES = 16  # ChaCha20-Poly1305 tag on every media packet


class ScenarioError(ValueError):
    """A scenario field is missing, unknown or out of range; the message names the field."""


@dataclass(frozen=True, slots=True)
class Dist:
    """A non-negative delay distribution, parameters in milliseconds.

    kinds: ``constant`` (value_ms), ``uniform`` (low_ms, high_ms), ``exponential`` (mean_ms),
    ``lognormal`` (median_ms, sigma): a common fit for one-way Internet delay.
    """

    kind: str
    a_ms: float
    b_ms: float = 0.0

    def sample(
        self, rng: np.random.Generator, size: int | tuple[int, ...], dtype: type = np.float64
    ) -> np.ndarray:
        """Draw delays in seconds; float32 where a block of hops is summed fast."""
        a, b = self.a_ms / 1000.0, self.b_ms
        if self.kind == "constant":
            return np.full(size, a, dtype=dtype)
        if self.kind == "uniform":
            x = rng.random(size, dtype=dtype)
            x *= b / 1000.0 - a
            x += a
            return x
        if self.kind == "exponential":
            x = rng.standard_exponential(size, dtype=dtype)
            x *= a
            return x
        x = rng.standard_normal(size, dtype=dtype)  # lognormal: median a, sigma b
        x *= b
        np.exp(x, out=x)
        x *= a
        return x

    @property
    def mean_s(self) -> float:
        """Mean of the distribution in seconds."""
        a = self.a_ms / 1000.0
        if self.kind == "uniform":
            return (a + self.b_ms / 1000.0) / 2
        if self.kind == "lognormal":
            return a * float(np.exp(self.b_ms**2 / 2))
        return a

    def to_dict(self) -> dict[str, Any]:
        """The distribution as written in a scenario file."""
        names = {
            "constant": ("value_ms",),
            "uniform": ("low_ms", "high_ms"),
            "exponential": ("mean_ms",),
            "lognormal": ("median_ms", "sigma"),
        }[self.kind]
        return {"dist": self.kind, **dict(zip(names, (self.a_ms, self.b_ms), strict=False))}


@dataclass(frozen=True, slots=True)
class Network:
    """Topology and links: stratified, entry gateway, mix layers, exit gateway."""

    geometry: Geometry = VOICE
    hops: int = 5  # entry gateway + (hops - 2) mix layers + exit gateway
    gateways: int = 8
    mixes_per_layer: int = 4
    access_delay: Dist = Dist("lognormal", 15.0, 0.4)  # client <-> gateway, one way
    link_delay: Dist = Dist("lognormal", 10.0, 0.3)  # between nodes, one way
    processing: Dist = Dist("uniform", 0.1, 0.2)  # Sphinx unwrap per hop (Python)
    link_loss: float = 0.001  # probability a packet is lost on one link
    bandwidth_mbps: float = 20.0  # serialization rate of every link

    @property
    def links(self) -> int:
        """Links a packet crosses: client -> hop 1 ... hop H -> client."""
        return self.hops + 1

    @property
    def serialization_s(self) -> float:
        """Time to put one packet of this geometry on a link, seconds."""
        return self.geometry.packet_len * 8 / (self.bandwidth_mbps * 1e6)


@dataclass(frozen=True, slots=True)
class Mixing:
    """Sender-chosen delays (exponential per hop, as in Loopix) and path choice."""

    delay_mean_ms: float = 27.5  # chosen by the sweep (docs/research.md)
    # "packet": new route per packet; "call": one route per call direction; "epoch": one
    # route per sender and epoch, shared by its calls
    path: str = "packet"
    epoch_s: float = 3600.0  # route lifetime under path = "epoch"
    failover: int = 0  # routes a call direction (or epoch) may move to when one loses packets


@dataclass(frozen=True, slots=True)
class Voice:
    """The voice profile: Opus frames, packetization, constant-rate slots, jitter buffer."""

    frame_ms: float = 20.0
    frames_per_packet: int = 1  # chosen by the sweep (docs/research.md): a 20 ms slot
    bitrate_kbps: float = 24.0
    redundancy: int = 2  # each frame is carried this many times (in-band FEC copies)
    codec_lookahead_ms: float = 6.5  # Opus encoder look-ahead (SILK/CELT modes)
    downlink_speedup: float = 1.0  # downlink slots per uplink slot at the gateway
    jitter_target_loss: float = 0.01  # late-loss target of the adaptive playout delay
    jitter_window: int = 100  # packets the adaptive playout delay looks back on
    ie: float = 0.0  # E-model equipment impairment of the codec
    bpl: float = 25.1  # E-model packet-loss robustness of the codec with concealment

    @property
    def slot_ms(self) -> float:
        """Constant-rate uplink slot: one packet per ``frames_per_packet`` frames."""
        return self.frame_ms * self.frames_per_packet

    @property
    def payload_bytes(self) -> int:
        """Bytes of one media packet inside the Sphinx payload."""
        frame = self.bitrate_kbps * self.frame_ms / 8.0
        return int(np.ceil(frame * self.frames_per_packet * self.redundancy)) + (
            MEDIA_HEADER_BYTES + AEAD_TAG_BYTES
        )


@dataclass(frozen=True, slots=True)
class Talk:
    """Talk-spurt model: ``brady`` on/off exponential periods, or ``continuous`` speech."""

    model: str = "brady"
    mean_on_s: float = 1.0  # Brady (1969): mean talk spurt about 1.0 s
    mean_off_s: float = 1.35  # and mean silence about 1.35 s


@dataclass(frozen=True, slots=True)
class Users:
    """Population, calls and online churn."""

    n_users: int = 200
    n_calls: int = 20  # call pairs; each pair calls ``calls_per_pair`` times
    calls_per_pair: int = 1
    call_s: float = 30.0
    duration_s: float = 60.0
    mean_online_s: float = 0.0  # 0: everybody stays online for the whole run
    mean_offline_s: float = 0.0


SCHEDULES = ("churn", "always", "daily", "calls")
LINGERS = ("constant", "exponential", "uniform")
DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class Policy:
    """What a client does to stay hidden (docs/research.md, "Client policy").

    ``schedule``: when a client is online whatever its calls: ``churn`` (random sessions,
    ``users.mean_online_s``/``mean_offline_s``; always when those are 0), ``always``,
    ``daily`` (one window of ``daily_online_h`` hours a day at a random time of day per user)
    or ``calls`` (only around calls). Around each call a client is online from
    ``linger_before_s`` before to ``linger_after_s`` after (means; ``linger`` is their
    distribution). With ``idle_slot_factor`` k > 1 an idle client sends one packet per k slots
    and switches to the call rate from ``rate_lead_s`` before a call to ``rate_lag_s`` after
    it (means, same distribution), and also for ``decoys_per_hour`` call-shaped periods with
    no call. ``budget_*`` describe the day the data cost is computed for.
    """

    schedule: str = "churn"
    daily_online_h: float = 8.0
    linger: str = "exponential"
    linger_before_s: float = 0.0
    linger_after_s: float = 0.0
    idle_slot_factor: int = 1
    rate_lead_s: float = 0.0
    rate_lag_s: float = 0.0
    decoys_per_hour: float = 0.0
    budget_calls_per_day: float = 4.0
    budget_call_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Adversary:
    """What the attacker sees and controls."""

    window_s: float = 1.0  # flow correlation: packet counts per window
    resolution_ms: float = 10.0  # timing attack: time-stamp resolution
    compromised_fraction: float = 0.0  # of the gateways and of each mix layer (whole nodes)
    targets: int = 50  # calls the attacks are scored on (sampled)
    entropy_packets: int = 20  # packets per target for the sender-set entropy
    # Compromised nodes drop the packets of routes they are on but do not fully own, so that
    # the client fails over to a new route (Borisov et al., CCS 2007)
    selective_dos: bool = False


@dataclass(frozen=True, slots=True)
class Scenario:
    """One simulated run. ``cover`` False is the baseline without cover and shaping."""

    name: str = "scenario"
    seed: int = 1
    cover: bool = True
    network: Network = field(default_factory=Network)
    mixing: Mixing = field(default_factory=Mixing)
    voice: Voice = field(default_factory=Voice)
    talk: Talk = field(default_factory=Talk)
    users: Users = field(default_factory=Users)
    adversary: Adversary = field(default_factory=Adversary)
    policy: Policy = field(default_factory=Policy)

    @property
    def hops(self) -> int:
        """Sphinx hops of every packet (entry gateway, mixes, exit gateway)."""
        return self.network.hops

    def replace(self, **changes: Any) -> Scenario:
        """A copy with dotted fields changed: ``sc.replace(**{"mixing.delay_mean_ms": 5})``."""
        data = self.to_dict()
        for key, value in changes.items():
            *parents, leaf = key.split(".")
            node = data
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return load_scenario(data)

    def to_dict(self) -> dict[str, Any]:
        """The scenario as a TOML-shaped dict (round-trips through ``load_scenario``)."""
        net = self.network
        return {
            "name": self.name,
            "seed": self.seed,
            "cover": self.cover,
            "network": {
                "geometry": net.geometry.name,
                "hops": net.hops,
                "gateways": net.gateways,
                "mixes_per_layer": net.mixes_per_layer,
                "access_delay": net.access_delay.to_dict(),
                "link_delay": net.link_delay.to_dict(),
                "processing": net.processing.to_dict(),
                "link_loss": net.link_loss,
                "bandwidth_mbps": net.bandwidth_mbps,
            },
            "mixing": dataclasses.asdict(self.mixing),
            "voice": dataclasses.asdict(self.voice),
            "talk": dataclasses.asdict(self.talk),
            "users": dataclasses.asdict(self.users),
            "adversary": dataclasses.asdict(self.adversary),
            "policy": dataclasses.asdict(self.policy),
        }


def _dist(where: str, raw: Any) -> Dist:
    if not isinstance(raw, Mapping) or "dist" not in raw:
        raise ScenarioError(f"{where}: want a table with 'dist' and its parameters")
    kind = raw["dist"]
    want = {
        "constant": ("value_ms",),
        "uniform": ("low_ms", "high_ms"),
        "exponential": ("mean_ms",),
        "lognormal": ("median_ms", "sigma"),
    }
    if kind not in want:
        raise ScenarioError(f"{where}.dist: want one of {sorted(want)}, got {kind!r}")
    extra = set(raw) - {"dist", *want[kind]}
    if extra:
        raise ScenarioError(f"{where}: unknown field(s) {sorted(extra)} for dist {kind!r}")
    vals = []
    for name in want[kind]:
        if name not in raw:
            raise ScenarioError(f"{where}.{name}: missing")
        vals.append(_num(f"{where}.{name}", raw[name], lo=0.0))
    if kind == "uniform" and vals[1] < vals[0]:
        raise ScenarioError(f"{where}.high_ms: must be >= low_ms")
    return Dist(kind, *vals)


def _num(where: str, raw: Any, *, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not np.isfinite(raw):
        raise ScenarioError(f"{where}: want a number, got {raw!r}")
    if lo is not None and raw < lo:
        raise ScenarioError(f"{where}: must be >= {lo}, got {raw!r}")
    if hi is not None and raw > hi:
        raise ScenarioError(f"{where}: must be <= {hi}, got {raw!r}")
    return float(raw)


def _int(where: str, raw: Any, *, lo: int, hi: int | None = None) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ScenarioError(f"{where}: want an integer, got {raw!r}")
    if raw < lo or (hi is not None and raw > hi):
        raise ScenarioError(f"{where}: must be in {lo}..{hi if hi is not None else 'inf'}")
    return raw


def _section(cls: type, where: str, raw: Any, special: Mapping[str, Any]) -> Any:
    """Build one dataclass section, checking every field's name and type."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: want a table")
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = set(raw) - set(names)
    if unknown:
        raise ScenarioError(f"{where}: unknown field(s) {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for key, value in raw.items():
        path = f"{where}.{key}"
        if key in special:
            kwargs[key] = special[key](path, value)
            continue
        default = getattr(defaults, key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ScenarioError(f"{path}: want true or false, got {value!r}")
            kwargs[key] = value
        elif isinstance(default, int):
            kwargs[key] = _int(path, value, lo=0)
        elif isinstance(default, float):
            kwargs[key] = _num(path, value, lo=0.0)
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ScenarioError(f"{path}: want a string, got {value!r}")
            kwargs[key] = value
        else:  # pragma: no cover - every field type is handled above
            raise ScenarioError(f"{path}: unsupported field")
    return cls(**kwargs)


def _geometry(where: str, raw: Any) -> Geometry:
    try:
        return geometry_by_name(raw)
    except GeometryError:
        raise ScenarioError(f"{where}: want one of {sorted(GEOMETRIES)}, got {raw!r}") from None


def load_scenario(source: str | Path | Mapping[str, Any]) -> Scenario:
    """Read a scenario from a TOML file path or a dict; raise ScenarioError naming the field."""
    if isinstance(source, str | Path):
        try:
            with open(source, "rb") as fh:
                raw: Mapping[str, Any] = tomllib.load(fh)
        except OSError as exc:
            raise ScenarioError(f"scenario file {str(source)!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ScenarioError(f"scenario file {str(source)!r}: not valid TOML: {exc}") from None
    else:
        raw = source
    top = {
        "name",
        "seed",
        "cover",
        "network",
        "mixing",
        "voice",
        "talk",
        "users",
        "adversary",
        "policy",
    }
    unknown = set(raw) - top
    if unknown:
        raise ScenarioError(f"unknown top-level field(s) {sorted(unknown)}")
    name = raw.get("name", "scenario")
    if not isinstance(name, str):
        raise ScenarioError(f"name: want a string, got {name!r}")
    seed = _int("seed", raw.get("seed", 1), lo=0)
    cover = raw.get("cover", True)
    if not isinstance(cover, bool):
        raise ScenarioError(f"cover: want true or false, got {cover!r}")
    dists = {k: _dist for k in ("access_delay", "link_delay", "processing")}
    network = _section(Network, "network", raw.get("network"), {"geometry": _geometry, **dists})
    sc = Scenario(
        name=name,
        seed=seed,
        cover=cover,
        network=network,
        mixing=_section(Mixing, "mixing", raw.get("mixing"), {}),
        voice=_section(Voice, "voice", raw.get("voice"), {}),
        talk=_section(Talk, "talk", raw.get("talk"), {}),
        users=_section(Users, "users", raw.get("users"), {}),
        adversary=_section(Adversary, "adversary", raw.get("adversary"), {}),
        policy=_section(Policy, "policy", raw.get("policy"), {}),
    )
    _check(sc)
    return sc


def _check(sc: Scenario) -> None:
    """Cross-field rules that one field alone cannot express."""
    net, v, u, adv = sc.network, sc.voice, sc.users, sc.adversary
    if not 3 <= net.hops <= net.geometry.max_hops:
        raise ScenarioError(
            f"network.hops: must be in 3..{net.geometry.max_hops} "
            f"(the {net.geometry.name} geometry's max_hops), got {net.hops}"
        )
    for name in ("gateways", "mixes_per_layer"):
        if getattr(net, name) < 1:
            raise ScenarioError(f"network.{name}: must be >= 1")
    if net.link_loss >= 1.0:
        raise ScenarioError("network.link_loss: must be < 1")
    if net.bandwidth_mbps <= 0:
        raise ScenarioError("network.bandwidth_mbps: must be > 0")
    if sc.mixing.path not in ("packet", "call", "epoch"):
        raise ScenarioError(
            f"mixing.path: want 'packet', 'call' or 'epoch', got {sc.mixing.path!r}"
        )
    if sc.mixing.epoch_s <= 0:
        raise ScenarioError("mixing.epoch_s: must be > 0")
    if v.frame_ms <= 0 or v.frames_per_packet < 1 or v.redundancy < 1:
        raise ScenarioError("voice.frame_ms, frames_per_packet and redundancy must be >= 1")
    if v.payload_bytes > net.geometry.user_payload:
        raise ScenarioError(
            f"voice.frames_per_packet: {v.frames_per_packet} frames x {v.redundancy} copies at "
            f"{v.bitrate_kbps} kbit/s need {v.payload_bytes} bytes, more than the "
            f"{net.geometry.name} geometry's {net.geometry.user_payload}-byte payload"
        )
    if v.downlink_speedup < 1.0:
        raise ScenarioError("voice.downlink_speedup: must be >= 1 (the downlink keeps up)")
    if not 0 < v.jitter_target_loss < 0.5:
        raise ScenarioError("voice.jitter_target_loss: must be in (0, 0.5)")
    if v.jitter_window < 1:
        raise ScenarioError("voice.jitter_window: must be >= 1")
    if sc.talk.model not in ("brady", "continuous"):
        raise ScenarioError(f"talk.model: want 'brady' or 'continuous', got {sc.talk.model!r}")
    if sc.talk.model == "brady" and (sc.talk.mean_on_s <= 0 or sc.talk.mean_off_s <= 0):
        raise ScenarioError("talk.mean_on_s and talk.mean_off_s: must be > 0")
    if u.n_users < 2:
        raise ScenarioError("users.n_users: must be >= 2")
    if 2 * u.n_calls > u.n_users:
        raise ScenarioError("users.n_calls: each call needs two distinct users (2*n_calls)")
    if u.n_calls < 1 or u.calls_per_pair < 1:
        raise ScenarioError("users.n_calls and users.calls_per_pair: must be >= 1")
    if u.duration_s <= 0 or u.call_s <= 0:
        raise ScenarioError("users.duration_s and users.call_s: must be > 0")
    if u.call_s * u.calls_per_pair > u.duration_s:
        raise ScenarioError("users.call_s: calls_per_pair calls of call_s must fit in duration_s")
    if (u.mean_online_s > 0) != (u.mean_offline_s > 0):
        raise ScenarioError("users.mean_online_s and mean_offline_s: set both or neither")
    if adv.window_s <= 0 or adv.resolution_ms <= 0:
        raise ScenarioError("adversary.window_s and resolution_ms: must be > 0")
    if not 0 <= adv.compromised_fraction <= 1:
        raise ScenarioError("adversary.compromised_fraction: must be in [0, 1]")
    if adv.targets < 1:
        raise ScenarioError("adversary.targets: must be >= 1")
    pol = sc.policy
    if pol.schedule not in SCHEDULES:
        raise ScenarioError(f"policy.schedule: want one of {list(SCHEDULES)}, got {pol.schedule!r}")
    if pol.linger not in LINGERS:
        raise ScenarioError(f"policy.linger: want one of {list(LINGERS)}, got {pol.linger!r}")
    if not 0 < pol.daily_online_h <= 24:
        raise ScenarioError("policy.daily_online_h: must be in (0, 24]")
    if pol.idle_slot_factor < 1:
        raise ScenarioError("policy.idle_slot_factor: must be >= 1 (1: no idle rate)")
    if pol.budget_calls_per_day * pol.budget_call_s > DAY_S:
        raise ScenarioError("policy.budget_calls_per_day: calls of budget_call_s exceed a day")
