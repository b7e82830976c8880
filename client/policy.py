"""Client policy: what the always-on client does to stay hidden, chosen with the simulator.

    >>> from client.policy import DESKTOP, MOBILE, ClientPolicy
    >>> DESKTOP.schedule, DESKTOP.route, DESKTOP.route_failover
    ('always', 'call', 2)
    >>> MOBILE.idle_slot_factor > 1
    True
    >>> ClientPolicy(schedule="sometimes")
    Traceback (most recent call last):
    ...
    client.policy.PolicyError: schedule: want one of ['always', 'daily', 'calls'], got 'sometimes'

The knobs are the simulator's (``[policy]`` and ``[mixing]`` of a scenario, docs/research.md
"Client policy"); ``sim_fields`` gives them under the simulator's names, so that a profile
here and a measured row of ``phantom-sim policy`` are the same thing. The figures in the
profiles' docstrings come from ``phantom-sim policy --scenario scenarios/policy-small.toml
--policies scenarios/policies.toml --seeds 1,2,3,4,5`` (2,000 users with churn, 20 % of the
nodes compromised; mean over the seeds and the half-width of the 95 % Student-t interval).
The always-on client (client/phone.py) runs DESKTOP's routes (:meth:`ClientPolicy.routing`);
its schedule and rates are the client's own behaviour (always online at the call rate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from overlay import RoutePolicy, UsageError

SCHEDULES = ("always", "daily", "calls")
ROUTES = ("call", "epoch", "packet")


class PolicyError(UsageError):
    """A client policy field is out of range; the message starts with the field's name."""


