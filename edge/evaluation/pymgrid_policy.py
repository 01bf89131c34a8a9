"""pymgrid's model predictive control as a policy of ``picogrid evaluate``: a measured comparison.

pymgrid (Total R&D, LGPL-3.0; Henri et al., "pymgrid: An Open-Source Python Microgrid Simulator
for Applied Artificial Intelligence Research", NeurIPS 2020 Tackling Climate Change with ML
workshop, arXiv:2011.08004) ships :class:`pymgrid.algos.ModelPredictiveControl`: one linear
programme per step over its forecast horizon, written in cvxpy once and re-solved with new
parameters every step. :class:`PymgridMpc` runs that class itself (pinned ``pymgrid==1.2.2``,
extra ``compare``), on the same forecast windows the PicoGrid MPC gets, and the plant of
:func:`picogrid.edge.optimizer.policies.simulate_policy` applies the part of its plan that pymgrid's own
modular microgrid applies (``ModelPredictiveControl._extract_modular_control``: the battery
power; the grid takes the rest, PV runs free, loads are served as they come).

Our model mapped onto its model (one load, one PV, one battery, one grid):

- the loads are summed into its one load; its one value of lost load is our highest;
- its one battery efficiency ``eta`` (charge × eta, discharge / eta) is
  ``sqrt(eta_ch * eta_dis)``: the same round trip;
- its steps have unit length (``delta_t = 1`` in ``_create_problem``): quantities are powers [W]
  and prices are per W-step (``price_per_j * dt_s``); the capacity is ``e_max_j / dt_s``; its state
  of charge is ``e / e_max``, bounded to ``[e_min / e_max, 1]``;
- cycling costs ``cycle_cost_per_j * dt_s`` per unit charged and per unit discharged (its
  ``battery_cost_cycle``);
- it has no deferrable loads: job energy is served as early as the job windows allow, as the
  naive rule serves it (:func:`asap_job_power`), and enters its load forecast that way;
- it has no terminal value of stored energy; its horizon, as ours, runs past the day's end, where
  :func:`picogrid.edge.optimizer.policies.pad_day_end` has set no load and no PV;
- as shipped, its objective adds ``export_price × export`` (``_set_parameters``: the cost
  vector's export entries are the export price, a non-negative cvxpy parameter), so the plan
  treats export as a cost while pymgrid's own grid module pays it as revenue
  (``GridModule.get_cost``). The export price is passed unchanged, as a pymgrid user would pass it;
  this is part of what is measured.

The forecasts are those the PicoGrid MPC plans on (:func:`picogrid.edge.forecasting.scenarios.forecast_inputs`:
PV and prices at their P50, demand at the fan's expected value, step 0 as measured), or the
true window for the perfect-forecast row; the scenarios are not used (its MPC plans one
forecast).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings

import numpy as np

from picogrid.edge.sources.deferrable import JobLedger
from picogrid.edge.optimizer.optimize import Decision

log = logging.getLogger(__name__)


def asap_job_power(jobs, p_def_max_w, dt_s, n):
    """Deferrable power [W] of steps 0..n-1 that serves every job as early as it can.

    Parameters
    ----------
    jobs : list or None
        Open jobs relative to step 0 (lab feed format, remaining ``energy`` [J]), as
        :meth:`picogrid.edge.optimizer.policies.DayTruth.window` gives them.
    p_def_max_w : array [n] or None
        Power the deferrable load can take [W]; ``None`` or no jobs: zeros.
    dt_s : float
        Step duration [s].
    n : int
        Steps.

    Returns
    -------
    numpy.ndarray [n]
        The power the naive rule would give the jobs at each step if nothing else limited it.
    """
    out = np.zeros(n)
    if not jobs or p_def_max_w is None:
        return out
    # a job already open has a negative relative start
    ledger = JobLedger([(max(j["start"], 0), j["end"], j["energy"]) for j in jobs])
    lim = np.asarray(p_def_max_w, float)
    for k in range(n):
        out[k] = min(float(lim[k]), float(ledger.need_w(k, dt_s).sum()))
        ledger.deliver(k, out[k] * dt_s, dt_s)
    return out


class PymgridMpc:
    """pymgrid's :class:`~pymgrid.algos.ModelPredictiveControl` for one site configuration.

    Built once (its cvxpy problem is compiled once, as in its own ``run`` loop); each
    :meth:`solve` sets the step's parameters and solves through
    ``ModelPredictiveControl._set_and_solve``, the call its ``run`` makes every step.

    Parameters
    ----------
    cfg : picogrid.edge.optimizer.mpc_config.MpcConfig
        Horizon ``N``, ``dt_s``, storage limits and efficiencies, grid limits, values of lost
        load and the cycling cost (mapped as the module docstring says).

    Raises
    ------
    ImportError
        If pymgrid (extra ``compare``) is not installed.
    RuntimeError
        If pymgrid built a horizon other than ``cfg.horizon``.
    """

    def __init__(self, cfg):
        # pymgrid imports gym, whose import prints gym's own end-of-life notice (gym_notices)
        # to stderr; it says nothing about this use, so it is kept out of our output
        with contextlib.redirect_stderr(io.StringIO()):
            from pymgrid import Microgrid
            from pymgrid.algos import ModelPredictiveControl
            from pymgrid.modules import BatteryModule, GridModule, LoadModule, RenewableModule
        from cvxpy.error import SolverError

        self._solver_error = SolverError     # cvxpy comes with pymgrid; imported here, not per solve

        self.config = cfg
        #: the solver cvxpy chose for pymgrid's LP, known after the first solve
        self.solver_name = None
        n, dt = cfg.horizon, cfg.dt_s
        self.eta = float(np.sqrt(cfg.eta_ch * cfg.eta_dis))
        # placeholder series: the controller reads only the modules' parameters and the
        # horizon here; every solve passes its own vectors
        flat = np.zeros(n + 1)
        modules = [
            BatteryModule(min_capacity=cfg.e_min_j / dt, max_capacity=cfg.e_max_j / dt,
                          max_charge=cfg.p_ch_max_w, max_discharge=cfg.p_dis_max_w,
                          efficiency=self.eta, battery_cost_cycle=cfg.cycle_cost_per_j * dt,
                          init_soc=0.5),
            LoadModule(time_series=flat, forecaster="oracle", forecast_horizon=n - 1),
            RenewableModule(time_series=flat, forecaster="oracle", forecast_horizon=n - 1),
            GridModule(max_import=cfg.p_imp_max_w, max_export=cfg.p_exp_max_w,
                       time_series=np.column_stack([flat, flat, flat, np.ones(n + 1)]),
                       forecaster="oracle", forecast_horizon=n - 1),
        ]
        microgrid = Microgrid(modules, loss_load_cost=max(cfg.voll_per_j) * dt)
        self.mpc = ModelPredictiveControl(microgrid)
        if self.mpc.horizon != n:
            raise RuntimeError(f"pymgrid built a horizon of {self.mpc.horizon} steps, expected {n}")

    def reset(self):
        """Nothing to forget: pymgrid's MPC keeps no state between solves but cvxpy's warm start."""

    def solve(self, e0_j, pv_avail_w, demand_w, import_price_per_j, export_price_per_j,
              p_imp_max_w=None, p_exp_max_w=None, jobs=None, p_def_max_w=None, **_ignored):
        """Plan with pymgrid's MPC and return the first step as a :class:`Decision`.

        Arguments as :meth:`picogrid.edge.optimizer.optimize.MpcController.solve` (arrays of ``N`` steps,
        ``demand_w`` [N, L]); scenario and reserve inputs are ignored. Grid limits enter as
        pymgrid's on/off grid status per step times its (constant) limits: a step whose import
        limit is 0 is an outage.

        Returns
        -------
        Decision
            ``status`` ``'pymgrid'`` (cvxpy's status ``optimal``), ``'pymgrid_inaccurate'``
            (``optimal_inaccurate``: applied, as pymgrid applies it) or
            ``'pymgrid_failed:<status>'`` (no plan: the battery holds), ``p_storage_w`` = its
            discharge − charge [W],
            loads served as demanded, PV uncurtailed, the deferrable load as early as possible.
        """
        cfg = self.config
        n, dt = cfg.horizon, cfg.dt_s
        t0 = time.perf_counter()
        job_w = asap_job_power(jobs, p_def_max_w, dt, n)
        demand = np.asarray(demand_w, float).reshape(n, -1)
        load = demand.sum(axis=1) + job_w
        pv = np.maximum(np.asarray(pv_avail_w, float), 0.0)
        imp_max = np.full(n, cfg.p_imp_max_w) if p_imp_max_w is None else np.asarray(p_imp_max_w, float)
        grid_on = (imp_max > 0).astype(float)
        soc0 = float(np.clip(e0_j / cfg.e_max_j, 0.0, 1.0))
        control = None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # its notes on flattening charge+discharge
            try:
                control = self.mpc._set_and_solve(
                    load, pv, grid_on, np.asarray(import_price_per_j, float) * dt,
                    np.asarray(export_price_per_j, float) * dt, 1.0, cfg.e_min_j / cfg.e_max_j,
                    cfg.p_ch_max_w, cfg.p_dis_max_w, cfg.p_imp_max_w, cfg.p_exp_max_w, soc0, None,
                    0.0, np.zeros(n), 0.0)
            except (self._solver_error, TypeError):     # TypeError: it reads a plan that is not there
                pass
        # pymgrid applies whatever plan cvxpy returns (it warns only on 'infeasible'); without
        # one (a failed solve) the battery holds
        status = self.mpc.problem.status
        stats = self.mpc.problem.solver_stats
        self.solver_name = stats.solver_name if stats is not None else self.solver_name
        ok = control is not None and status in ("optimal", "optimal_inaccurate")
        battery_name = self.mpc.microgrid_module_names["battery"]
        p_storage = float(np.ravel(control[battery_name])[0]) if ok else 0.0
        if not ok:
            log.warning("pymgrid MPC ended %s: battery held", status)
        served = demand[0].copy()
        p_grid = float(served.sum() + job_w[0] - pv[0] - p_storage)
        label = {"optimal": "pymgrid", "optimal_inaccurate": "pymgrid_inaccurate"}.get(status, f"pymgrid_failed:{status}")
        return Decision(status=label,
                        solve_time_s=time.perf_counter() - t0, iterations=0,
                        objective=float(self.mpc.problem.value) if ok else np.nan,
                        p_storage_w=p_storage, p_grid_w=p_grid, pv_cap_w=float(pv[0]),
                        load_served_w=served, p_deferrable_w=float(job_w[0]))
