"""Receding-horizon dispatch of the DC microgrid as one OSQP quadratic programme.

The model (DESIGN.md §4): per step ``t`` of ``dt_s`` seconds over a horizon of ``N`` steps,
storage charge/discharge power, grid import/export, used PV (after curtailment) and the power
served to each of ``L`` loads, with the stored energy as a state. Constraints are the DC bus
power balance, the storage energy dynamics with charge/discharge efficiencies, power limits,
time-varying grid limits (zero bounds = outage, islanded operation) and energy limits made soft
by an exact L1 penalty, so the problem is feasible from any initial energy. The objective is
import cost − export revenue + value of lost load × shed energy + cycling cost − terminal value
of the stored energy, plus a tiny quadratic regularisation that makes the QP strictly convex.

The QP is built once (fixed sparsity, :func:`build_model`) and each tick only ``q``, ``l`` and
``u`` change, warm-started from the previous solution shifted by one step, following the OSQP
MPC example (Stellato et al., "OSQP: an operator splitting solver for quadratic programs",
Math. Prog. Comp. 12, 2020; https://osqp.org/docs/examples/mpc.html). A non-solved status,
an exception or a non-finite input gives the rule-based fallback of :mod:`picogrid.edge.policies`.

Sign convention (project-wide): power into the DC bus is positive, so ``p_storage_w`` > 0 is
discharge and ``p_grid_w`` > 0 is import; served/demand powers of loads are positive numbers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import osqp
import scipy.sparse as sp

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
        OSQP iteration cap. This LP-like problem can need a few thousand ADMM iterations
        from a cold start when prices and values of lost load nearly tie; ``time_limit_s`` bounds
        the wall time anyway.
    time_limit_s : float
        OSQP wall-clock limit per solve [s] (> 0).
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
    cycle_cost_per_j: float = 0.0
    terminal_value_per_j: float = 0.0
    eps_abs: float = 1e-4
    eps_rel: float = 1e-4
    max_iter: int = 10000
    time_limit_s: float = 0.5
    polish: bool = False
    reg_rel: float = 1e-6
    soft_penalty_per_j: float | None = None
    price_ref_per_j: float | None = None

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
        if len(self.voll_per_j) != self.n_loads:
            problems.append(f"voll_per_j has {len(self.voll_per_j)} values for n_loads={self.n_loads}")
        if any(not (math.isfinite(v) and v >= 0) for v in self.voll_per_j):
            problems.append(f"voll_per_j must be finite and >= 0, got {self.voll_per_j!r}")
        for name in ("eps_abs", "eps_rel", "time_limit_s"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_iter < 1:
            problems.append(f"max_iter must be >= 1, got {self.max_iter!r}")
        for name in ("soft_penalty_per_j", "price_ref_per_j"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                problems.append(f"{name} must be None or > 0, got {v!r}")
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

    def replace(self, **changes):
        """Return a copy with some fields changed (e.g. ``horizon`` for a whole-day solve)."""
        return dataclasses.replace(self, **changes)


@dataclass
class Decision:
    """Setpoints for the current step plus the plan behind them.

    Attributes
    ----------
    status : str
        ``'solved'``, ``'solved_inaccurate'``, ``'fallback:<reason>'`` or ``'naive'``.
    solve_time_s : float
        Wall time of the solve or fallback [s].
    iterations : int
        OSQP iterations (0 for rule-based decisions).
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
        ``e`` [N+1] (J, ``e[0]`` is the initial energy).
    objective_terms : dict of float
        ``import_cost, export_revenue, shedding_cost, cycling_cost, terminal_value`` and
        ``violation_penalty`` [price units]; objective = import − export + shedding + cycling
        − terminal + violation.
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

    @property
    def ok(self):
        """True when the decision comes from the optimiser (solved or solved_inaccurate)."""
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

    Parameters
    ----------
    cfg : MpcConfig
    """

    def __init__(self, cfg):
        self.cfg = cfg
        n, nl = cfg.horizon, cfg.n_loads
        self.p_scale_w = max(cfg.p_ch_max_w, cfg.p_dis_max_w, cfg.p_imp_max_w, cfg.p_exp_max_w) or 1.0
        self.e_scale_j = cfg.e_max_j
        self.price_ref_per_j = cfg.price_ref_per_j or max(max(cfg.voll_per_j), 1e-9)
        self.cost_unit = cfg.dt_s * self.p_scale_w * self.price_ref_per_j

        cols = _Layout()
        for name in _POWER_BLOCKS:
            cols.add(name, (n,))
        cols.add("p_load", (n, nl))
        cols.add("e", (n,))          # e[t+1], t = 0..N-1 [scaled J]
        cols.add("s_e", (n, 2))      # energy-bound slacks: below e_min, above e_max
        self.cols = cols

        rows = _Layout()
        ri, ci, vi = [], [], []

        def put(r, c, v):
            r, c = np.broadcast_arrays(np.asarray(r), np.asarray(c))
            ri.append(r.ravel())
            ci.append(c.ravel())
            vi.append(np.broadcast_to(v, r.shape).ravel().astype(float))

        # Bus balance: pv + dis + imp - ch - exp - sum(load) = 0 (all in units of p_scale).
        bal = rows.add("balance", (n,))
        for name, sign in (("p_pv", 1), ("p_dis", 1), ("p_imp", 1), ("p_ch", -1), ("p_exp", -1)):
            put(bal, cols[name], sign)
        put(bal[:, None], cols["p_load"], -1.0)
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
        put(soft, cols["s_e"][:, 0], 1.0)
        put(soft, cols["s_e"][:, 1], -1.0)
        # Variable bounds (identity rows) for every column except the free energy state.
        for name in (*_POWER_BLOCKS, "p_load", "s_e"):
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
                  max(cfg.voll_per_j), cfg.terminal_value_per_j) + 2 * cfg.cycle_cost_per_j
        return _PENALTY_FACTOR * max(top, 1e-9) / (cfg.eta_ch * cfg.eta_dis)

    def vectors(self, e0_j, pv_avail_w, demand_w, import_price_per_j, export_price_per_j,
                p_imp_max_w, p_exp_max_w):
        """Return ``(q, l, u)`` of the scaled QP for one tick's data (arrays already validated).

        Shapes: ``pv_avail_w, import/export price, p_imp/exp_max_w`` [N], ``demand_w`` [N, L];
        units as in :meth:`MpcController.solve`.
        """
        cfg, cols, rows = self.cfg, self.cols, self.rows
        ps, es, cu = self.p_scale_w, self.e_scale_j, self.cost_unit
        q = np.zeros(self.n)
        q[cols["p_imp"]] = import_price_per_j * cfg.dt_s * ps / cu
        q[cols["p_exp"]] = -export_price_per_j * cfg.dt_s * ps / cu
        q[cols["p_ch"]] = cfg.cycle_cost_per_j * cfg.dt_s * ps / cu
        q[cols["p_dis"]] = cfg.cycle_cost_per_j * cfg.dt_s * ps / cu
        q[cols["p_load"]] = -np.asarray(cfg.voll_per_j)[None, :] * cfg.dt_s * ps / cu
        q[cols["e"][-1]] = -cfg.terminal_value_per_j * es / cu
        q[cols["s_e"]] = self.penalty_per_j(import_price_per_j, export_price_per_j) * es / cu

        l = np.zeros(self.m)
        u = np.zeros(self.m)
        l[rows["dynamics"][0]] = u[rows["dynamics"][0]] = e0_j / es
        l[rows["energy"]] = cfg.e_min_j / es
        u[rows["energy"]] = cfg.e_max_j / es
        u[rows["bound_p_ch"]] = cfg.p_ch_max_w / ps
        u[rows["bound_p_dis"]] = cfg.p_dis_max_w / ps
        u[rows["bound_p_imp"]] = p_imp_max_w / ps
        u[rows["bound_p_exp"]] = p_exp_max_w / ps
        u[rows["bound_p_pv"]] = pv_avail_w / ps
        u[rows["bound_p_load"]] = demand_w / ps
        u[rows["bound_s_e"]] = np.inf
        return q, l, u

    def unscale(self, x, e0_j):
        """Split a scaled solution vector into the plan dict of :class:`Decision` (SI units)."""
        cols = self.cols
        plan = {name: x[cols[name]] * self.p_scale_w for name in (*_POWER_BLOCKS, "p_load")}
        plan["e"] = np.concatenate([[e0_j], x[cols["e"]] * self.e_scale_j])
        plan["s_e"] = x[cols["s_e"]] * self.e_scale_j
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
        }
        objective = (terms["import_cost"] - terms["export_revenue"] + terms["shedding_cost"]
                     + terms["cycling_cost"] - terms["terminal_value"] + terms["violation_penalty"])
        return objective, terms


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
    >>> d = MpcController(cfg).solve(10.0, [0, 0, 0, 0], [[1], [1], [1], [1]],
    ...                              [1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5])
    >>> d.status, round(d.p_grid_w + d.p_storage_w, 3), round(float(d.load_served_w[0]), 3)
    ('solved', 1.0, 1.0)
    """

    def __init__(self, config):
        from . import policies  # policies imports this module for the model; import late

        self._naive_step = policies.naive_step
        self.config = config
        self.model = build_model(config)
        self._solver = osqp.OSQP()
        n = config.horizon
        q, l, u = self.model.vectors(
            0.5 * (config.e_min_j + config.e_max_j), np.zeros(n), np.zeros((n, config.n_loads)),
            np.full(n, self.model.price_ref_per_j), np.zeros(n),
            np.full(n, config.p_imp_max_w), np.full(n, config.p_exp_max_w))
        self._solver.setup(
            self.model.P, q, self.model.A, l, u, verbose=False, eps_abs=config.eps_abs,
            eps_rel=config.eps_rel, max_iter=int(config.max_iter), time_limit=config.time_limit_s,
            polishing=bool(config.polish), warm_starting=True)
        self._x_prev = None
        self._y_prev = None

    def reset(self):
        """Forget the previous solution: the next solve starts cold from zero."""
        self._x_prev = self._y_prev = None

    def solve(self, e0_j, pv_avail_w, demand_w, import_price_per_j, export_price_per_j,
              p_imp_max_w=None, p_exp_max_w=None):
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

        Returns
        -------
        Decision
            ``status`` is ``'solved'``/``'solved_inaccurate'``, or ``'fallback:<reason>'`` when
            the inputs are not finite, the solver raised or returned a non-solved status, in which
            case the setpoints come from :func:`picogrid.edge.policies.naive_step` on the first
            step's data (the reason is logged at WARNING).

        Raises
        ------
        ValueError
            If an array shape does not match ``(N,)`` or ``(N, L)``.

        Notes
        -----
        Scalars broadcast over the horizon; negative availabilities/limits are read as 0. The
        LP cannot forbid simultaneous import and export (that needs integers): with an export
        price above the import price it will arbitrage up to the grid limits, as the model says.
        """
        t0 = time.perf_counter()
        pv, demand, c_imp, c_exp, imp_max, exp_max = validate_inputs(
            self.config, pv_avail_w, demand_w, import_price_per_j, export_price_per_j,
            p_imp_max_w, p_exp_max_w)
        e0_j = float(e0_j)
        bad = [name for name, a in (("e0_j", e0_j), ("pv_avail_w", pv), ("demand_w", demand),
                                    ("import_price_per_j", c_imp), ("export_price_per_j", c_exp),
                                    ("p_imp_max_w", imp_max), ("p_exp_max_w", exp_max))
               if not np.all(np.isfinite(a))]
        if bad:
            return self._fallback(f"non-finite input ({', '.join(bad)})", t0, e0_j, pv, demand,
                                  imp_max, exp_max)
        # Negative availabilities or limits are data errors the solver would call infeasible.
        pv, demand = np.maximum(pv, 0.0), np.maximum(demand, 0.0)
        imp_max, exp_max = np.maximum(imp_max, 0.0), np.maximum(exp_max, 0.0)
        try:
            q, l, u = self.model.vectors(e0_j, pv, demand, c_imp, c_exp, imp_max, exp_max)
            self._solver.update(q=q, l=l, u=u)
            if self._x_prev is not None:
                self._solver.warm_start(x=self._x_prev[self.model.x_shift],
                                        y=self._y_prev[self.model.y_shift])
            else:  # OSQP would otherwise reuse its last (possibly failed) iterate
                self._solver.warm_start(x=np.zeros(self.model.n), y=np.zeros(self.model.m))
            res = self._solver.solve(raise_error=False)
        except Exception as exc:  # noqa: BLE001 - any solver failure must still yield a decision
            self.reset()
            return self._fallback(f"solver error: {exc!r}", t0, e0_j, pv, demand, imp_max, exp_max)
        status_val = res.info.status_val
        if status_val not in (1, 2) or not np.all(np.isfinite(res.x)):
            self.reset()
            return self._fallback(f"osqp status {res.info.status!r}", t0, e0_j, pv, demand,
                                  imp_max, exp_max)
        self._x_prev, self._y_prev = np.array(res.x), np.array(res.y)
        status = "solved" if status_val == 1 else "solved_inaccurate"
        if status_val == 2:
            log.warning("OSQP solution inaccurate after %d iterations (prim_res %.3g)",
                        res.info.iter, res.info.prim_res)
        plan = self.model.unscale(res.x, e0_j)
        # Clip ADMM's tolerance-level overshoots so setpoints respect the hard limits.
        for name, hi in (("p_ch", self.config.p_ch_max_w), ("p_dis", self.config.p_dis_max_w),
                         ("p_imp", imp_max), ("p_exp", exp_max), ("p_pv", pv), ("p_load", demand)):
            plan[name] = np.clip(plan[name], 0.0, hi)
        objective, terms = self.model.objective_terms(plan, demand, c_imp, c_exp)
        # A first-step shortfall within solver tolerance is not a decision to shed or curtail:
        # snap it, so boards are not told to cut a few mW, and let the grid take the residual.
        snap_w = 1e-3 * self.model.p_scale_w
        served = np.where(demand[0] - plan["p_load"][0] < snap_w, demand[0], plan["p_load"][0])
        pv_cap = float(pv[0]) if pv[0] - plan["p_pv"][0] < snap_w else float(plan["p_pv"][0])
        p_storage = float(plan["p_dis"][0] - plan["p_ch"][0])
        p_grid = float(np.clip(served.sum() - pv_cap - p_storage, -exp_max[0], imp_max[0]))
        return Decision(
            status=status, solve_time_s=time.perf_counter() - t0, iterations=int(res.info.iter),
            objective=objective, p_storage_w=p_storage, p_grid_w=p_grid, pv_cap_w=pv_cap,
            load_served_w=served, plan=plan, objective_terms=terms)

    def _fallback(self, reason, t0, e0_j, pv, demand, imp_max, exp_max):
        log.warning("MPC fallback to rule-based dispatch: %s", reason)
        pv0 = float(pv[0]) if np.isfinite(pv[0]) else 0.0  # unknown PV: plan without it
        # Unknown demand: serve the first finite forecast of that load, else nothing.
        demand0 = np.array([_first_finite(demand[:, k]) for k in range(demand.shape[1])])
        imp0 = float(imp_max[0]) if np.isfinite(imp_max[0]) else 0.0
        exp0 = float(exp_max[0]) if np.isfinite(exp_max[0]) else 0.0
        d = self._naive_step(e0_j, pv0, demand0, self.config, p_imp_max_w=imp0, p_exp_max_w=exp0)
        d.status = "fallback:" + reason
        d.solve_time_s = time.perf_counter() - t0
        return d


def _first_finite(x):
    finite = x[np.isfinite(x)]
    return max(float(finite[0]), 0.0) if finite.size else 0.0
