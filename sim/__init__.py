"""Phantom Net simulator: latency envelope and traffic-correlation resistance.

    >>> from sim import load_scenario, run_latency
    >>> sc = load_scenario({"seed": 3, "users": {"n_calls": 2, "call_s": 5.0}})
    >>> run_latency(sc).packets > 0
    True

Public names are re-exported here; ``_``-prefixed modules are implementation.
"""

from ._emodel import mos_from_r as mos_from_r
from ._emodel import r_factor as r_factor
from ._latency import LatencyResult as LatencyResult
from ._latency import run_latency as run_latency
from ._policy import PolicyRun as PolicyRun
from ._policy import data_per_day as data_per_day
from ._policy import load_policies as load_policies
from ._policy import measure_policies as measure_policies
from ._policy import run_policy as run_policy
from ._scenario import Dist as Dist
from ._scenario import Policy as Policy
from ._scenario import Scenario as Scenario
from ._scenario import ScenarioError as ScenarioError
from ._scenario import load_scenario as load_scenario
from ._sweep import SweepError as SweepError
from ._sweep import SweepReport as SweepReport
from ._sweep import sweep as sweep
from ._traffic import ATTACKS as ATTACKS
from ._traffic import AttackReport as AttackReport
from ._traffic import Observations as Observations
from ._traffic import attack as attack
from ._traffic import degree_of_anonymity as degree_of_anonymity
from ._traffic import entropy_bits as entropy_bits
from ._traffic import run_attacks as run_attacks
