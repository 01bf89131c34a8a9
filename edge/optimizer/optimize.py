"""Receding-horizon dispatch of the DC microgrid as one OSQP quadratic programme.

The model (docs/design.md §4): per step ``t`` of ``dt_s`` seconds over a horizon of ``N`` steps,
storage charge/discharge power, grid import/export, used PV (after curtailment), the power
served to each of ``L`` loads and the power delivered to each of ``J`` deferrable energy jobs
(lab feed ``/deferables``: ``{start, end, energy}``), with the stored energy as a state.
Constraints are the DC bus power balance, the storage energy dynamics with separate
charge/discharge efficiencies, power limits (for a supercapacitor also discharge power per
stored joule, which bounds its ESR loss), time-varying grid limits (zero = outage, islanded
operation), the deferrable load's power limit and job windows, and three soft constraints with
exact penalties, so the problem is feasible from any data: the energy limits, each job's energy
(undelivered energy priced at the deferrable class's value of lost load) and, when switched
on, the risk-aware reserve (:func:`reserve_energy_j`: one hour of islanded critical load at P90
demand and P10 PV). The objective is import cost − export revenue + value of lost load per
priority class × shed energy + cycling cost − terminal value of the stored energy + the soft
penalties, plus a tiny quadratic regularisation that makes the QP strictly convex.
:mod:`picogrid.edge.optimizer.mpc_config` holds its numbers (:func:`~picogrid.edge.optimizer.mpc_config.config_from_site`
builds them for either profile from its site TOML), :mod:`picogrid.edge.optimizer.qp_model` its matrices.

The QP is built once (fixed sparsity, :func:`~picogrid.edge.optimizer.qp_model.build_model`) and each tick only ``q``, ``l`` and
``u`` change, warm-started from the previous solution shifted by one step, following the OSQP
MPC example (Stellato et al., "OSQP: an operator splitting solver for quadratic programs",
Math. Prog. Comp. 12, 2020; https://osqp.org/docs/examples/mpc.html). The cold start, and a
tick OSQP ends unsolved, go to the same problem as an exact LP (:mod:`picogrid.edge.optimizer.simplex`,
HiGHS dual simplex from its last basis); when that fails too, or on an exception or a non-finite
input, the rule-based fallback of :mod:`picogrid.edge.optimizer.policies` decides.

Sign convention (project-wide): power into the DC bus is positive, so ``p_storage_w`` > 0 is
discharge and ``p_grid_w`` > 0 is import; served/demand powers of loads are positive numbers.
"""

from __future__ import annotations

import logging
import math
import time
from types import SimpleNamespace

import numpy as np
import osqp

from picogrid.edge.optimizer import economics
from picogrid.edge.optimizer.mpc_config import MpcConfig  # noqa: F401  (the examples' config)
from picogrid.edge.optimizer.qp_model import build_model
from picogrid.edge.optimizer.simplex import SOLVED, WarmSimplex
from picogrid.edge.optimizer.decision import Decision
from picogrid.edge.optimizer.rules import naive_step
from picogrid.edge.optimizer.scenario_qp import ScenarioQp

log = logging.getLogger(__name__)


def _as_series(name, value, n, default=None):
    if value is None:
        value = default
    arr = np.asarray(value, dtype=float)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    return arr


def validate_inputs(cfg, pv_avail_w, demand_w, import_price_per_j, export_price_per_j,
                    p_imp_max_w=None, p_exp_max_w=None):
    """Check shapes and return float arrays ``(pv[N], demand[N, L], c_imp[N], c_exp[N], imp_max[N], exp_max[N])``.

    Non-finite values are allowed here (they are a data problem handled by the fallback);
    ``None`` grid limits take the config's scalar limits. Scalars broadcast over the horizon.

    Raises
    ------
    ValueError
        If a shape does not match the horizon ``N`` and load count ``L`` of ``cfg``.
    """
    n, nl = cfg.horizon, cfg.n_loads
    demand = np.asarray(demand_w, dtype=float)
    if nl == 1 and demand.shape == (n,):
        demand = demand[:, None]
    if demand.shape != (n, nl):
        raise ValueError(f"demand_w must have shape ({n}, {nl}), got {demand.shape}")
    return (
        _as_series("pv_avail_w", pv_avail_w, n),
        demand,
        _as_series("import_price_per_j", import_price_per_j, n),
        _as_series("export_price_per_j", export_price_per_j, n),
        _as_series("p_imp_max_w", p_imp_max_w, n, cfg.p_imp_max_w),
        _as_series("p_exp_max_w", p_exp_max_w, n, cfg.p_exp_max_w),
    )


