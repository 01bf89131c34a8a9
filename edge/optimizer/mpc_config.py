"""Configuration of the receding-horizon problem: :class:`MpcConfig` and how a site file sets it.

:class:`MpcConfig` holds every number of the model of docs/design.md §4 (horizon, storage, grid,
loads and their values of lost load, deferrable jobs, reserve, scenarios, solver settings) and
checks them once, at construction; :func:`config_from_site` builds it from a parsed site TOML
(``edge/sites/*.toml``) of either profile, the lab bench (J, W, 2.5 s steps) or a site (kWh,
kW, 5-minute steps), converted to SI units. The model itself is :mod:`picogrid.edge.optimizer.qp_model`,
the controller that solves it every tick :mod:`picogrid.edge.optimizer.optimize`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np


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
        ``'osqp'`` (default, docs/design.md §4): OSQP every tick, and the same problem as an exact
        LP (:class:`picogrid.edge.optimizer.simplex.WarmSimplex`, status ``'solved_exact'``) for a tick
        OSQP ends unsolved. ``'highs'``: the exact LP every tick.
    cold_start_exact : bool
        With ``solver='osqp'``, solve a cold tick (the first, or the first after
        :meth:`picogrid.edge.optimizer.optimize.MpcController.reset`) as the exact LP within ``cold_time_limit_s`` and
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
        Penalty per J of energy-bound violation per step [price/J]. ``None`` (default) picks,
        in each solve, 10 × (the largest per-J price, value of lost load (deferrable too),
        terminal value or reserve penalty, + 2 × cycling cost) / (eta_ch × eta_dis): above any
        marginal value of stored energy, so the penalty is exact (violations only when
        unavoidable).
    price_ref_per_j : float or None
        Price used to scale the objective internally [price/J]; ``None`` uses ``max(voll_per_j)``.
    price_scale_per_j : float or None
        The source price scale (mean import price over a plan's window) that the values of lost
        load, terminal value, cycling cost and penalties above are stated for [price/J] (> 0).
        Each solve rescales them to the window's own scale (:func:`picogrid.edge.optimizer.economics.resolve`),
        so a site tuned on one price scale plans alike on any other. ``None``: the values are
        absolute. Either way every value of lost load is kept above the window's prices.
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
        form of :mod:`picogrid.edge.forecasting.scenarios` (one plan per scenario, shared first steps;
        ``S`` times the QP size). ``None`` or one weight: plan on the expected forecast only.
    scenario_quantiles : tuple of float or None
        Forecast quantile each scenario is built from (demand and price at ``q``, PV at
        ``1 - q``), one per weight; e.g. ``(0.1, 0.5, 0.9)`` with weights ``(0.3, 0.4, 0.3)``,
        the extended Swanson–Megill approximation. Read by the forecast side, not the solver.
    scenario_spread : float
        Share of each scenario quantile's distance from the median kept (> 0); see
        :func:`picogrid.edge.forecasting.scenarios.quantile_scenarios`. Forecast side too.
    scenario_shared_steps : int
        Steps ``1..N`` whose storage and deferrable powers every scenario shares
        (non-anticipativity): 1 ties only the decision applied now; more keeps a scenario from
        planning on a future it would not know yet when those steps come. Solver side.
    scenario_correlation : float
        Correlation in [0, 1] assumed between the step errors of PV and each load when their
        scenarios are built to match the energy of the coming hours (1: every step at its own
        quantile at once); see :func:`picogrid.edge.forecasting.scenarios.quantile_scenarios`. Forecast side.
    scenario_energy_spread : float or None
        ``None``: PV and load scenarios from ``scenario_correlation``. A number (> 0): their net
        energy over the coming steps at the quantiles of the forecaster's own past errors
        (:mod:`picogrid.edge.forecasting.energy_calibration`), that share of each quantile's distance from
        the median kept (1 = as calibrated). Forecast side; needs the forecaster's calibration
        file, else it warns and keeps the correlation construction.
    error_scenario_days : int
        ``K`` >= 0: with scenarios (ignored without), ``K`` more, each this tick's point forecast plus the error
        the forecast issued at the same tick ``k`` days ago turned out to have, ``k = 1..K``
        (:mod:`picogrid.edge.forecasting.error_scenarios`); 0 = none. Both sides: the forecast side builds
        them, the solver plans ``S + K`` scenarios.
    error_scenario_weight : float
        Their total probability in (0, 1), shared equally; the quantile scenarios keep the rest
        in the proportions of ``scenario_weights`` (:attr:`plan_weights`).
    demand_p90_weight : float
        Where in the demand fan the single (expected-value) plan sits, in [0, 1]: steps 1..N-1
        plan ``mean + w * (P90 - mean)`` per load; 0 plans on the mean. Read by the forecast side
        (:func:`picogrid.edge.forecasting.scenarios.forecast_inputs`), not the solver; scenarios, when on,
        carry the fan themselves. Why: a joule of PV stored that the evening then does not need
        loses about the export price less the terminal value, one that is missing costs the
        import price, so a plan on the mean stores too little on days the demand forecast falls
        short (measured: docs/results-log.md).
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
    price_scale_per_j: float | None = None
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
        if not (math.isfinite(self.dt_s) and self.dt_s > 0):
            problems.append(f"dt_s must be finite and > 0, got {self.dt_s!r}")
        if not (0 <= self.e_min_j < self.e_max_j and math.isfinite(self.e_max_j)):
            problems.append(f"need 0 <= e_min_j < e_max_j, both finite, got {self.e_min_j!r}, {self.e_max_j!r}")
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
        for name in ("soft_penalty_per_j", "price_ref_per_j", "price_scale_per_j"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                problems.append(f"{name} must be None or finite and > 0, got {v!r}")
        if int(self.n_jobs) != self.n_jobs or self.n_jobs < 0:
            problems.append(f"n_jobs must be an integer >= 0, got {self.n_jobs!r}")
        if not (math.isfinite(self.p_def_max_w) and self.p_def_max_w >= 0):
            problems.append(f"p_def_max_w must be finite and >= 0, got {self.p_def_max_w!r}")
        for name in ("voll_deferrable_per_j", "reserve_penalty_per_j"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                problems.append(f"{name} must be None or finite and >= 0, got {v!r}")
        if not (math.isfinite(self.reserve_duration_s) and self.reserve_duration_s > 0):
            problems.append(f"reserve_duration_s must be finite and > 0, got {self.reserve_duration_s!r}")
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
        if self.scenario_weights is not None and len(self.scenario_weights) > 1 \
                and self.scenario_quantiles is None:
            problems.append("scenario_weights of several scenarios need scenario_quantiles (one per "
                            "weight): without them every scenario is the same forecast")
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


def config_from_site(site):
    """Build the :class:`MpcConfig` of a parsed site TOML (``edge/sites/*.toml``).

    Reads ``[bench]`` (``horizon``, ``tick_s``), ``[storage]`` (either ``capacitance_f`` +
    ``voltage_min_v``/``voltage_max_v`` for a supercapacitor, ½CV², or ``energy_min_j``/
    ``energy_max_j``; ``power_max_w`` or ``charge_power_max_w``/``discharge_power_max_w``;
    ``efficiency_charge``/``efficiency_discharge``; optional ``esr_loss_max``, the ESR's largest
    share of the discharge power, with ``esr_ohm`` and ``capacitance_f``), ``[grid]`` (``import_max_w``,
    ``export_max_w``), ``[loads]`` (``voll_per_j`` per priority class, the priority of each
    ``[boards.loadK]``), ``[optimizer]`` (``cycle_cost_per_j``, ``terminal_value_per_j`` and
    any other :class:`MpcConfig` field, e.g. ``eps_abs``, except those the two sections below
    own) and the optional ``[deferrable]``
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
        On a missing section/key, an unknown ``[optimizer]`` key, an ``[optimizer]`` key that
        belongs to ``[deferrable]`` or ``[reserve]``, or an invalid value.
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
    # these fields have their own sections: set in [optimizer] they would be overwritten
    owned = {"n_jobs": "[deferrable] n_jobs", "p_def_max_w": "[deferrable] power_max_w",
             "voll_deferrable_per_j": "[deferrable] voll_per_j", "reserve": "[reserve] enabled",
             "reserve_duration_s": "[reserve] duration_s", "reserve_penalty_per_j": "[reserve] penalty_per_j"}
    misplaced = [f"{k} (set {owned[k]})" for k in opt if k in owned]
    if misplaced:
        raise ValueError("[optimizer] must not set " + ", ".join(misplaced))
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
