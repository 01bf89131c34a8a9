"""The plan stage of the tick loop: one planner per policy.

Each planner answers :meth:`plan` for tick ``k`` from the stored energy and whether the grid is
lost, with ``(decision, fans, sources, pv_now_w)``: the
:class:`~picogrid.edge.optimizer.decision.Decision`, the forecast fans it planned on and where they
came from (both empty for the rule), and the PV power it assumed now [W]. The runner
(:class:`~picogrid.edge.control.runner.EdgeRunner`) calls the one its ``policy`` names and never
branches on the policy itself; the planners use the runner's forecast and optimise stages.

- :class:`ForecastPlanner` (``'mpc'``): the receding-horizon plan on the forecaster's fans, with
  the error scenarios of the forecasts issued on the days before.
- :class:`TrueFuturePlanner` (``'mpc_perfect_forecast'``): the MPC with perfect forecasts, the same
  plan on the source's true future (a replayed day), the bench's measured reference; a tick it cannot plan on the truth is marked.
- :class:`RulePlanner` (``'naive'``): the rule-based baseline on what is known now.
"""

from __future__ import annotations

import time

from picogrid.edge.forecasting.scenarios import planned_point
from picogrid.edge.sources.signals import LOAD_SERIES


class ForecastPlanner:
    """The MPC on the forecaster's fans (``policy='mpc'``)."""

    policy = "mpc"
    solves = True           # runs the optimiser (the runner keeps one MpcController)
    one_plan = False        # plans the site's forecast scenarios
    error_scenarios = True  # and the error scenarios of the days before

    def __init__(self, runner):
        self.runner = runner

    def plan(self, k, e_j, islanded):
        r = self.runner
        now = r.known_now(k)
        if r.error_days and k - 1 not in r._points:      # not prepared before the run
            r.prepare(k)
        fc, src = r.forecast(k, now)
        if r.error_days:
            r._points[k] = planned_point(fc, LOAD_SERIES, r.cfg.demand_p90_weight)
        decision, pv_fc = _timed_optimise(r, k, e_j, fc, islanded, now)
        return decision, fc, src, float(pv_fc[0])


class TrueFuturePlanner:
    """The MPC with perfect forecasts, the source's true future (``policy='mpc_perfect_forecast'``): one plan (a perfect
    forecast has no spread), and a ``reference_fallback`` event for a tick not planned on it."""

    policy = "mpc_perfect_forecast"
    solves = True
    one_plan = True         # a perfect forecast has no spread: its scenarios would be copies
    error_scenarios = False

    def __init__(self, runner):
        self.runner = runner

    def plan(self, k, e_j, islanded):
        r = self.runner
        now = r.known_now(k)
        fc, src = r.true_future(k)
        decision, pv_fc = _timed_optimise(r, k, e_j, fc, islanded, now)
        r._check_reference(k, r.clock() - r.t0, decision, src)
        return decision, fc, src, float(pv_fc[0])


class RulePlanner:
    """The naive rule (``policy='naive'``): PV -> loads -> storage -> grid on what is known now."""

    policy = "naive"
    solves = False
    one_plan = True
    error_scenarios = False

    def __init__(self, runner):
        self.runner = runner

    def plan(self, k, e_j, islanded):
        decision, pv_now = self.runner.decide_naive(k, e_j, islanded)
        return decision, {}, {}, pv_now


def _timed_optimise(r, k, e_j, fc, islanded, now):
    """The runner's optimise stage, its thread CPU time kept (the solver's own cost, without
    waits for the GIL or the cores)."""
    cpu0 = time.thread_time()
    decision, pv_fc, _, _ = r.optimise(k, e_j, fc, islanded, now)
    r.solve_cpu_s.append(time.thread_time() - cpu0)
    return decision, pv_fc


#: policy name -> planner class
PLANNERS = {p.policy: p for p in (ForecastPlanner, RulePlanner, TrueFuturePlanner)}