def parse_jobs(jobs, n_jobs, horizon=None):
    """Deferrable jobs in the lab feed's ``/deferables`` format as an array [J', 3].

    Parameters
    ----------
    jobs : sequence of mapping or sequence, or None
        Each job is ``{"start": int, "end": int, "energy": float}`` (or a ``(start, end,
        energy)`` triple): steps relative to the first step of the horizon, window
        ``start <= t < end``, and the energy still to deliver in it [J].
    n_jobs : int
        Job slots of the model.
    horizon : int or None
        Steps of the horizon; jobs that start after it are dropped (they do not concern it).

    Returns
    -------
    ndarray, shape [J', 3]
        Rows ``(start, end, energy_j)``; jobs whose window has passed (``end <= 0``), that
        start after the horizon or that need no energy are dropped.

    Raises
    ------
    ValueError
        On a malformed job, a non-finite or negative energy, ``end < start`` or more live jobs
        than ``n_jobs``.
    """
    rows = []
    for job in jobs or ():
        try:
            start, end, energy = ((job["start"], job["end"], job["energy"]) if isinstance(job, dict)
                                  else tuple(job))
            start, end, energy = float(start), float(end), float(energy)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"deferrable job must be {{start, end, energy}}, got {job!r}") from exc
        if not (math.isfinite(energy) and energy >= 0 and math.isfinite(start) and end >= start):
            raise ValueError(f"deferrable job needs energy >= 0 and start <= end, got {job!r}")
        if end > 0 and energy > 0 and (horizon is None or start < horizon):
            rows.append((max(start, 0.0), end, energy))
    if len(rows) > n_jobs:
        raise ValueError(f"{len(rows)} live deferrable jobs but the model has n_jobs={n_jobs}")
    return np.array(rows, dtype=float).reshape(-1, 3)


def reserve_energy_j(cfg, demand_w, pv_avail_w, p_imp_max_w):
    """Stored energy to keep after each step for ``reserve_duration_s`` of islanded critical load.

    ``need[t] = dt * sum_{k=t+1}^{t+H} max(sum_{c in critical} demand[k, c] - pv[k], 0)``
    with ``H = ceil(reserve_duration_s / dt_s)`` (steps past the horizon repeat the last one);
    the reserve is ``min(e_min_j + need / eta_dis, e_max_j)``. It is not asked for at steps
    that are already islanded (``p_imp_max_w <= 0``), where it is there to be used.

    Parameters
    ----------
    cfg : MpcConfig
    demand_w : array [N, L]
        Pessimistic demand, e.g. the P90 forecast [W].
    pv_avail_w : array [N]
        Pessimistic PV, e.g. the P10 forecast [W].
    p_imp_max_w : array [N]
        Import limits [W] (0 = outage).

    Returns
    -------
    ndarray [N]
        Reserve after each step [J]; ``-inf`` where none is asked for.
    """
    n = cfg.horizon
    h = max(int(math.ceil(cfg.reserve_duration_s / cfg.dt_s)), 1)
    deficit = np.maximum(np.asarray(demand_w, float)[:, list(cfg.critical)].sum(axis=1)
                         - np.asarray(pv_avail_w, float), 0.0)
    csum = np.concatenate([[0.0], np.cumsum(deficit)])
    t = np.arange(n)
    # steps t+1 .. t+H inside the horizon, then the repeated last step in closed form (a long
    # reserve duration must not allocate H floats every tick)
    inside = csum[np.minimum(t + h, n - 1) + 1] - csum[np.minimum(t + 1, n)]
    need_j = cfg.dt_s * (inside + np.maximum(t + h - (n - 1), 0) * deficit[-1])
    reserve = np.minimum(cfg.e_min_j + need_j / cfg.eta_dis, cfg.e_max_j)
    return np.where(np.asarray(p_imp_max_w, float) > 0, reserve, -np.inf)


