"""Baselines for the MPC and the day simulator that scores every policy on the same true data.

- :func:`naive_step`: the rule-based policy (PV → loads → storage → grid; deficit: storage →
  grid → shed the lowest value-of-lost-load first). No prices. Also the MPC's fallback.
- :func:`solve_perfect_foresight`: the perfect-foresight optimum of the same model as the MPC over the
  whole day, solved exactly as a linear programme with HiGHS (``scipy.optimize.linprog``),
  without the MPC's tiny quadratic regularisation: a simplex/IPM vertex solution is exact to
  ~1e-9, so the perfect-foresight optimum is a true lower bound and not an ADMM-tolerance approximation.
- :func:`day_ahead_policy`: a whole-day plan followed open loop (storage and deferrable power
  from the plan, loads and PV as they come), as a home follows an EMHASS day-ahead plan.
- :func:`simulate_policy`, :func:`day_cost`: closed-loop day
  simulation and the figure of merit of docs/design.md §4,
  ``(cost_naive − cost_mpc) / (cost_naive − cost_perfect_foresight)``.

The cost every policy is scored on is the MPC and perfect-foresight objective evaluated on what really
happened: import cost − export revenue + value of lost load × shed energy + cycling cost −
terminal value of the energy left at the end of the day + the value of deferrable job energy
not delivered in its window. With this one cost the perfect-foresight optimum is a lower bound for any policy.
Deferrable jobs (:attr:`DayTruth.jobs`, lab feed format) are delivered by a deferrable load
whose power the plant grants up to what the open jobs still need; the naive rule delivers
each as early as its window allows.

Sign convention: power into the DC bus is positive (storage + discharge, grid + import);
served/demand powers of loads are positive numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from picogrid.edge.optimizer import economics
from picogrid.edge.sources.deferrable import JobLedger, as_job_array
from picogrid.edge.optimizer.decision import Decision
from picogrid.edge.optimizer.optimize import parse_jobs, reserve_energy_j, validate_inputs
from picogrid.edge.optimizer.rules import naive_step, shed_by_priority, storage_headroom
from picogrid.edge.optimizer.qp_model import build_model
log = logging.getLogger(__name__)


def solve_perfect_foresight(cfg, e0_j, pv_avail_w, demand_w, import_price_per_j, export_price_per_j,
                 p_imp_max_w=None, p_exp_max_w=None, jobs=None, p_def_max_w=None,
                 reserve_demand_w=None, reserve_pv_w=None):
    """Perfect-foresight optimum of the MPC model over the whole day, solved exactly.

    The same model as :class:`picogrid.edge.optimizer.optimize.MpcController` (built by
    :func:`~picogrid.edge.optimizer.qp_model.build_model` with ``horizon = T``) without the quadratic
    regularisation, as an LP solved by HiGHS through ``scipy.optimize.linprog``.

    Parameters
    ----------
    cfg : MpcConfig
        Model parameters; ``horizon`` is replaced by the day length ``T``.
    e0_j : float
        Stored energy at the start of the day [J].
    pv_avail_w : array [T]; demand_w : array [T, L]; import_price_per_j, export_price_per_j : array [T]
        True data of the day [W, W, price/J].
    p_imp_max_w, p_exp_max_w : array [T] or None
        Grid limits [W]; ``None`` uses the config.
    jobs : sequence or None
        Deferrable jobs of the day (lab feed format, ticks from the day's start, energy [J]);
        ``cfg.n_jobs`` is raised to their number if smaller.
    p_def_max_w : array [T] or None
        Deferrable load headroom [W]; ``None`` uses the config.
    reserve_demand_w, reserve_pv_w : array [T, L], [T] or None
        Inputs of the reserve when ``cfg.reserve`` (see :func:`~picogrid.edge.optimizer.optimize.reserve_energy_j`);
        ``None`` uses the true demand / PV.

    Returns
    -------
    Decision
        ``status='solved'``; ``plan`` covers the whole day; ``objective`` is the exact optimum.

    Raises
    ------
    ValueError
        On shape mismatch or non-finite data.
    RuntimeError
        If HiGHS does not report an optimal solution (cannot happen for finite data: the
        energy bounds are soft, so the LP is always feasible and bounded).
    """
    t0 = time.perf_counter()
    pv = np.asarray(pv_avail_w, dtype=float)
    t_day = int(pv.shape[0])
    job_arr = parse_jobs(jobs, max(cfg.n_jobs, len(jobs or ())))
    day_cfg = cfg.replace(horizon=t_day, n_jobs=max(cfg.n_jobs, len(job_arr)))
    data = validate_inputs(day_cfg, pv, demand_w, import_price_per_j, export_price_per_j,
                           p_imp_max_w, p_exp_max_w)
    if not all(np.all(np.isfinite(a)) for a in data) or not np.isfinite(e0_j):
        raise ValueError("solve_perfect_foresight needs finite data")
    pv, demand, c_imp, c_exp, imp_max, exp_max = data
    def_max = np.maximum(np.broadcast_to(np.asarray(
        day_cfg.p_def_max_w if p_def_max_w is None else p_def_max_w, float), (t_day,)), 0.0)
    reserve = None
    if day_cfg.reserve:
        r_dem = demand if reserve_demand_w is None else np.asarray(reserve_demand_w, float).reshape(demand.shape)
        r_pv = pv if reserve_pv_w is None else np.asarray(reserve_pv_w, float)
        reserve = reserve_energy_j(day_cfg, np.maximum(r_dem, 0), np.maximum(r_pv, 0), np.maximum(imp_max, 0))
    model = build_model(day_cfg)
    econ = economics.resolve(day_cfg, c_imp, c_exp)     # the day's economics, as simulate_policy scores it
    q, lo, hi = model.vectors(float(e0_j), np.maximum(pv, 0), np.maximum(demand, 0), c_imp, c_exp,
                              np.maximum(imp_max, 0), np.maximum(exp_max, 0), job_arr, def_max,
                              reserve, econ)
    # Identity rows of the OSQP form become variable bounds; the rest equality/inequality rows.
    A = model.A.tocsr()
    is_bound = np.zeros(model.m, bool)
    bounds_lo = np.full(model.n, -np.inf)
    bounds_hi = np.full(model.n, np.inf)
    for name, rows in model.rows.blocks.items():
        if name.startswith("bound_"):
            cols = model.cols[name[len("bound_"):]].ravel()
            is_bound[rows.ravel()] = True
            bounds_lo[cols], bounds_hi[cols] = lo[rows.ravel()], hi[rows.ravel()]
    eq = ~is_bound & (lo == hi)
    ineq = ~is_bound & ~eq
    A_ub = sp.vstack([A[ineq], -A[ineq]]).tocsr()
    b_ub = np.concatenate([hi[ineq], -lo[ineq]])
    finite = np.isfinite(b_ub)
    res = linprog(q, A_ub=A_ub[finite], b_ub=b_ub[finite], A_eq=A[eq], b_eq=lo[eq],
                  bounds=np.column_stack([bounds_lo, bounds_hi]), method="highs")
    if res.status != 0:
        raise RuntimeError(f"perfect-foresight LP not solved: {res.message}")
    x = np.clip(res.x, bounds_lo, bounds_hi)
    plan = model.unscale(x, float(e0_j))
    plan["reserve_j"] = np.full(t_day, -np.inf) if reserve is None else reserve
    objective, terms = model.objective_terms(plan, demand, c_imp, c_exp, econ)
    return Decision(status="solved", solve_time_s=time.perf_counter() - t0, iterations=int(res.nit),
                    objective=objective, p_storage_w=float(plan["p_dis"][0] - plan["p_ch"][0]),
                    p_grid_w=float(plan["p_imp"][0] - plan["p_exp"][0]),
                    pv_cap_w=float(plan["p_pv"][0]), load_served_w=plan["p_load"][0].copy(),
                    plan=plan, objective_terms=terms, p_deferrable_w=float(plan["p_def"][0].sum()),
                    deferrable_w=plan["p_def"][0].copy(), binding=model.binding(x, lo, hi))


@dataclass
class DayTruth:
    """What really happens over a day of ``T`` steps (or a forecast of it).

    Attributes
    ----------
    pv_avail_w : ndarray [T]  available PV power [W]
    demand_w : ndarray [T, L]  demand per load [W]
    import_price_per_j, export_price_per_j : ndarray [T]  [price/J]
    e0_j : float  stored energy at the start [J]
    p_imp_max_w, p_exp_max_w : ndarray [T] or None  grid limits [W] (``None``: config limits)
    jobs : list or None  deferrable jobs, lab feed ``/deferables`` format, ticks of this day
        (window ``start <= t < end``), ``energy`` [J]
    p_def_max_w : ndarray [T] or None  power the deferrable load can take [W] (``None``: config)
    """

    pv_avail_w: np.ndarray
    demand_w: np.ndarray
    import_price_per_j: np.ndarray
    export_price_per_j: np.ndarray
    e0_j: float
    p_imp_max_w: np.ndarray | None = None
    p_exp_max_w: np.ndarray | None = None
    jobs: list | None = None
    p_def_max_w: np.ndarray | None = None

    @property
    def job_array(self):
        """Jobs as an array [J, 3] of ``(start, end, energy_j)`` (order kept, none dropped)."""
        return as_job_array(self.jobs)

    def def_limit(self, cfg):
        """Deferrable load headroom as a [T] array [W]."""
        lim = cfg.p_def_max_w if self.p_def_max_w is None else self.p_def_max_w
        return np.broadcast_to(np.asarray(lim, float), (self.n_steps,)).copy()

    def live_jobs(self, t, delivered_j, limit=None):
        """Jobs still open at step ``t`` relative to ``t``, lab feed format, remaining energy;
        at most ``limit``, earliest deadline first (:meth:`JobLedger.live`)."""
        return JobLedger(self.jobs, delivered_j).live(t, limit)

    @property
    def n_steps(self):
        return int(np.asarray(self.pv_avail_w).shape[0])

    def limits(self, cfg):
        """Grid limits as [T] arrays [W], config values where not given."""
        t = self.n_steps
        imp = np.full(t, cfg.p_imp_max_w) if self.p_imp_max_w is None else np.asarray(self.p_imp_max_w, float)
        exp = np.full(t, cfg.p_exp_max_w) if self.p_exp_max_w is None else np.asarray(self.p_exp_max_w, float)
        return imp, exp

    def window(self, t, n, cfg, delivered_j=None):
        """Data for steps ``t .. t+n-1`` as keyword arguments of ``MpcController.solve``.

        Past the end of the day the last step's values are repeated (the horizon does not
        shrink, so the controller keeps its fixed problem size). With jobs, ``delivered_j``
        [J] is the energy delivered to each so far and the window carries the open ones, at
        most ``cfg.n_jobs`` of them, earliest deadline first, as the edge's runner plans.
        """
        idx = np.minimum(np.arange(t, t + n), self.n_steps - 1)
        imp, exp = self.limits(cfg)
        out = {"pv_avail_w": np.asarray(self.pv_avail_w, float)[idx],
               "demand_w": np.asarray(self.demand_w, float).reshape(self.n_steps, -1)[idx],
               "import_price_per_j": np.asarray(self.import_price_per_j, float)[idx],
               "export_price_per_j": np.asarray(self.export_price_per_j, float)[idx],
               "p_imp_max_w": imp[idx], "p_exp_max_w": exp[idx]}
        if self.jobs:
            done = np.zeros(len(self.jobs)) if delivered_j is None else delivered_j
            out["jobs"] = self.live_jobs(t, done, cfg.n_jobs)
            lim = self.def_limit(cfg)[idx]
            lim[np.arange(t, t + n) >= self.n_steps] = 0.0   # the day's jobs end with the day
            out["p_def_max_w"] = lim
        return out


@dataclass
class DayResult:
    """Realised dispatch of one policy over a day (bus sign convention, [W] per step, [J]).

    ``load_served_w`` is [T, L]; ``e_j`` is [T+1]; ``costs`` holds the terms of the objective
    evaluated on the realised flows and ``costs['total']``; ``statuses`` the decision statuses.
    """

    pv_w: np.ndarray
    storage_w: np.ndarray
    grid_w: np.ndarray
    load_served_w: np.ndarray
    e_j: np.ndarray
    costs: dict
    statuses: list = field(default_factory=list)
    deferrable_w: np.ndarray | None = None

    @property
    def total_cost(self):
        return self.costs["total"]


def plant_step(decision, e_j, pv_avail_w, demand_w, cfg, p_imp_max_w, p_exp_max_w, p_def_avail_w=0.0):
    """Apply one decision to the true conditions of one step.

    The boards follow their setpoints within physics: PV gives ``min(cap, available)``, each load
    takes ``min(setpoint, demand)``, storage follows its setpoint clipped to its power and energy
    limits, and the grid board takes the residual. Where the residual exceeds the grid limit
    (e.g. outage), storage absorbs it within its limits, then the lowest-value loads are shed
    (deficit) or PV is curtailed (surplus). The deferrable load takes
    ``min(decision.p_deferrable_w, p_def_avail_w)`` (what the open jobs can still use) and is
    shed like a load of value ``cfg.voll_def_per_j``.

    Returns
    -------
    tuple
        ``(pv_w, storage_w, grid_w, served_w[L], e_next_j, deferrable_w)`` with storage +
        discharge and grid + import [W], energy [J].
    """
    pv = min(max(decision.pv_cap_w, 0.0), pv_avail_w)
    served = np.minimum(np.maximum(np.asarray(decision.load_served_w, float), 0.0), demand_w)
    served = np.append(served, min(max(float(decision.p_deferrable_w), 0.0), max(p_def_avail_w, 0.0)))
    voll = (*cfg.voll_per_j, cfg.voll_def_per_j)
    ch_room, dis_room = storage_headroom(e_j, cfg)
    storage = float(np.clip(decision.p_storage_w, -ch_room, dis_room))
    grid = served.sum() - pv - storage
    if grid > p_imp_max_w:
        extra = min(grid - p_imp_max_w, dis_room - storage)   # a charging setpoint can swing to discharge
        storage += extra
        rest = shed_by_priority(served, grid - p_imp_max_w - extra, voll)
        if rest > 1e-12:  # nothing left to cut: the bus cannot be balanced (should not happen)
            log.warning("plant deficit of %.3g W left unbalanced", rest)
    elif grid < -p_exp_max_w:
        surplus = -p_exp_max_w - grid
        extra = min(surplus, ch_room + storage)   # a discharging setpoint can swing to charge
        storage -= extra
        pv -= min(surplus - extra, pv)
    grid = served.sum() - pv - storage
    ch, dis = max(-storage, 0.0), max(storage, 0.0)
    e_next = e_j + cfg.dt_s * (cfg.eta_ch * ch - dis / cfg.eta_dis)
    return pv, storage, grid, served[:-1], e_next, float(served[-1])


def day_cost(grid_w, import_price_per_j, export_price_per_j, dt_s):
    """Energy bill of a day [price units]: import energy × import price − export energy × export price.

    Parameters
    ----------
    grid_w : array [T]  grid power, + import [W]
    import_price_per_j, export_price_per_j : array [T]  [price/J]
    dt_s : float  step duration [s]
    """
    return float(np.sum(economics.bill(np.asarray(grid_w, float) * dt_s, import_price_per_j, export_price_per_j)))


def simulate_policy(policy_fn, truth, cfg):
    """Run a policy in closed loop over the true day.

    Parameters
    ----------
    policy_fn : callable ``(t, e_j) -> Decision``, or ``(t, e_j, delivered_j) -> Decision``
        Decides the setpoints of step ``t`` given the measured stored energy [J]; when the day
        has deferrable jobs it also gets the energy delivered to each job so far [J], shape [J].
    truth : DayTruth
        The day's true data.
    cfg : MpcConfig
        Plant limits, efficiencies, ``dt_s``, value of lost load, cycling and terminal values.

    Returns
    -------
    DayResult
        Realised flows and ``costs`` (``import_cost, export_revenue, shedding_cost,
        cycling_cost, terminal_value, total``; total = import − export + shedding + cycling −
        terminal + deferrable shortfall), the same cost the perfect-foresight LP minimises;
        ``deferrable_shortfall_cost`` prices each job's energy not delivered in its window at
        ``cfg.voll_def_per_j``. ``DayResult.deferrable_w`` [T] is the power delivered to jobs.
    """
    n = truth.n_steps
    nl = cfg.n_loads
    demand = np.asarray(truth.demand_w, float).reshape(n, nl)
    pv_avail = np.asarray(truth.pv_avail_w, float)
    imp_max, exp_max = truth.limits(cfg)
    out = {k: np.zeros(n) for k in ("pv", "storage", "grid")}
    served = np.zeros((n, nl))
    e = np.zeros(n + 1)
    e[0] = truth.e0_j
    statuses = []
    ledger = JobLedger(truth.jobs)
    def_lim = truth.def_limit(cfg)
    def_w = np.zeros(n)
    for t in range(n):
        d = policy_fn(t, e[t], ledger.delivered_j.copy()) if len(ledger) else policy_fn(t, e[t])
        statuses.append(d.status)
        out["pv"][t], out["storage"][t], out["grid"][t], served[t], e[t + 1], def_w[t] = plant_step(
            d, e[t], pv_avail[t], demand[t], cfg, imp_max[t], exp_max[t],
            min(def_lim[t], ledger.need_w(t, cfg.dt_s).sum()))
        ledger.deliver(t, def_w[t] * cfg.dt_s, cfg.dt_s)
    c_imp, c_exp = np.asarray(truth.import_price_per_j, float), np.asarray(truth.export_price_per_j, float)
    costs = economics.day_costs(economics.resolve(cfg, c_imp, c_exp), out["grid"], out["storage"], demand, served,
                                e[-1], ledger.shortfall_j(), c_imp, c_exp)
    return DayResult(out["pv"], out["storage"], out["grid"], served, e, costs, statuses, def_w)


def naive_policy(truth, cfg):
    """``policy_fn`` for :func:`simulate_policy` running :func:`naive_step` on the true step data."""
    imp_max, exp_max = truth.limits(cfg)
    demand = np.asarray(truth.demand_w, float).reshape(truth.n_steps, cfg.n_loads)
    def_lim = truth.def_limit(cfg)

    def policy(t, e_j, delivered_j=None):
        want = 0.0
        if truth.jobs:  # deliver every open job as early as possible, no price awareness
            want = min(def_lim[t], float(JobLedger(truth.jobs, delivered_j).need_w(t, cfg.dt_s).sum()))
        return naive_step(e_j, truth.pv_avail_w[t], demand[t], cfg, imp_max[t], exp_max[t], want)

    return policy


def perfect_foresight_policy(perfect_foresight):
    """``policy_fn`` replaying a :func:`solve_perfect_foresight` plan step by step."""
    plan = perfect_foresight.plan

    def policy(t, e_j, delivered_j=None):
        return Decision(status="perfect_foresight", solve_time_s=0.0, iterations=0, objective=perfect_foresight.objective,
                        p_storage_w=float(plan["p_dis"][t] - plan["p_ch"][t]),
                        p_grid_w=float(plan["p_imp"][t] - plan["p_exp"][t]),
                        pv_cap_w=float(plan["p_pv"][t]), load_served_w=plan["p_load"][t].copy(),
                        p_deferrable_w=float(plan["p_def"][t].sum()))

    return policy


def day_ahead_policy(plan, truth, cfg, pv_planned_w):
    """``policy_fn`` following a day-ahead plan open loop, the way a home follows an EMHASS plan.

    The storage power and the deferrable delivery of each step are the plan's (as
    :func:`perfect_foresight_policy` replays them); the loads are set to their demand now, as the naive
    rule serves them (a household load is not dispatched: the plant sheds only what the grid
    cannot cover); PV runs free (MPPT) except where the plan curtailed it, and there it is
    capped at the plan's PV power; the grid takes whatever is left (:func:`plant_step`).

    Parameters
    ----------
    plan : Decision
        A whole-day plan of :func:`solve_perfect_foresight` (``plan.plan`` arrays of at least ``T`` steps),
        solved on whatever data the planner had (forecasts, or the truth for perfect foresight).
    truth : DayTruth
        The real day (``T`` steps): gives the demand and available PV of the current step,
        which the lab feed and the boards tell at the time of the step.
    cfg : MpcConfig
        ``n_loads``.
    pv_planned_w : array [>= T]
        The PV power the plan was solved with [W]; a step is curtailed where the plan's PV
        use is below it by more than 1e-6 of its peak.

    Returns
    -------
    callable ``(t, e_j, delivered_j=None) -> Decision`` with ``status='dayahead'``.

    Raises
    ------
    ValueError
        If the plan or ``pv_planned_w`` covers fewer steps than the day.
    """
    n = truth.n_steps
    p_pv = np.asarray(plan.plan["p_pv"], float)
    pv_planned = np.asarray(pv_planned_w, float)
    if p_pv.shape[0] < n or pv_planned.shape[0] < n:
        raise ValueError(f"the plan covers {min(p_pv.shape[0], pv_planned.shape[0])} steps, the day {n}")
    tol_w = 1e-6 * max(float(np.max(np.abs(pv_planned[:n]), initial=0.0)), 1e-9)
    curtailed = p_pv[:n] < pv_planned[:n] - tol_w
    demand = np.asarray(truth.demand_w, float).reshape(n, cfg.n_loads)
    pv_avail = np.asarray(truth.pv_avail_w, float)
    follow = perfect_foresight_policy(plan)

    def policy(t, e_j, delivered_j=None):
        d = follow(t, e_j, delivered_j)
        return dataclasses.replace(d, status="dayahead", load_served_w=demand[t].copy(),
                                   pv_cap_w=float(p_pv[t] if curtailed[t] else pv_avail[t]))

    return policy


def pad_day_end(window, steps_left, cfg, econ=None):
    """The :meth:`MpcController.solve` arguments of a horizon that runs past the day's end.

    Past the end (steps ``>= steps_left``) there is no PV, no load and no import, and export
    pays exactly what the day's score credits for stored energy, ``terminal / eta_dis +
    cycling`` (per J on the bus): the plan then faces the day-end the perfect-foresight optimum of the day faces,
    instead of keeping energy for a next day the score does not count. Scenario inputs
    (``scenarios``) are padded alike. The terminal value and cycling cost are ``cfg``'s resolved
    for the padded window's prices (:func:`picogrid.edge.optimizer.economics.resolve`), as the solve
    resolves them, unless ``econ`` gives them.

    Parameters
    ----------
    window : dict
        Keyword arguments of ``solve`` with arrays of shape [N] (``demand_w`` [N, L]); needs
        ``p_imp_max_w`` as an array.
    steps_left : int
        Steps of the day left, counting the current one.
    cfg : MpcConfig

    Returns
    -------
    dict
        A padded copy (``window`` itself when the horizon ends within the day).
    """
    n = cfg.horizon
    past = np.arange(n) >= steps_left
    if not past.any():
        return window
    w = {k: (np.array(v, float) if isinstance(v, np.ndarray) else v) for k, v in window.items()}
    w["pv_avail_w"][past] = 0.0
    w["demand_w"][past] = 0.0
    w["p_imp_max_w"][past] = 0.0
    w["import_price_per_j"][past] = w["import_price_per_j"][~past][-1] if (~past).any() else 0.0
    if econ is None:
        econ = economics.resolve(cfg, w["import_price_per_j"], w["export_price_per_j"][~past])
    # a stored joule exported delivers eta_dis J to the bus, each paying the price less the
    # cycling cost (charged on bus-side power): eta_dis * (price - cycling) = terminal value
    w["export_price_per_j"][past] = econ.terminal_value_per_j / cfg.eta_dis + econ.cycle_cost_per_j
    if "p_def_max_w" in w:
        w["p_def_max_w"][past] = 0.0
    for key in ("reserve_demand_w", "reserve_pv_w"):
        if key in w:
            w[key][past] = 0.0
    if "scenarios" in w:
        base = {k: v for k, v in w.items() if k != "scenarios"}
        w["scenarios"] = [{k: padded[k] for k in sc} for sc in w["scenarios"]
                          for padded in [pad_day_end({**base, **sc}, steps_left, cfg, econ)]]
    return w


def mpc_policy(controller, forecast):
    """``policy_fn`` running an :class:`~picogrid.edge.optimizer.optimize.MpcController` on forecasts.

    Parameters
    ----------
    controller : MpcController
    forecast : DayTruth or callable ``t -> dict`` (``(t, delivered_j) -> dict`` with jobs)
        A ``DayTruth`` is used as a perfect/fixed forecast through :meth:`DayTruth.window`
        (padded past the day's end by repeating the last values); a callable returns the
        keyword arguments of ``controller.solve`` (except ``e0_j``) for step ``t``.
    """
    n = controller.config.horizon

    def policy(t, e_j, delivered_j=None):
        if isinstance(forecast, DayTruth):
            window = forecast.window(t, n, controller.config, delivered_j)
        else:
            window = forecast(t) if delivered_j is None else forecast(t, delivered_j)
        return controller.solve(e_j, **window)

    return policy
