"""Receding-horizon dispatch of the DC microgrid as one OSQP quadratic programme.

The model (DESIGN.md §4): per step ``t`` of ``dt_s`` seconds over a horizon of ``N`` steps,
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
:func:`config_from_site` builds the configuration of either profile from its site TOML.

The QP is built once (fixed sparsity, :func:`build_model`) and each tick only ``q``, ``l`` and
``u`` change, warm-started from the previous solution shifted by one step, following the OSQP
MPC example (Stellato et al., "OSQP: an operator splitting solver for quadratic programs",
Math. Prog. Comp. 12, 2020; https://osqp.org/docs/examples/mpc.html). The cold start, and a
tick OSQP ends unsolved, go to the same problem as an exact LP (:mod:`picogrid.edge.simplex`,
HiGHS dual simplex from its last basis); when that fails too, or on an exception or a non-finite
input, the rule-based fallback of :mod:`picogrid.edge.policies` decides.

Sign convention (project-wide): power into the DC bus is positive, so ``p_storage_w`` > 0 is
discharge and ``p_grid_w`` > 0 is import; served/demand powers of loads are positive numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import osqp
import scipy.sparse as sp

from .simplex import SOLVED, WarmSimplex
from .stochastic import ScenarioQp

log = logging.getLogger(__name__)

# Time-indexed decision blocks in column order; a new block (e.g. deferrable delivery) is added
# by appending to the layout in build_model and giving it rows, nothing else changes.
_POWER_BLOCKS = ("p_ch", "p_dis", "p_imp", "p_exp", "p_pv")
# Energy-bound violation costs this many times the largest per-J value in the problem. The
# bound's multiplier is a difference of marginal values of stored energy, at most about
# 2 x top / (eta_ch * eta_dis), so 10 keeps the L1 penalty exact with margin; a larger factor
# only slows ADMM down.
_PENALTY_FACTOR = 10.0


@dataclass(frozen=True)
class MpcConfig:
    """Parameters of the receding-horizon problem.

    Parameters
    ----------
    horizon : int
        Number of steps ``N`` in the horizon (>= 1).
    dt_s : float
        Step duration [s] (> 0).
    e_min_j, e_max_j : float
        Soft bounds of the stored energy [J], ``0 <= e_min_j < e_max_j``.
    p_ch_max_w, p_dis_max_w : float
        Storage charge/discharge power limits, bus side [W] (>= 0).
    eta_ch, eta_dis : float
        Charge and discharge efficiencies, in (0, 1].
    p_dis_per_e_max_per_s : float
        Largest discharge power per joule stored at the step's start [W/J = 1/s] (> 0; inf:
        no such limit). A supercapacitor's ESR loses ``P R / V² = P R C / (2 E)`` of the power
        it delivers, so a constant ``eta_dis`` only holds while ``P <= 2 f E / (R C)`` for a
        loss share ``f``; see :func:`config_from_site` (``[storage] esr_loss_max``).
    p_imp_max_w, p_exp_max_w : float
        Default grid import/export limits [W] (>= 0); per-solve arrays override them.
    n_loads : int
        Number of loads ``L`` (>= 1).
    voll_per_j : sequence of float, shape [L]
        Value of lost load per load [price/J] (>= 0); the highest is the most critical load.
    cycle_cost_per_j : float
        Storage throughput cost on charge + discharge energy [price/J] (>= 0).
    terminal_value_per_j : float
        Value credited for energy left in storage at the end of the horizon [price/J] (>= 0).
    eps_abs, eps_rel : float
        OSQP absolute/relative tolerances (on the internally scaled problem).
    max_iter : int
        OSQP iteration cap per solve stage. This LP-like problem can need ten thousand and more
        ADMM iterations from a cold start; the time limits are what bound a solve, so the
        default cap lies beyond them.
    time_limit_s : float
        Wall-clock limit per solve [s] (> 0), OSQP's and the exact LP's (HiGHS: run time).
    solver : str
        ``'osqp'`` (default, DESIGN.md §4): OSQP every tick, and the same problem as an exact
        LP (:class:`picogrid.edge.simplex.WarmSimplex`, status ``'solved_exact'``) for a tick
        OSQP ends unsolved. ``'highs'``: the exact LP every tick.
    cold_start_exact : bool
        With ``solver='osqp'``, solve a cold tick (the first, or the first after
        :meth:`MpcController.reset`) as the exact LP within ``cold_time_limit_s`` and
        warm-start OSQP from its primal and dual solution (default). False: OSQP from zero, as
        below. Why: at N = 288 the site's first tick took OSQP 12300 iterations and the simplex
        625 pivots, exact (``picogrid bench mpc``'s maxima; 1.1 s against 21 ms in a one-off
        timing of that tick).
    cold_eps_factor, cold_time_limit_s : float
        An OSQP cold solve (``cold_start_exact`` False, or the exact LP failed) gets
        ``cold_time_limit_s`` [s] (> 0) instead of ``time_limit_s``, and once solved is
        resumed at ``eps_abs``/``eps_rel`` times ``cold_eps_factor`` (in (0, 1]) for as long
        again. From zero, ADMM met the real-time tolerance 1e-4 at plans 38 % (N = 60) and
        63 % (N = 96) of the optimum's magnitude off on the first site tick, and every
        warm-started tick after it inherits that start; at 1e-6 the same solves were within
        0.001 % (``picogrid bench mpc``'s max gap). At N = 288 a cold solve took 0.5-0.7 s on
        an idle 2-core machine, more under load. Ticks are seconds (lab) to minutes (site)
        long, so one slower first solve costs nothing a user sees.
    polish : bool
        Run OSQP's solution polishing (an active-set refinement). Off by default: on this
        LP-like problem the active set guessed at real-time tolerances is rarely right, so the
        polish is rejected and only costs an extra factorisation (measured with
        tools/bench_mpc.py); it succeeds at tolerances around 1e-7.
    reg_rel : float
        Quadratic regularisation weight relative to the cost of running one full-scale power
        variable for one step at the reference price (dimensionless, >= 0).
    soft_penalty_per_j : float or None
        Penalty per J of energy-bound violation per step [price/J]. ``None`` (default) picks
        10× the largest per-J price, value of lost load or terminal value in each solve, above
        any marginal value of stored energy, so the penalty is exact (violations only when
        unavoidable).
    price_ref_per_j : float or None
        Price used to scale the objective internally [price/J]; ``None`` uses ``max(voll_per_j)``.
    n_jobs : int
        Deferrable energy job slots ``J`` in the QP (>= 0); fixed at set-up so the sparsity is
        fixed. Each tick may pass up to ``J`` jobs (lab feed ``/deferables`` format).
    p_def_max_w : float
        Default power limit of the deferrable load [W] (>= 0); per-solve arrays override it.
    voll_deferrable_per_j : float or None
        Value of energy of a deferrable job not delivered within its window [price/J];
        ``None`` uses ``min(voll_per_j)`` (the deferrable priority class is the cheapest).
    reserve : bool
        Risk-aware reserve on: keep enough stored energy for ``reserve_duration_s`` of islanded
        critical load at P90 demand and P10 PV (soft, priced by ``reserve_penalty_per_j``).
    reserve_duration_s : float
        Islanded time the reserve must cover [s] (> 0).
    reserve_penalty_per_j : float or None
        Penalty per J below the reserve per step [price/J]; ``None`` uses ``max(voll_per_j)``.
    critical_loads : tuple of int or None
        Indices of the loads the reserve covers; ``None`` = the loads with the highest VOLL.
    scenario_weights : tuple of float or None
        Probabilities of ``S`` forecast scenarios (> 0, sum 1) for the two-stage stochastic
        form of :mod:`picogrid.edge.stochastic` (one plan per scenario, shared first steps;
        ``S`` times the QP size). ``None`` or one weight: plan on the expected forecast only.
    scenario_quantiles : tuple of float or None
        Forecast quantile each scenario is built from (demand and price at ``q``, PV at
        ``1 - q``), one per weight; e.g. ``(0.1, 0.5, 0.9)`` with weights ``(0.3, 0.4, 0.3)``,
        the extended Swanson–Megill approximation. Read by the forecast side, not the solver.
    scenario_spread : float
        Share of each scenario quantile's distance from the median kept (> 0); see
        :func:`picogrid.edge.stochastic.quantile_scenarios`. Forecast side too.
    scenario_shared_steps : int
        Steps ``1..N`` whose storage and deferrable powers every scenario shares
        (non-anticipativity): 1 ties only the decision applied now; more keeps a scenario from
        planning on a future it would not know yet when those steps come. Solver side.
    scenario_correlation : float
        Correlation in [0, 1] assumed between the step errors of PV and each load when their
        scenarios are built to match the energy of the coming hours (1: every step at its own
        quantile at once); see :func:`picogrid.edge.stochastic.quantile_scenarios`. Forecast side.
    scenario_energy_spread : float or None
        ``None``: PV and load scenarios from ``scenario_correlation``. A number (> 0): their net
        energy over the coming steps at the quantiles of the forecaster's own past errors
        (:mod:`picogrid.edge.energy_calibration`), that share of each quantile's distance from
        the median kept (1 = as calibrated). Forecast side; needs the forecaster's calibration
        file, else it warns and keeps the correlation construction.
    error_scenario_days : int
        ``K`` >= 0: with scenarios (ignored without), ``K`` more, each this tick's point forecast plus the error
        the forecast issued at the same tick ``k`` days ago turned out to have, ``k = 1..K``
        (:mod:`picogrid.edge.error_scenarios`); 0 = none. Both sides: the forecast side builds
        them, the solver plans ``S + K`` scenarios.
    error_scenario_weight : float
        Their total probability in (0, 1), shared equally; the quantile scenarios keep the rest
        in the proportions of ``scenario_weights`` (:attr:`plan_weights`).
    demand_p90_weight : float
        Where in the demand fan the single (expected-value) plan sits, in [0, 1]: steps 1..N-1
        plan ``mean + w * (P90 - mean)`` per load; 0 plans on the mean. Read by the forecast side
        (:func:`picogrid.edge.stochastic.forecast_inputs`), not the solver; scenarios, when on,
        carry the fan themselves. Why: a joule of PV stored that the evening then does not need
        loses about the export price less the terminal value, one that is missing costs the
        import price, so a plan on the mean stores too little on days the demand forecast falls
        short (measured: see ``site.toml``).
    rho, check_termination, adaptive_rho_interval, scaling : OSQP settings
        ADMM step size, termination check interval [iterations], rho adaptation interval
        [iterations] and Ruiz scaling iterations; see the OSQP docs
        (https://osqp.org/docs/interfaces/solver_settings.html). Defaults measured with
        ``picogrid bench mpc``. The interval is fixed (OSQP's automatic choice, 0, derives it
        from the measured set-up time, so the same problem took different iterations from run to
        run; a solve cut by ``time_limit_s`` still depends on the machine's speed); 100 needed as few iterations as the automatic choice at N = 288 (median 275 over
        40 rolling site ticks, against 425 at 25 and 50, 350 at 200).

    Raises
    ------
    ValueError
        On any out-of-range value or a ``voll_per_j`` whose length is not ``n_loads``.
    """

    horizon: int
    dt_s: float
    e_min_j: float
    e_max_j: float
    p_ch_max_w: float
    p_dis_max_w: float
    eta_ch: float
    eta_dis: float
    p_imp_max_w: float
    p_exp_max_w: float
    n_loads: int
    voll_per_j: tuple
    p_dis_per_e_max_per_s: float = math.inf
    cycle_cost_per_j: float = 0.0
    terminal_value_per_j: float = 0.0
    eps_abs: float = 1e-4
    eps_rel: float = 1e-4
    max_iter: int = 1_000_000
    time_limit_s: float = 0.5
    cold_eps_factor: float = 0.01
    cold_time_limit_s: float = 2.0
    polish: bool = False
    solver: str = "osqp"
    cold_start_exact: bool = True
    reg_rel: float = 1e-6
    soft_penalty_per_j: float | None = None
    price_ref_per_j: float | None = None
    n_jobs: int = 0
    p_def_max_w: float = 0.0
    voll_deferrable_per_j: float | None = None
    reserve: bool = False
    reserve_duration_s: float = 3600.0
    reserve_penalty_per_j: float | None = None
    critical_loads: tuple | None = None
    scenario_weights: tuple | None = None
    scenario_quantiles: tuple | None = None
    scenario_spread: float = 1.0
    scenario_correlation: float = 1.0
    scenario_energy_spread: float | None = None
    scenario_shared_steps: int = 1
    error_scenario_days: int = 0
    error_scenario_weight: float = 0.5
    demand_p90_weight: float = 0.0
    rho: float = 0.1
    check_termination: int = 25
    adaptive_rho_interval: int = 100
    scaling: int = 10

    def __post_init__(self):
        object.__setattr__(self, "voll_per_j", tuple(float(v) for v in np.ravel(self.voll_per_j)))
        problems = []
        if int(self.horizon) != self.horizon or self.horizon < 1:
            problems.append(f"horizon must be an integer >= 1, got {self.horizon!r}")
        if int(self.n_loads) != self.n_loads or self.n_loads < 1:
            problems.append(f"n_loads must be an integer >= 1, got {self.n_loads!r}")
        if not self.dt_s > 0:
            problems.append(f"dt_s must be > 0, got {self.dt_s!r}")
        if not 0 <= self.e_min_j < self.e_max_j:
            problems.append(f"need 0 <= e_min_j < e_max_j, got {self.e_min_j!r}, {self.e_max_j!r}")
        for name in ("p_ch_max_w", "p_dis_max_w", "p_imp_max_w", "p_exp_max_w", "cycle_cost_per_j",
                     "terminal_value_per_j", "reg_rel"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                problems.append(f"{name} must be finite and >= 0, got {v!r}")
        for name in ("eta_ch", "eta_dis"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                problems.append(f"{name} must be in (0, 1], got {v!r}")
        if not self.p_dis_per_e_max_per_s > 0:
            problems.append("p_dis_per_e_max_per_s must be > 0 (inf: no limit), got "
                            f"{self.p_dis_per_e_max_per_s!r}")
        if len(self.voll_per_j) != self.n_loads:
            problems.append(f"voll_per_j has {len(self.voll_per_j)} values for n_loads={self.n_loads}")
        if any(not (math.isfinite(v) and v >= 0) for v in self.voll_per_j):
            problems.append(f"voll_per_j must be finite and >= 0, got {self.voll_per_j!r}")
        for name in ("eps_abs", "eps_rel", "time_limit_s", "cold_time_limit_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.cold_eps_factor <= 1:
            problems.append(f"cold_eps_factor must be in (0, 1], got {self.cold_eps_factor!r}")
        if self.solver not in ("osqp", "highs"):
            problems.append(f"solver must be 'osqp' or 'highs', got {self.solver!r}")
        if self.max_iter < 1:
            problems.append(f"max_iter must be >= 1, got {self.max_iter!r}")
        for name in ("soft_penalty_per_j", "price_ref_per_j"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                problems.append(f"{name} must be None or > 0, got {v!r}")
        if int(self.n_jobs) != self.n_jobs or self.n_jobs < 0:
            problems.append(f"n_jobs must be an integer >= 0, got {self.n_jobs!r}")
        if not (math.isfinite(self.p_def_max_w) and self.p_def_max_w >= 0):
            problems.append(f"p_def_max_w must be finite and >= 0, got {self.p_def_max_w!r}")
        for name in ("voll_deferrable_per_j", "reserve_penalty_per_j"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                problems.append(f"{name} must be None or finite and >= 0, got {v!r}")
        if not self.reserve_duration_s > 0:
            problems.append(f"reserve_duration_s must be > 0, got {self.reserve_duration_s!r}")
        if self.critical_loads is not None:
            object.__setattr__(self, "critical_loads", tuple(int(k) for k in self.critical_loads))
            if not self.critical_loads or any(not 0 <= k < self.n_loads for k in self.critical_loads):
                problems.append(f"critical_loads must be indices in [0, {self.n_loads}), got "
                                f"{self.critical_loads!r}")
        if self.scenario_weights is not None:
            w = tuple(float(v) for v in np.ravel(self.scenario_weights))
            object.__setattr__(self, "scenario_weights", w)
            if not w or any(not v > 0 for v in w) or abs(sum(w) - 1.0) > 1e-9:
                problems.append(f"scenario_weights must be > 0 and sum to 1, got {w!r}")
        if self.scenario_quantiles is not None:
            qs = tuple(float(v) for v in np.ravel(self.scenario_quantiles))
            object.__setattr__(self, "scenario_quantiles", qs)
            if len(qs) != len(self.scenario_weights or ()) or any(not 0 < v < 1 for v in qs):
                problems.append(f"scenario_quantiles must be in (0, 1), one per scenario weight, "
                                f"got {qs!r}")
        if int(self.error_scenario_days) != self.error_scenario_days or self.error_scenario_days < 0:
            problems.append(f"error_scenario_days must be an integer >= 0, got {self.error_scenario_days!r}")
        if not 0.0 < self.error_scenario_weight < 1.0:
            problems.append(f"error_scenario_weight must lie in (0, 1), got {self.error_scenario_weight!r}")
        if not 0.0 <= self.demand_p90_weight <= 1.0:
            problems.append(f"demand_p90_weight must lie in [0, 1], got {self.demand_p90_weight!r}")
        if int(self.scenario_shared_steps) != self.scenario_shared_steps \
                or not 1 <= self.scenario_shared_steps <= self.horizon:
            problems.append(f"scenario_shared_steps must be an integer in 1..horizon, "
                            f"got {self.scenario_shared_steps!r}")
        if not 0.0 <= self.scenario_correlation <= 1.0:
            problems.append(f"scenario_correlation must lie in [0, 1], got {self.scenario_correlation!r}")
        if not (math.isfinite(self.scenario_spread) and self.scenario_spread > 0):
            problems.append(f"scenario_spread must be finite and > 0, got {self.scenario_spread!r}")
        if self.scenario_energy_spread is not None and not (
                math.isfinite(self.scenario_energy_spread) and self.scenario_energy_spread > 0):
            problems.append(f"scenario_energy_spread must be None or finite and > 0, got "
                            f"{self.scenario_energy_spread!r}")
        if not self.rho > 0 or self.check_termination < 1 or self.adaptive_rho_interval < 0 \
                or self.scaling < 0:
            problems.append("need rho > 0, check_termination >= 1, adaptive_rho_interval >= 0, "
                            "scaling >= 0")
        if problems:
            raise ValueError("invalid MpcConfig: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d, strict=True):
        """Build a config from a flat mapping of the field names above.

        Parameters
        ----------
        d : mapping
            Field name -> value (the caller flattens the site TOML sections to these names).
        strict : bool
            If true, unknown keys are an error (catches typos in site files).

        Raises
        ------
        ValueError
            On unknown keys (when ``strict``), missing required keys or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown and strict:
            raise ValueError(f"unknown MpcConfig keys: {unknown}")
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(d))
        if missing:
            raise ValueError(f"missing MpcConfig keys: {missing}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @property
    def voll_def_per_j(self):
        """Value of undelivered deferrable energy [price/J] (resolved default)."""
        return (min(self.voll_per_j) if self.voll_deferrable_per_j is None
                else float(self.voll_deferrable_per_j))

    @property
    def critical(self):
        """Indices of the critical loads (resolved default)."""
        if self.critical_loads is not None:
            return self.critical_loads
        top = max(self.voll_per_j)
        return tuple(k for k, v in enumerate(self.voll_per_j) if v == top)

    @property
    def error_days(self):
        """``K`` error scenarios the plan really has: ``error_scenario_days`` when the config
        plans scenarios (two or more weights), else 0."""
        plans_scenarios = self.scenario_weights is not None and len(self.scenario_weights) > 1
        return int(self.error_scenario_days) if plans_scenarios else 0

    @property
    def plan_weights(self):
        """Probabilities of every scenario the solver plans, shape [S + K]: the quantile
        scenarios' ``scenario_weights`` times ``1 - error_scenario_weight``, then ``K`` equal
        shares of ``error_scenario_weight`` (``scenario_weights`` itself when ``K`` = 0)."""
        k = self.error_days
        if not k:
            return self.scenario_weights
        w = self.error_scenario_weight
        return tuple((1.0 - w) * v for v in self.scenario_weights) + (w / k,) * k

    def replace(self, **changes):
        """Return a copy with some fields changed (e.g. ``horizon`` for a whole-day solve)."""
        return dataclasses.replace(self, **changes)


@dataclass
class Decision:
    """Setpoints for the current step plus the plan behind them.

    Attributes
    ----------
    status : str
        ``'solved'``, ``'solved_inaccurate'`` (OSQP), ``'solved_exact'`` (the exact LP,
        :mod:`picogrid.edge.simplex`), ``'fallback:<reason>'`` or ``'naive'``.
    solve_time_s : float
        Wall time of the solve or fallback [s].
    iterations : int
        Solver iterations: OSQP's ADMM iterations, plus the simplex pivots of an exact LP solve
        (0 for rule-based decisions).
    objective : float
        Model objective of the plan [price units], without the regularisation; NaN for
        rule-based decisions.
    p_storage_w : float
        First-step storage power, bus side [W]; + discharge, − charge.
    p_grid_w : float
        First-step grid power [W]; + import, − export.
    pv_cap_w : float
        First-step used PV [W], the curtailment cap sent to the pv board.
    load_served_w : ndarray, shape [L]
        First-step power to serve per load [W] (>= 0).
    plan : dict of ndarray
        Over the horizon: ``p_ch, p_dis, p_imp, p_exp, p_pv`` [N] (W, >= 0), ``p_load`` [N, L] (W),
        ``p_def`` [N, J] (W), ``e`` [N+1] (J, ``e[0]`` is the initial energy), slacks ``s_e``
        [N, 2] (J), ``s_def`` [J] (J), ``s_res`` [N] (J) and ``reserve_j`` [N] (J, the reserve
        asked for after each step; -inf where none).
    objective_terms : dict of float
        ``import_cost, export_revenue, shedding_cost, cycling_cost, terminal_value`` and
        ``violation_penalty``, ``deferrable_shortfall_cost``, ``reserve_penalty`` [price units];
        objective = import − export + shedding + cycling − terminal + violation + deferrable
        shortfall + reserve penalty.
    p_deferrable_w : float
        First-step power to the deferrable load for the jobs [W] (>= 0).
    deferrable_w : ndarray, shape [J']
        First-step delivery per job passed to the solve [W].
    binding : list of str
        Constraints holding at a bound, ``'<name>[t0:t1]'`` (see :meth:`QpModel.binding`).
    soft_violations : list of str
        Soft constraints the plan violates because nothing better was possible:
        ``storage_energy_min``, ``storage_energy_max``, ``deferrable_energy``, ``reserve``.
    reason : str
        Why a fallback happened or which soft constraints were violated ('' if neither).
    scenario_objectives : list of float
        With scenarios (:mod:`picogrid.edge.stochastic`): each scenario's plan cost [price
        units], in the order of ``MpcConfig.plan_weights`` (the ``S`` quantile scenarios, then
        the ``K`` error scenarios); ``objective`` is their weighted mean and ``plan`` the plan
        of the most probable quantile scenario (the median one), whatever the error
        scenarios weigh. Empty otherwise.
    """

    status: str
    solve_time_s: float
    iterations: int
    objective: float
    p_storage_w: float
    p_grid_w: float
    pv_cap_w: float
    load_served_w: np.ndarray
    plan: dict = field(default_factory=dict)
    objective_terms: dict = field(default_factory=dict)
    p_deferrable_w: float = 0.0
    deferrable_w: np.ndarray = field(default_factory=lambda: np.zeros(0))
    binding: list = field(default_factory=list)
    soft_violations: list = field(default_factory=list)
    reason: str = ""
    scenario_objectives: list = field(default_factory=list)

    @property
    def ok(self):
        """True when the decision comes from the optimiser (any ``solved*`` status)."""
        return self.status.startswith("solved")


class _Layout:
    """Named blocks of consecutive indices (columns or rows), each of shape [N] or [N, k]."""

    def __init__(self):
        self.blocks = {}
        self.size = 0

    def add(self, name, shape):
        n = int(np.prod(shape))
        self.blocks[name] = np.arange(self.size, self.size + n).reshape(shape)
        self.size += n
        return self.blocks[name]

    def __getitem__(self, name):
        return self.blocks[name]

    def shift_index(self):
        """Index array mapping each position to its source one step later (last step repeated)."""
        idx = np.arange(self.size)
        for block in self.blocks.values():
            src = np.concatenate([block[1:], block[-1:]], axis=0)
            idx[block.ravel()] = src.ravel()
        return idx


class QpModel:
    """The scaled QP ``min ½xᵀPx + qᵀx  s.t.  l <= Ax <= u`` for one :class:`MpcConfig`.

    Variables are scaled internally: powers by ``p_scale_w`` (the largest configured power
    limit), energies by ``e_scale_j`` (``e_max_j``) and the objective by
    ``dt_s * p_scale_w * price_ref_per_j``, so that a 5 W bench and a 5 kW site give the
    solver the same numbers. Only :meth:`vectors` depends on the tick's data.

    Column blocks: ``p_ch, p_dis, p_imp, p_exp, p_pv`` [N], ``p_load`` [N, L], ``p_def``
    [N, J] (deferrable delivery per job), ``e`` [N] (stored energy after each step), ``s_e``
    [N, 2] (energy-bound slacks), ``s_def`` [1, J] (undelivered job energy) and, with the
    reserve on, ``s_res`` [N] (shortfall below the reserve). Row blocks: ``balance``,
    ``dynamics``, ``energy``, ``dis_energy`` (finite ``p_dis_per_e_max_per_s``),
    ``def_power`` (J > 0), ``def_energy`` (J > 0), ``reserve`` (reserve on) and one
    ``bound_<column block>`` identity block per bounded column block.

    Parameters
    ----------
    cfg : MpcConfig
    """

    def __init__(self, cfg):
        self.cfg = cfg
        n, nl, nj = cfg.horizon, cfg.n_loads, int(cfg.n_jobs)
        self.p_scale_w = max(cfg.p_ch_max_w, cfg.p_dis_max_w, cfg.p_imp_max_w, cfg.p_exp_max_w,
                             cfg.p_def_max_w) or 1.0
        self.e_scale_j = cfg.e_max_j
        self.price_ref_per_j = cfg.price_ref_per_j or max(max(cfg.voll_per_j), 1e-9)
        self.cost_unit = cfg.dt_s * self.p_scale_w * self.price_ref_per_j
        # deferrable job energy rows are in units of one step at full scale power
        self.def_unit_j = cfg.dt_s * self.p_scale_w
        # Slack column scale factors (1 = energy units). Scaling them so their cost entries are
        # ~1 tightens OSQP's relative dual tolerance (eps_rel * ||q||_inf, dominated by the exact
        # penalty) but made slacks that must be used (e0 below e_min in an outage) hit the
        # iteration cap; measured with tools/bench_mpc.py and the hypothesis tests, so kept at 1.
        self.slack_scale = {"s_e": 1.0, "s_def": 1.0, "s_res": 1.0}

        cols = _Layout()
        for name in _POWER_BLOCKS:
            cols.add(name, (n,))
        cols.add("p_load", (n, nl))
        if nj:
            cols.add("p_def", (n, nj))
        cols.add("e", (n,))          # e[t+1], t = 0..N-1 [scaled J]
        cols.add("s_e", (n, 2))      # energy-bound slacks: below e_min, above e_max
        if nj:
            cols.add("s_def", (1, nj))
        if cfg.reserve:
            cols.add("s_res", (n,))
        self.cols = cols

        rows = _Layout()
        ri, ci, vi = [], [], []

        def put(r, c, v):
            r, c = np.broadcast_arrays(np.asarray(r), np.asarray(c))
            ri.append(r.ravel())
            ci.append(c.ravel())
            vi.append(np.broadcast_to(v, r.shape).ravel().astype(float))

        # Bus balance: pv + dis + imp - ch - exp - sum(load) - sum(def) = 0 (units of p_scale).
        bal = rows.add("balance", (n,))
        for name, sign in (("p_pv", 1), ("p_dis", 1), ("p_imp", 1), ("p_ch", -1), ("p_exp", -1)):
            put(bal, cols[name], sign)
        put(bal[:, None], cols["p_load"], -1.0)
        if nj:
            put(bal[:, None], cols["p_def"], -1.0)
        # Dynamics: e[t+1] - e[t] - k*(eta_ch*ch - dis/eta_dis) = e0 (t=0) or 0.
        k = cfg.dt_s * self.p_scale_w / self.e_scale_j
        dyn = rows.add("dynamics", (n,))
        put(dyn, cols["e"], 1.0)
        put(dyn[1:], cols["e"][:-1], -1.0)
        put(dyn, cols["p_ch"], -k * cfg.eta_ch)
        put(dyn, cols["p_dis"], k / cfg.eta_dis)
        # Soft energy bounds: e_min <= e + s_lo - s_hi <= e_max.
        soft = rows.add("energy", (n,))
        put(soft, cols["e"], 1.0)
        put(soft, cols["s_e"][:, 0], 1.0 / self.slack_scale["s_e"])
        put(soft, cols["s_e"][:, 1], -1.0 / self.slack_scale["s_e"])
        if math.isfinite(cfg.p_dis_per_e_max_per_s):
            # Discharge within the ESR-loss limit of the energy at the step's start:
            # dis[t] - r*e[t] <= 0 (t >= 1), dis[0] <= r*e0.
            de_rows = rows.add("dis_energy", (n,))
            put(de_rows, cols["p_dis"], 1.0)
            ratio = cfg.p_dis_per_e_max_per_s * self.e_scale_j / self.p_scale_w   # scaled units
            put(de_rows[1:], cols["e"][:-1], -ratio)
        if nj:
            # Deferrable load: total delivery <= its headroom; each job's energy within the
            # horizon + undelivered slack >= the energy it still needs.
            dp = rows.add("def_power", (n,))
            put(dp[:, None], cols["p_def"], 1.0)
            de = rows.add("def_energy", (1, nj))
            put(np.broadcast_to(de, (n, nj)), cols["p_def"], 1.0)
            put(de, cols["s_def"], 1.0 / self.slack_scale["s_def"])
        if cfg.reserve:
            res = rows.add("reserve", (n,))
            put(res, cols["e"], 1.0)
            put(res, cols["s_res"], 1.0 / self.slack_scale["s_res"])
        # Variable bounds (identity rows) for every column except the free energy state.
        for name in cols.blocks:
            if name != "e":
                r = rows.add("bound_" + name, cols[name].shape)
                put(r, cols[name], 1.0)
        self.rows = rows

        self.A = sp.csc_matrix(
            (np.concatenate(vi), (np.concatenate(ri), np.concatenate(ci))), shape=(rows.size, cols.size))
        # Strictly convex: a tiny weight on every column (upper triangle only, as OSQP wants).
        self.P = sp.diags(np.full(cols.size, float(cfg.reg_rel)), format="csc")
        self.x_shift = cols.shift_index()
        self.y_shift = rows.shift_index()

    @property
    def n(self):
        return self.cols.size

    @property
    def m(self):
        return self.rows.size

    def penalty_per_j(self, import_price_per_j, export_price_per_j):
        """Exact-penalty weight on energy-bound violation for these prices [price/J]."""
        cfg = self.cfg
        if cfg.soft_penalty_per_j is not None:
            return cfg.soft_penalty_per_j
        top = max(np.max(np.abs(import_price_per_j)), np.max(np.abs(export_price_per_j)),
                  max(cfg.voll_per_j), cfg.terminal_value_per_j, cfg.voll_def_per_j,
                  self.reserve_penalty_per_j) + 2 * cfg.cycle_cost_per_j
        return _PENALTY_FACTOR * max(top, 1e-9) / (cfg.eta_ch * cfg.eta_dis)

    @property
    def reserve_penalty_per_j(self):
        """Price of one J below the reserve for one step [price/J] (0 with the reserve off)."""
        cfg = self.cfg
        if not cfg.reserve:
            return 0.0
        return max(cfg.voll_per_j) if cfg.reserve_penalty_per_j is None else cfg.reserve_penalty_per_j

    def vectors(self, e0_j, pv_avail_w, demand_w, import_price_per_j, export_price_per_j,
                p_imp_max_w, p_exp_max_w, jobs=None, p_def_max_w=None, reserve_j=None):
        """Return ``(q, l, u)`` of the scaled QP for one tick's data (arrays already validated).

        Shapes: ``pv_avail_w, import/export price, p_imp/exp_max_w, p_def_max_w`` [N],
        ``demand_w`` [N, L], ``jobs`` [J', 3] rows ``(start, end, energy_j)`` with J' <= J,
        ``reserve_j`` [N] stored energy to keep after each step [J] (``None``: no reserve);
        units as in :meth:`MpcController.solve`.
        """
        cfg, cols, rows = self.cfg, self.cols, self.rows
        n = cfg.horizon
        ps, es, cu = self.p_scale_w, self.e_scale_j, self.cost_unit
        q = np.zeros(self.n)
        q[cols["p_imp"]] = import_price_per_j * cfg.dt_s * ps / cu
        q[cols["p_exp"]] = -export_price_per_j * cfg.dt_s * ps / cu
        q[cols["p_ch"]] = cfg.cycle_cost_per_j * cfg.dt_s * ps / cu
        q[cols["p_dis"]] = cfg.cycle_cost_per_j * cfg.dt_s * ps / cu
        q[cols["p_load"]] = -np.asarray(cfg.voll_per_j)[None, :] * cfg.dt_s * ps / cu
        q[cols["e"][-1]] = -cfg.terminal_value_per_j * es / cu
        q[cols["s_e"]] = (self.penalty_per_j(import_price_per_j, export_price_per_j) * es / cu
                          / self.slack_scale["s_e"])

        l = np.zeros(self.m)
        u = np.zeros(self.m)
        l[rows["dynamics"][0]] = u[rows["dynamics"][0]] = e0_j / es
        l[rows["energy"]] = cfg.e_min_j / es
        u[rows["energy"]] = cfg.e_max_j / es
        if "dis_energy" in rows.blocks:
            l[rows["dis_energy"]] = -np.inf
            u[rows["dis_energy"][0]] = cfg.p_dis_per_e_max_per_s * max(e0_j, 0.0) / ps
        u[rows["bound_p_ch"]] = cfg.p_ch_max_w / ps
        u[rows["bound_p_dis"]] = cfg.p_dis_max_w / ps
        u[rows["bound_p_imp"]] = p_imp_max_w / ps
        u[rows["bound_p_exp"]] = p_exp_max_w / ps
        u[rows["bound_p_pv"]] = pv_avail_w / ps
        u[rows["bound_p_load"]] = demand_w / ps
        u[rows["bound_s_e"]] = np.inf
        if cfg.n_jobs:
            def_max = np.full(n, cfg.p_def_max_w) if p_def_max_w is None else p_def_max_w
            q[cols["s_def"]] = cfg.voll_def_per_j * self.def_unit_j / cu / self.slack_scale["s_def"]
            u[rows["def_power"]] = def_max / ps
            l[rows["def_energy"]] = 0.0
            u[rows["def_energy"]] = np.inf
            u[rows["bound_s_def"]] = np.inf
            window = np.zeros((n, cfg.n_jobs))
            steps = np.arange(n)
            for j, (start, end, energy_j) in enumerate(np.zeros((0, 3)) if jobs is None else jobs):
                inside = (steps >= start) & (steps < end)
                window[:, j] = inside
                # energy that can still go in after the horizon is not required within it
                later_j = max(end - n, 0) * cfg.dt_s * float(np.max(def_max))
                l[rows["def_energy"][0, j]] = max(energy_j - later_j, 0.0) / self.def_unit_j
            u[rows["bound_p_def"]] = window * def_max[:, None] / ps
        if cfg.reserve:
            q[cols["s_res"]] = self.reserve_penalty_per_j * es / cu / self.slack_scale["s_res"]
            l[rows["reserve"]] = -np.inf if reserve_j is None else reserve_j / es
            u[rows["reserve"]] = np.inf
            u[rows["bound_s_res"]] = np.inf
        return q, l, u

    def unscale(self, x, e0_j):
        """Split a scaled solution vector into the plan dict of :class:`Decision` (SI units).

        Slacks are read from their columns as the solver left them (ADMM noise of either sign
        at tolerance level): clipping them, or recomputing them from the energies, would charge
        tolerance-level noise at the exact-penalty price (10x the top price per J and step),
        which measurably biased the plan objective (tests/test_optimize.py).
        """
        cfg, cols = self.cfg, self.cols
        names = [*_POWER_BLOCKS, "p_load"] + (["p_def"] if "p_def" in cols.blocks else [])
        plan = {name: x[cols[name]] * self.p_scale_w for name in names}
        if "p_def" not in plan:
            plan["p_def"] = np.zeros((cfg.horizon, 0))
        plan["e"] = np.concatenate([[e0_j], x[cols["e"]] * self.e_scale_j])
        sc = self.slack_scale
        plan["s_e"] = x[cols["s_e"]] * self.e_scale_j / sc["s_e"]
        plan["s_def"] = (x[cols["s_def"]][0] * self.def_unit_j / sc["s_def"] if "s_def" in cols.blocks
                         else np.zeros(0))
        plan["s_res"] = (x[cols["s_res"]] * self.e_scale_j / sc["s_res"] if "s_res" in cols.blocks
                         else np.zeros(cfg.horizon))
        return plan

    def objective_terms(self, plan, demand_w, import_price_per_j, export_price_per_j):
        """Objective terms of a plan in price units (no regularisation); see :class:`Decision`."""
        cfg = self.cfg
        dt = cfg.dt_s
        voll = np.asarray(cfg.voll_per_j)
        terms = {
            "import_cost": float(dt * np.sum(import_price_per_j * plan["p_imp"])),
            "export_revenue": float(dt * np.sum(export_price_per_j * plan["p_exp"])),
            "shedding_cost": float(dt * np.sum(voll[None, :] * (demand_w - plan["p_load"]))),
            "cycling_cost": float(dt * cfg.cycle_cost_per_j * np.sum(plan["p_ch"] + plan["p_dis"])),
            "terminal_value": float(cfg.terminal_value_per_j * plan["e"][-1]),
            "violation_penalty": float(self.penalty_per_j(import_price_per_j, export_price_per_j)
                                       * np.sum(plan["s_e"])),
            "deferrable_shortfall_cost": float(cfg.voll_def_per_j * np.sum(plan["s_def"])),
            "reserve_penalty": float(self.reserve_penalty_per_j * np.sum(plan["s_res"])),
        }
        objective = (terms["import_cost"] - terms["export_revenue"] + terms["shedding_cost"]
                     + terms["cycling_cost"] - terms["terminal_value"] + terms["violation_penalty"]
                     + terms["deferrable_shortfall_cost"] + terms["reserve_penalty"])
        return objective, terms

    def binding(self, x, l, u, rel=1e-4):
        """Names of the constraints a scaled solution ``x`` holds at a bound.

        Returns ``['<name>[t0:t1]', ...]``: for each constraint group, the first run of steps
        where it binds (``t1`` exclusive). Groups: ``storage_energy_min/max``,
        ``storage_charge_max``, ``storage_discharge_max``, ``storage_discharge_energy_limited``
        (the ESR-loss limit ``p_dis_per_e_max_per_s``), ``grid_import_max``,
        ``grid_export_max``, ``pv_curtailed`` (used PV below what is available),
        ``load<k>_shed`` (load k served below its demand), ``deferrable_power_max``, ``reserve``.
        """
        ax = self.A @ x
        rows, cols = self.rows, self.cols
        out = []

        def add(name, mask):
            mask = np.asarray(mask, bool).ravel()
            if mask.any():
                t0 = int(np.argmax(mask))
                t1 = t0 + int(np.argmin(mask[t0:])) if not mask[t0:].all() else mask.size
                out.append(f"{name}[{t0}:{t1}]")

        def at_hi(block):
            r = rows[block]
            return (np.abs(ax[r] - u[r]) <= rel) & (u[r] > l[r] + rel)

        def at_lo(block):
            r = rows[block]
            return (np.abs(ax[r] - l[r]) <= rel) & (u[r] > l[r] + rel)

        add("storage_energy_min", at_lo("energy"))
        add("storage_energy_max", at_hi("energy"))
        add("storage_charge_max", at_hi("bound_p_ch") & (u[rows["bound_p_ch"]] > rel))
        add("storage_discharge_max", at_hi("bound_p_dis") & (u[rows["bound_p_dis"]] > rel))
        if "dis_energy" in rows.blocks:
            add("storage_discharge_energy_limited", at_hi("dis_energy"))
        add("grid_import_max", at_hi("bound_p_imp"))
        add("grid_export_max", at_hi("bound_p_exp"))
        add("pv_curtailed", u[rows["bound_p_pv"]] - x[cols["p_pv"]] > rel)
        r = rows["bound_p_load"]
        for k in range(self.cfg.n_loads):
            add(f"load{k + 1}_shed", u[r[:, k]] - x[cols["p_load"][:, k]] > rel)
        if "def_power" in rows.blocks:
            add("deferrable_power_max", at_hi("def_power") & (u[rows["def_power"]] > rel))
        if "reserve" in rows.blocks:
            add("reserve", at_lo("reserve"))
        return out


def build_model(cfg):
    """Build the fixed-sparsity scaled QP for ``cfg`` (see :class:`QpModel`)."""
    return QpModel(cfg)


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
    padded = np.concatenate([deficit, np.full(h + 1, deficit[-1])])
    csum = np.concatenate([[0.0], np.cumsum(padded)])
    t = np.arange(n)
    need_j = cfg.dt_s * (csum[t + 1 + h] - csum[t + 1])
    reserve = np.minimum(cfg.e_min_j + need_j / cfg.eta_dis, cfg.e_max_j)
    return np.where(np.asarray(p_imp_max_w, float) > 0, reserve, -np.inf)


class MpcController:
    """Receding-horizon controller: one OSQP solver set up once, updated every tick.

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
        from . import policies  # policies imports this module for the model; import late

        self._naive_step = policies.naive_step
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
                np.full(n, self.model.price_ref_per_j), np.zeros(n),
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

    def reset(self):
        """Forget the previous solution and simplex basis: the next solve starts cold."""
        self._x_prev = self._y_prev = None
        self._ticks_since_prev = 1
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
            :func:`picogrid.edge.policies.naive_step` on the first step's data (the reason is
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
        if cfg.reserve:
            r_dem = demand if reserve_demand_w is None else validate_inputs(
                cfg, pv, reserve_demand_w, c_imp, c_exp)[1]
            r_pv = pv if reserve_pv_w is None else _as_series("reserve_pv_w", reserve_pv_w, n)
            arrays += [("reserve_demand_w", r_dem), ("reserve_pv_w", r_pv)]
        scen = self._scenario_inputs(scenarios, pv, demand, c_imp, c_exp)
        arrays += [(f"scenarios[{k}]", a) for k, sc in enumerate(scen) for a in sc]
        bad = [name for name, a in arrays if not np.all(np.isfinite(a))]
        if bad:
            self._ticks_since_prev += 1   # the next warm start is one more tick old
            return self._fallback(f"non-finite input ({', '.join(bad)})", t0, e0_j, pv, demand,
                                  imp_max, exp_max, job_arr, def_max)
        # Negative availabilities or limits are data errors the solver would call infeasible.
        pv, demand = np.maximum(pv, 0.0), np.maximum(demand, 0.0)
        imp_max, exp_max = np.maximum(imp_max, 0.0), np.maximum(exp_max, 0.0)
        def_max = np.maximum(def_max, 0.0)
        if cfg.reserve:
            reserve = reserve_energy_j(cfg, np.maximum(r_dem, 0.0), np.maximum(r_pv, 0.0), imp_max)
        try:
            scen = [(np.maximum(a, 0.0), np.maximum(b, 0.0), c, d)
                    for a, b, c, d in scen or [(pv, demand, c_imp, c_exp)]]
            vecs = [self.model.vectors(e0_j, a, b, c, d, imp_max, exp_max, job_arr, def_max, reserve)
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
                self.reset()
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
            obj_s, terms_s = self.model.objective_terms(p, dem_s, imp_s, exp_s)
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
        p_def_jobs[p_def_jobs < snap_w] = 0.0
        p_def = float(p_def_jobs.sum())
        p_storage = float(plan["p_dis"][0] - plan["p_ch"][0])
        p_grid = float(np.clip(served.sum() + p_def - pv_cap - p_storage, -exp_max[0], imp_max[0]))
        soft = self._soft_violations(plan)
        reason = note
        if soft:
            reason = "; ".join(filter(None, [note, "soft constraints violated: " + ", ".join(soft)]))
            log.warning("MPC plan soft constraints violated: %s", ", ".join(soft))
        return Decision(
            status=status, solve_time_s=time.perf_counter() - t0, iterations=iterations,
            objective=objective, p_storage_w=p_storage, p_grid_w=p_grid, pv_cap_w=pv_cap,
            load_served_w=served, plan=plan, objective_terms=terms, p_deferrable_w=p_def,
            deferrable_w=p_def_jobs, binding=self.model.binding(xs[main], *vecs[main][1:]),
            soft_violations=soft, reason=reason,
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
        d = self._naive_step(e0_j, pv0, demand0, self.config, p_imp_max_w=imp0, p_exp_max_w=exp0,
                             deferrable_w=float(want.sum()))
        if want.sum() > 0:
            d.deferrable_w = want * (d.p_deferrable_w / want.sum())
        else:
            d.deferrable_w = want
        d.status = "fallback:" + reason
        d.reason = reason
        d.solve_time_s = time.perf_counter() - t0
        return d


def config_from_site(site):
    """Build the :class:`MpcConfig` of a parsed site TOML (``edge/sites/*.toml``).

    Reads ``[bench]`` (``horizon``, ``tick_s``), ``[storage]`` (either ``capacitance_f`` +
    ``voltage_min_v``/``voltage_max_v`` for a supercapacitor, ½CV², or ``energy_min_j``/
    ``energy_max_j``; ``power_max_w`` or ``charge_power_max_w``/``discharge_power_max_w``;
    ``efficiency_charge``/``efficiency_discharge``; optional ``esr_loss_max``, the ESR's largest
    share of the discharge power, with ``esr_ohm`` and ``capacitance_f``), ``[grid]`` (``import_max_w``,
    ``export_max_w``), ``[loads]`` (``voll_per_j`` per priority class, the priority of each
    ``[boards.loadK]``), ``[optimizer]`` (``cycle_cost_per_j``, ``terminal_value_per_j`` and
    any other :class:`MpcConfig` field, e.g. ``eps_abs``) and the optional ``[deferrable]``
    (``n_jobs`` [0], ``power_max_w`` [0 W], ``voll_per_j`` [lowest VOLL]) and ``[reserve]`` (``enabled`` [false], ``duration_s`` [3600 s],
    ``penalty_per_j`` [highest VOLL]) sections. Absent optional keys take these defaults, so
    a site file without them gives the same config as before they existed.

    Parameters
    ----------
    site : dict
        Parsed TOML (``tomllib.load``).

    Returns
    -------
    MpcConfig

    Raises
    ------
    ValueError
        On a missing section/key, an unknown ``[optimizer]`` key or an invalid value.
    """
    try:
        b, st, g, ld, opt = (site[s] for s in ("bench", "storage", "grid", "loads", "optimizer"))
        loads = sorted((name for name in site["boards"] if name.startswith("load")),
                       key=lambda s: int(s[4:]) if s[4:].isdigit() else 0)
        voll = ld["voll_per_j"]
        classes = [site["boards"][name].get("priority", "normal") for name in loads]
        if "capacitance_f" in st:
            c = float(st["capacitance_f"])
            e_min, e_max = (0.5 * c * float(st[k]) ** 2 for k in ("voltage_min_v", "voltage_max_v"))
        else:
            e_min, e_max = float(st["energy_min_j"]), float(st["energy_max_j"])
        p_ch = float(st.get("charge_power_max_w", st.get("power_max_w")))
        p_dis = float(st.get("discharge_power_max_w", st.get("power_max_w")))
        dis_per_e = math.inf
        if "esr_loss_max" in st:    # P <= 2 f E / (R C): ESR loss share f at the open-circuit voltage
            rc_s = float(st["esr_ohm"]) * float(st["capacitance_f"])
            dis_per_e = 2.0 * float(st["esr_loss_max"]) / rc_s
        d = dict(horizon=int(b["horizon"]), dt_s=float(b["tick_s"]), e_min_j=e_min, e_max_j=e_max,
                 p_ch_max_w=p_ch, p_dis_max_w=p_dis, p_dis_per_e_max_per_s=dis_per_e,
                 eta_ch=float(st["efficiency_charge"]),
                 eta_dis=float(st["efficiency_discharge"]), p_imp_max_w=float(g["import_max_w"]),
                 p_exp_max_w=float(g["export_max_w"]), n_loads=len(loads),
                 voll_per_j=tuple(float(voll[p]) for p in classes))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"site file lacks or mistypes {exc}") from exc
    d.update({k: v for k, v in opt.items()})
    dfr = site.get("deferrable", {})
    d["n_jobs"] = int(dfr.get("n_jobs", 0))
    d["p_def_max_w"] = float(dfr.get("power_max_w", 0.0))
    if "voll_per_j" in dfr:
        d["voll_deferrable_per_j"] = float(dfr["voll_per_j"])
    res = site.get("reserve", {})
    d["reserve"] = bool(res.get("enabled", False))
    d["reserve_duration_s"] = float(res.get("duration_s", 3600.0))
    if "penalty_per_j" in res:
        d["reserve_penalty_per_j"] = float(res["penalty_per_j"])
    return MpcConfig.from_dict(d)


def _first_finite(x):
    finite = x[np.isfinite(x)]
    return max(float(finite[0]), 0.0) if finite.size else 0.0