class MpcController:
    """Receding-horizon controller: one solver set up once (OSQP, or HiGHS's warm simplex
    with ``solver='highs'``), updated every tick.

    Parameters
    ----------
    config : MpcConfig

    Examples
    --------
    >>> cfg = MpcConfig(horizon=4, dt_s=2.5, e_min_j=2, e_max_j=45, p_ch_max_w=3, p_dis_max_w=3,
    ...                 eta_ch=0.9, eta_dis=0.9, p_imp_max_w=6, p_exp_max_w=6, n_loads=1,
    ...                 voll_per_j=[50])
    >>> ctrl = MpcController(cfg)
    >>> tick = ([0, 0, 0, 0], [[1], [1], [1], [1]], [1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5])
    >>> d = ctrl.solve(10.0, *tick)            # cold: the exact LP, OSQP's warm start
    >>> d.status, round(d.p_grid_w + d.p_storage_w, 3), round(float(d.load_served_w[0]), 3)
    ('solved_exact', 1.0, 1.0)
    >>> ctrl.solve(10.0, *tick).status         # then OSQP, updated and warm-started
    'solved'
    """

    def __init__(self, config):
        self.config = config
        self.model = build_model(config)
        # the QP handed to OSQP: one copy of the model per scenario (one copy without scenarios)
        self._scenarios = config.scenario_weights is not None and len(config.scenario_weights) > 1
        # the reported plan is the likeliest quantile scenario's, not an error scenario's
        self._qp = qp = ScenarioQp(self.model, config.plan_weights if self._scenarios else (1.0,),
                                   config.scenario_shared_steps if self._scenarios else 1,
                                   int(np.argmax(config.scenario_weights)) if self._scenarios else 0)
        self._simplex = WarmSimplex(qp.A)
        self._solver = None          # OSQP, set up only when it solves (solver='osqp')
        if config.solver == "osqp":
            n = config.horizon
            vec = self.model.vectors(
                0.5 * (config.e_min_j + config.e_max_j), np.zeros(n), np.zeros((n, config.n_loads)),
                np.full(n, max(config.voll_per_j)), np.zeros(n),
                np.full(n, config.p_imp_max_w), np.full(n, config.p_exp_max_w))
            q, l, u = qp.vectors([vec] * qp.count)
            self._solver = osqp.OSQP()
            self._solver.setup(
                qp.P, q, qp.A, l, u, verbose=False, eps_abs=config.eps_abs,
                eps_rel=config.eps_rel, max_iter=int(config.max_iter), time_limit=config.time_limit_s,
                polishing=bool(config.polish), warm_starting=True, rho=config.rho,
                check_termination=int(config.check_termination),
                adaptive_rho_interval=int(config.adaptive_rho_interval), scaling=int(config.scaling))
        self._x_prev = None
        self._y_prev = None
        self._ticks_since_prev = 1   # ticks between the stored iterate and the next solve

    def reset(self, basis=True):
        """Forget the previous solution and, unless ``basis=False``, the simplex basis: the
        next solve starts cold."""
        self._x_prev = self._y_prev = None
        self._ticks_since_prev = 1
        if basis:
            self._simplex.reset()

    def _keep(self, res):
        """Store a solve's iterate as the next tick's warm start (copies: OSQP reuses its buffers)."""
        self._ticks_since_prev = 1
        if self._solver is not None:     # the exact LP keeps its own basis
            self._x_prev, self._y_prev = np.array(res.x), np.array(res.y)

    def _shifted_start(self):
        """The stored iterate shifted by the ticks since it was made (one, or more after
        fallbacks that did not solve), as ``(x, y)``."""
        x, y = self._x_prev, self._y_prev
        for _ in range(min(self._ticks_since_prev, self.config.horizon)):
            x, y = x[self._qp.x_shift], y[self._qp.y_shift]
        return x, y

    def solve(self, e0_j, pv_avail_w, demand_w, import_price_per_j, export_price_per_j,
              p_imp_max_w=None, p_exp_max_w=None, jobs=None, p_def_max_w=None,
              reserve_demand_w=None, reserve_pv_w=None, scenarios=None):
        """Solve one tick and return the first-step decision.

        Parameters
        ----------
        e0_j : float
            Stored energy now [J]; may lie outside ``[e_min_j, e_max_j]`` (soft bounds).
        pv_avail_w : array, shape [N]
            Available (MPPT) PV power forecast [W], >= 0.
        demand_w : array, shape [N, L]
            Demand forecast per load [W], >= 0.
        import_price_per_j, export_price_per_j : array, shape [N]
            Price paid per imported J and earned per exported J [price/J].
        p_imp_max_w, p_exp_max_w : array, shape [N], or None
            Grid limits per step [W]; 0 = outage (islanded). ``None`` uses the config.
        jobs : sequence or None
            Deferrable jobs, lab feed format, relative to this step (see :func:`parse_jobs`);
            at most ``config.n_jobs``.
        p_def_max_w : array, shape [N], or None
            Power the deferrable load can take per step [W]; ``None`` uses the config.
        reserve_demand_w : array, shape [N, L], or None
            Pessimistic (P90) demand for the reserve [W]; ``None`` uses ``demand_w``.
        reserve_pv_w : array, shape [N], or None
            Pessimistic (P10) PV for the reserve [W]; ``None`` uses ``pv_avail_w``.
        scenarios : sequence of mapping, or None
            With ``config.scenario_weights`` of ``S`` > 1 entries: one mapping per entry of
            ``config.plan_weights`` (``S`` quantile scenarios, then ``error_days`` error
            scenarios), in that order, each with any of ``pv_avail_w``, ``demand_w``,
            ``import_price_per_j``, ``export_price_per_j`` (shapes as above; a missing key takes
            the argument above). Step 0 of every scenario is replaced by the arguments above
            (the present is known). ``None`` makes every scenario the expected one. Ignored
            without scenario weights.

        Returns
        -------
        Decision
            ``status`` is ``'solved'``/``'solved_inaccurate'`` (OSQP), ``'solved_exact'`` (the
            exact LP: ``solver='highs'``, the cold start, or OSQP ended unsolved, ``reason`` says
            which), or ``'fallback:<reason>'`` when the inputs are not finite, the solver raised
            or neither OSQP nor the exact LP solved, in which case the setpoints come from
            :func:`picogrid.edge.optimizer.policies.naive_step` on the first step's data (the reason is
            logged at WARNING). A solved plan that has to violate a
            soft constraint (energy bounds, job energy, reserve) says which in
            ``soft_violations`` and ``reason`` and logs it at WARNING.

        Raises
        ------
        ValueError
            If an array shape does not match ``(N,)`` or ``(N, L)``, a job is malformed, or
            ``scenarios`` does not hold ``len(config.plan_weights)`` mappings.

        Notes
        -----
        Scalars broadcast over the horizon; negative availabilities/limits are read as 0. The
        LP cannot forbid simultaneous import and export (that needs integers): with an export
        price above the import price it will arbitrage up to the grid limits, as the model says.
        Nor can it forbid charging and discharging at once: where dissipating energy pays (an
        over-full store in an outage, a negative price), the plan loops power through the
        storage's losses. The setpoint is the net power; ``reason`` then says so, and the
        plan's ``e`` and objective count losses the net setpoint does not incur.
        """
        t0 = time.perf_counter()
        cfg = self.config
        n = cfg.horizon
        pv, demand, c_imp, c_exp, imp_max, exp_max = validate_inputs(
            cfg, pv_avail_w, demand_w, import_price_per_j, export_price_per_j,
            p_imp_max_w, p_exp_max_w)
        job_arr = parse_jobs(jobs, cfg.n_jobs, n)
        def_max = _as_series("p_def_max_w", p_def_max_w, n, cfg.p_def_max_w)
        e0_j = float(e0_j)
        arrays = [("e0_j", e0_j), ("pv_avail_w", pv), ("demand_w", demand),
                  ("import_price_per_j", c_imp), ("export_price_per_j", c_exp),
                  ("p_imp_max_w", imp_max), ("p_exp_max_w", exp_max), ("p_def_max_w", def_max)]
        reserve = None
        input_notes = []       # inputs that were replaced, not fatal: said in the reason
        if cfg.reserve:
            r_dem = demand if reserve_demand_w is None else validate_inputs(
                cfg, pv, reserve_demand_w, c_imp, c_exp)[1]
            r_pv = pv if reserve_pv_w is None else _as_series("reserve_pv_w", reserve_pv_w, n)
            if not (np.all(np.isfinite(r_dem)) and np.all(np.isfinite(r_pv))):
                # a gap in the pessimistic fans must not cost the whole plan (the rule-based
                # fallback keeps no reserve at all): size the reserve on the point forecast
                r_dem, r_pv = demand, pv
                input_notes.append("non-finite reserve_demand_w/reserve_pv_w: reserve on the point forecast")
        scen = self._scenario_inputs(scenarios, pv, demand, c_imp, c_exp)
        bad_scen = [k for k, sc in enumerate(scen) if not all(np.all(np.isfinite(a)) for a in sc)]
        bad = [name for name, a in arrays if not np.all(np.isfinite(a))]
        if bad_scen and not bad:
            # likewise one scenario's gap: that scenario plans on the point forecast
            for k in bad_scen:
                scen[k] = tuple(np.array(a, float) for a in (pv, demand, c_imp, c_exp))
            input_notes.append("non-finite scenarios[%s]: the point forecast instead"
                               % ",".join(map(str, bad_scen)))
        if bad:
            self._ticks_since_prev += 1   # the next warm start is one more tick old
            return self._fallback(f"non-finite input ({', '.join(bad)})", t0, e0_j, pv, demand,
                                  imp_max, exp_max, job_arr, def_max)
        if input_notes:
            log.warning("MPC inputs replaced: %s", "; ".join(input_notes))
        # Negative availabilities or limits are data errors the solver would call infeasible.
        pv, demand = np.maximum(pv, 0.0), np.maximum(demand, 0.0)
        imp_max, exp_max = np.maximum(imp_max, 0.0), np.maximum(exp_max, 0.0)
        def_max = np.maximum(def_max, 0.0)
        if cfg.reserve:
            reserve = reserve_energy_j(cfg, np.maximum(r_dem, 0.0), np.maximum(r_pv, 0.0), imp_max)
        try:
            scen = [(np.maximum(a, 0.0), np.maximum(b, 0.0), c, d)
                    for a, b, c, d in scen or [(pv, demand, c_imp, c_exp)]]
            # the window's own price scale prices the plan, every value of lost load above its prices
            econ = economics.resolve(cfg, c_imp, c_exp, [a for sc in scen for a in sc[2:]])
            vecs = [self.model.vectors(e0_j, a, b, c, d, imp_max, exp_max, job_arr, def_max, reserve, econ)
                    for a, b, c, d in scen]
            q, l, u = self._qp.vectors(vecs)
            res, iterations, exact, note = self._solve_qp(q, l, u)
        except Exception as exc:  # noqa: BLE001 - any solver failure must still yield a decision
            self.reset()
            return self._fallback(f"solver error: {exc!r}", t0, e0_j, pv, demand, imp_max, exp_max,
                                  job_arr, def_max)
        status_val = res.info.status_val
        if status_val not in (1, 2) or not np.all(np.isfinite(res.x)):
            if np.all(np.isfinite(res.x)) and np.all(np.isfinite(res.y)):
                self._keep(res)   # iterations or time ran out: progress the next tick resumes
            else:
                # an exact LP stopped by its time or iteration limit still holds a basis near
                # the optimum: the next tick resumes from it rather than from scratch
                self.reset(basis=not getattr(res.info, "stopped_at_limit", False))  # OSQP's info has none
            return self._fallback(note or f"osqp status {res.info.status!r}", t0, e0_j, pv, demand,
                                  imp_max, exp_max, job_arr, def_max)
        self._keep(res)
        status = "solved_exact" if exact else "solved" if status_val == 1 else "solved_inaccurate"
        if status_val == 2:
            log.warning("OSQP solution inaccurate after %d iterations (prim_res %.3g)",
                        res.info.iter, res.info.prim_res)
        xs, main = self._qp.split(res.x), self._qp.main
        plans, objective, terms, per_scenario = [], 0.0, {}, []
        for x_s, (pv_s, dem_s, imp_s, exp_s), w in zip(xs, scen, self._qp.weights):
            p = self.model.unscale(x_s, e0_j)
            p["reserve_j"] = np.full(n, -np.inf) if reserve is None else reserve
            # Clip ADMM's tolerance-level overshoots so setpoints respect the hard limits.
            for name, hi in (("p_ch", cfg.p_ch_max_w), ("p_dis", cfg.p_dis_max_w),
                             ("p_imp", imp_max), ("p_exp", exp_max), ("p_pv", pv_s),
                             ("p_load", dem_s), ("p_def", def_max[:, None])):
                p[name] = np.clip(p[name], 0.0, hi)
            obj_s, terms_s = self.model.objective_terms(p, dem_s, imp_s, exp_s, econ)
            objective += w * obj_s     # the expected cost over the scenarios
            per_scenario.append(float(obj_s))
            for k, v in terms_s.items():
                terms[k] = terms.get(k, 0.0) + w * v
            plans.append(p)
        plan = plans[main]
        # A first-step shortfall within solver tolerance is not a decision to shed or curtail:
        # snap it, so boards are not told to cut a few mW, and let the grid take the residual.
        snap_w = 1e-3 * self.model.p_scale_w
        served = np.where(demand[0] - plan["p_load"][0] < snap_w, demand[0], plan["p_load"][0])
        pv_cap = float(pv[0]) if pv[0] - plan["p_pv"][0] < snap_w else float(plan["p_pv"][0])
        p_def_jobs = plan["p_def"][0, :len(job_arr)].copy()
        # job power is not snapped at that tolerance: a job's last few mW are real energy it is
        # owed (snapped, 0.03 J of a teaching day's job went undelivered); only solver noise goes
        p_def_jobs[p_def_jobs < 1e-6 * self.model.p_scale_w] = 0.0
        p_def = float(p_def_jobs.sum())
        p_storage = float(plan["p_dis"][0] - plan["p_ch"][0])
        p_grid = float(np.clip(served.sum() + p_def - pv_cap - p_storage, -exp_max[0], imp_max[0]))
        soft = self._soft_violations(plan)
        shed_rule = _shed_rule(demand[0] - served, plan, imp_max[0], cfg, snap_w)
        notes = input_notes + [note]
        if shed_rule:
            notes.append("shed %.3g W (%s)" % (float(np.sum(demand[0] - served)), shed_rule))
            if shed_rule == "price":
                log.warning("MPC plan sheds %.3g W with the grid able to supply it (a defect of its "
                            "economics)", float(np.sum(demand[0] - served)))
        if min(plan["p_ch"][0], plan["p_dis"][0]) > snap_w:
            notes.append("plan charges and discharges at once (dissipates energy): net setpoint sent")
        if soft:
            notes.append("soft constraints violated: " + ", ".join(soft))
            log.warning("MPC plan soft constraints violated: %s", ", ".join(soft))
        reason = "; ".join(filter(None, notes))
        return Decision(
            status=status, solve_time_s=time.perf_counter() - t0, iterations=iterations,
            objective=objective, p_storage_w=p_storage, p_grid_w=p_grid, pv_cap_w=pv_cap,
            load_served_w=served, plan=plan, objective_terms=terms, p_deferrable_w=p_def,
            deferrable_w=p_def_jobs, binding=self.model.binding(xs[main], *vecs[main][1:]),
            soft_violations=soft, reason=reason, shed_rule=shed_rule,
            economics={"price_scale_per_j": economics.price_scale_per_j(c_imp, c_exp),
                       "voll_per_j": list(econ.voll_per_j), "voll_deferrable_per_j": econ.voll_def_per_j,
                       "terminal_value_per_j": econ.terminal_value_per_j,
                       "cycle_cost_per_j": econ.cycle_cost_per_j},
            scenario_objectives=per_scenario if self._scenarios else [])

    def _solve_qp(self, q, l, u):
        """One tick's QP by the configured path; returns ``(result, iterations, exact, note)``.

        ``result`` is in OSQP's form (``x``, ``y``, ``info.status_val``/``status``/``iter``);
        ``exact``: it is the simplex's optimum; ``note``: why the exact LP was used, or why
        nothing solved (empty for a plain OSQP tick).
        """
        cfg = self.config
        if cfg.solver == "highs":
            res = self._simplex.solve(q, l, u, cfg.time_limit_s)
            ok = res.info.status_val == SOLVED
            return res, int(res.info.iter), ok, "" if ok else f"exact LP status {res.info.status!r}"
        tried_exact = None
        if self._x_prev is None and cfg.cold_start_exact:
            res = self._simplex.solve(q, l, u, cfg.cold_time_limit_s)
            if res.info.status_val == SOLVED:
                return res, int(res.info.iter), True, "cold start: exact LP"
            log.info("cold start: exact LP %s; OSQP from zero", res.info.status)
            tried_exact = res
        self._solver.update(q=q, l=l, u=u)
        if self._x_prev is None:
            res, iterations = self._solve_cold()
        else:
            x0, y0 = self._shifted_start()
            self._solver.warm_start(x=x0, y=y0)
            res = self._solver.solve(raise_error=False)
            iterations = int(res.info.iter)
        if res.info.status_val in (1, 2) and np.all(np.isfinite(res.x)):
            return res, iterations, False, ""
        # ADMM ended unsolved (time or iterations ran out): the same problem as an exact LP,
        # unless the cold start has just tried it
        exact = tried_exact
        if exact is None:
            exact = self._simplex.solve(q, l, u, cfg.time_limit_s)
            iterations += int(exact.info.iter)
            if exact.info.status_val == SOLVED:
                note = f"osqp status {res.info.status!r}: exact LP instead"
                log.warning("MPC %s", note)
                return exact, iterations, True, note
        return res, iterations, False, f"osqp status {res.info.status!r}, exact LP status {exact.info.status!r}"

    def _solve_cold(self):
        """Solve from zero within ``cold_time_limit_s``, then resume at the tighter cold
        tolerance (see :class:`MpcConfig`).

        Returns ``(result, total iterations)``: the refined result if OSQP calls it solved,
        else the first one (never worse than no refinement).
        """
        cfg, f, s = self.config, self.config.cold_eps_factor, self._solver
        s.warm_start(x=np.zeros(self._qp.n), y=np.zeros(self._qp.m))  # not the last (failed) iterate
        s.update_settings(time_limit=cfg.cold_time_limit_s)
        try:
            res = s.solve(raise_error=False)
            iterations = int(res.info.iter)
            if f >= 1.0 or res.info.status_val not in (1, 2) or not np.all(np.isfinite(res.x)):
                return res, iterations
            # copies: OSQP reuses its result buffers and info struct in the next solve
            info = SimpleNamespace(**{k: getattr(res.info, k) for k in ("status_val", "status", "iter", "prim_res")})
            first = SimpleNamespace(x=np.array(res.x), y=np.array(res.y), info=info)
            s.update_settings(eps_abs=cfg.eps_abs * f, eps_rel=cfg.eps_rel * f)
            s.warm_start(x=first.x, y=first.y)
            fine = s.solve(raise_error=False)
        finally:
            s.update_settings(eps_abs=cfg.eps_abs, eps_rel=cfg.eps_rel, time_limit=cfg.time_limit_s)
        iterations += int(fine.info.iter)
        if fine.info.status_val == 1 and np.all(np.isfinite(fine.x)):
            return fine, iterations
        log.info("cold-start refinement stopped (%s); keeping the first solve", fine.info.status)
        return first, iterations

    def _scenario_inputs(self, scenarios, pv, demand, c_imp, c_exp):
        """Validated ``[(pv, demand, c_imp, c_exp)] * S`` with step 0 from the arguments."""
        if not self._scenarios:
            return []
        count = self._qp.count
        scenarios = [{}] * count if scenarios is None else list(scenarios)
        if len(scenarios) != count:
            raise ValueError(f"scenarios must hold {count} mappings, got {len(scenarios)}")
        out = []
        for sc in scenarios:
            data = validate_inputs(self.config, sc.get("pv_avail_w", pv), sc.get("demand_w", demand),
                                   sc.get("import_price_per_j", c_imp),
                                   sc.get("export_price_per_j", c_exp))[:4]
            data = tuple(np.array(a, float) for a in data)
            for a, now in zip(data, (pv, demand, c_imp, c_exp)):
                a[0] = now[0]
            out.append(data)
        return out

    def _soft_violations(self, plan):
        """Soft constraints the plan violates by more than solver tolerance."""
        cfg = self.config
        tol_e = 1e-3 * cfg.e_max_j
        tol_def = 1e-3 * self.model.def_unit_j
        out = []
        if plan["s_e"][:, 0].max(initial=0.0) > tol_e:
            out.append("storage_energy_min")
        if plan["s_e"][:, 1].max(initial=0.0) > tol_e:
            out.append("storage_energy_max")
        if plan["s_def"].max(initial=0.0) > tol_def:
            out.append("deferrable_energy")
        if plan["s_res"].max(initial=0.0) > tol_e:
            out.append("reserve")
        return out

    def _fallback(self, reason, t0, e0_j, pv, demand, imp_max, exp_max, jobs, def_max):
        log.warning("MPC fallback to rule-based dispatch: %s", reason)
        pv0 = float(pv[0]) if np.isfinite(pv[0]) else 0.0  # unknown PV: plan without it
        # Unknown demand: serve the first finite forecast of that load, else nothing.
        demand0 = np.array([_first_finite(demand[:, k]) for k in range(demand.shape[1])])
        imp0 = float(imp_max[0]) if np.isfinite(imp_max[0]) else 0.0
        exp0 = float(exp_max[0]) if np.isfinite(exp_max[0]) else 0.0
        def0 = _first_finite(def_max[:1])
        # the rule delivers each live job as early as its window allows
        live = [(k, min(e / self.config.dt_s, def0)) for k, (s, _, e) in enumerate(jobs) if s <= 0]
        want = np.zeros(len(jobs))
        room = def0
        for k, p in live:
            want[k] = min(p, room)
            room -= want[k]
        d = naive_step(e0_j, pv0, demand0, self.config, p_imp_max_w=imp0, p_exp_max_w=exp0,
                             deferrable_w=float(want.sum()))
        if want.sum() > 0:
            d.deferrable_w = want * (d.p_deferrable_w / want.sum())
        else:
            d.deferrable_w = want
        d.status = "fallback:" + reason
        d.reason = reason
        d.solve_time_s = time.perf_counter() - t0
        return d


def _shed_rule(shed_w, plan, p_imp_max_w, cfg, tol_w):
    """Which rule makes the first step serve ``shed_w`` [W per load] less than the demand:
    see :attr:`Decision.shed_rule` ('' when nothing is shed)."""
    if float(np.sum(shed_w)) <= tol_w:
        return ""
    if p_imp_max_w <= tol_w:
        return "islanded"
    if plan["p_imp"][0] < p_imp_max_w - tol_w:
        return "price"
    return "storage_energy_min" if plan["e"][1] <= cfg.e_min_j + 1e-3 * cfg.e_max_j else "import_limit"


def _first_finite(x):
    finite = x[np.isfinite(x)]
    return max(float(finite[0]), 0.0) if finite.size else 0.0