def _finite(name: str, value: object, lo: float, hi: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PolicyError(f"{name}: want a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise PolicyError(f"{name}: must be in [{lo:g}, {hi:g}], got {value!r}")


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    """When the client is online, at what rate, and how it routes.

    - ``schedule``: ``always`` online; ``daily``: one window of ``daily_online_h`` hours a
      day; ``calls``: only around calls.
    - ``linger_before_s`` / ``linger_after_s``: mean seconds (exponential, drawn afresh per
      call) the client comes online before a call and stays after it, when its schedule
      does not have it online anyway.
    - ``idle_slot_factor``: outside calls the uplink sends one packet every this many slots
      (1: always the call rate); the downlink follows. The call rate starts a mean
      ``rate_lead_s`` before a call and ends ``rate_lag_s`` after it (exponential), and the
      client also runs ``decoys_per_hour`` call-shaped periods at the call rate with no call.
    - ``route``: one route per call direction (``call``), per epoch of ``route_epoch_s``
      (``epoch``) or a new one per packet (``packet``); ``route_failover``: spare routes a
      call direction may move to when its route loses packets.

    Raises PolicyError naming the first field out of range.
    """

    schedule: str = "always"
    daily_online_h: float = 8.0
    linger_before_s: float = 0.0
    linger_after_s: float = 0.0
    idle_slot_factor: int = 1
    rate_lead_s: float = 0.0
    rate_lag_s: float = 0.0
    decoys_per_hour: float = 0.0
    route: str = "call"
    route_epoch_s: float = 3600.0
    route_failover: int = 2

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise PolicyError(f"schedule: want one of {list(SCHEDULES)}, got {self.schedule!r}")
        _finite("daily_online_h", self.daily_online_h, 0.0, 24.0)
        if self.daily_online_h == 0:
            raise PolicyError("daily_online_h: must be > 0")
        for name in ("linger_before_s", "linger_after_s", "rate_lead_s", "rate_lag_s"):
            _finite(name, getattr(self, name), 0.0, 86400.0)
        _finite("decoys_per_hour", self.decoys_per_hour, 0.0, 60.0)
        for name, hi in (("idle_slot_factor", 1000), ("route_failover", 16)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise PolicyError(f"{name}: want an integer, got {v!r}")
            if not (1 if name == "idle_slot_factor" else 0) <= v <= hi:
                raise PolicyError(f"{name}: out of range, got {v!r}")
        if self.route not in ROUTES:
            raise PolicyError(f"route: want one of {list(ROUTES)}, got {self.route!r}")
        _finite("route_epoch_s", self.route_epoch_s, 1.0, 86400.0)
        if self.idle_slot_factor == 1 and (
            self.rate_lead_s or self.rate_lag_s or self.decoys_per_hour
        ):
            raise PolicyError(
                "idle_slot_factor: rate_lead_s, rate_lag_s and decoys_per_hour need an idle "
                "rate (idle_slot_factor > 1)"
            )

    def routing(self) -> RoutePolicy:
        """The uplink's routing (``overlay.UplinkScheduler(routing=...)``) for ``route``:
        ``packet`` a path per packet, ``call`` a route per call direction with
        ``route_failover`` spares. PolicyError for ``epoch``, which the uplink does not
        implement yet.

            >>> DESKTOP.routing()
            RoutePolicy(per_call=True, failover=2)
        """
        if self.route == "packet":
            return RoutePolicy()
        if self.route == "call":
            return RoutePolicy(per_call=True, failover=self.route_failover)
        raise PolicyError(f"route: {self.route!r} routes are not implemented by the uplink")

    def sim_fields(self) -> dict[str, Any]:
        """The same settings as dotted ``phantom-sim`` scenario fields (``--set`` names)."""
        return {
            "policy.schedule": self.schedule,
            "policy.daily_online_h": float(self.daily_online_h),
            "policy.linger": "exponential",
            "policy.linger_before_s": float(self.linger_before_s),
            "policy.linger_after_s": float(self.linger_after_s),
            "policy.idle_slot_factor": self.idle_slot_factor,
            "policy.rate_lead_s": float(self.rate_lead_s),
            "policy.rate_lag_s": float(self.rate_lag_s),
            "policy.decoys_per_hour": float(self.decoys_per_hour),
            "mixing.path": self.route,
            "mixing.epoch_s": float(self.route_epoch_s),
            "mixing.failover": self.route_failover,
        }


DESKTOP = ClientPolicy()
"""Desktop, no data limit: always online at the call rate, one route per call direction
with 2 spare routes. Measured (``desktop`` in scenarios/policies.toml, N = 2,000, seeds 1-5,
mean +- 95 % interval): top-1 flow correlation 0.050 % +- 0 (exactly chance, 1/(N-1)),
timing 0.052 % +- 0.005 %, session edges and intersection 0.050 % (chance), goal 1.5/N =
0.075 % met; compromised hops 1.05 % +- 0.58 % of call pairs with 20 % of the nodes
compromised and dropping to force failover (68 % of pairs then fail); 1,447 MB up and
1,966 MB down a day; reachability 1.0; mouth-to-ear p99 568 +- 13 ms."""

MOBILE = ClientPolicy(
    idle_slot_factor=10,
    rate_lead_s=60.0,
    rate_lag_s=60.0,
    decoys_per_hour=0.25,
)
"""Mobile data, at most 500 MB a day: always online at 1/10 of the call rate; the call rate
from a mean 60 s before a call to 60 s after it, and 0.25 call-shaped decoys an hour.
Measured (``mobile``, as DESKTOP): 208 MB up and 283 MB down a day (4 calls of 5 min);
reachability 1.0; top-1 flow correlation 0.29 % +- 0.35 %, timing 0.42 % +- 0.31 % (mean
rank 298 of 2,000), session edges 0.20 %, intersection 0.22 %; at the budget day's call
density (scenarios/policy-sparse.toml) flow 1.8 % +- 2.2 %, timing 1.3 % +- 1.4 % (mean
rank 55). The goal of 0.075 % is NOT met. No policy within 500 MB can meet it: the
partner hides only among the clients at the call rate, a share d of them, so top-1 is at
least about 1/(d N), and 500 MB buys at most d = 15 % of a day at the call rate (top-1 >=
0.34 %, docs/research.md). This is the best measured point within the budget that keeps
the client reachable."""
