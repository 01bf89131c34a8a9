"""The receding-horizon problem as one scaled QP with a fixed sparsity (:class:`QpModel`).

The model of docs/design.md §4 over ``N`` steps: storage charge/discharge with separate
efficiencies, grid import/export, used PV, served power per load, deferrable delivery per job,
the stored energy as a state, soft energy bounds, job energies and the optional reserve with
exact penalties (see :mod:`picogrid.edge.optimizer.optimize` for the whole statement and the sign
convention). :func:`build_model` builds the matrices once; each tick only the vectors ``q``,
``l``, ``u`` of :meth:`QpModel.vectors` change. OSQP solves it as the QP, HiGHS as the LP it
is without the tiny regulariser (:mod:`picogrid.edge.optimizer.simplex`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

# Time-indexed decision blocks in column order. A new block is added to the layout in
# QpModel.__init__ with its rows, and read in vectors(), unscale() and objective_terms().
_POWER_BLOCKS = ("p_ch", "p_dis", "p_imp", "p_exp", "p_pv")
# Energy-bound violation costs this many times the largest per-J value in the problem. The
# bound's multiplier is a difference of marginal values of stored energy, at most about
# 2 x top / (eta_ch * eta_dis), so 10 keeps the L1 penalty exact with margin; a larger factor
# only slows ADMM down.
_PENALTY_FACTOR = 10.0
# Serving a load now is worth this share more than serving it at the horizon's end (linear in
# between). Without it, shedding is a tie across time whenever stored energy cannot cover the
# whole horizon (islanded): the LP shed the critical load now and "served" it later, and the
# receding horizon then shed it again every tick. Small enough to move no other decision.
_SERVE_NOW_TILT = 1e-4


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
    """The scaled QP ``min ½xᵀPx + qᵀx  s.t.  l <= Ax <= u`` for one :class:`~picogrid.edge.optimizer.mpc_config.MpcConfig`.

    Variables are scaled internally: powers by ``p_scale_w`` (the largest configured power
    limit), energies by ``e_scale_j`` (``e_max_j``) and the objective by
    ``dt_s * p_scale_w * price_ref_per_j`` (:meth:`cost_unit`), so that a 5 W bench and a 5 kW site give the
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
    cfg : picogrid.edge.optimizer.mpc_config.MpcConfig
    """

    def __init__(self, cfg):
        self.cfg = cfg
        n, nl, nj = cfg.horizon, cfg.n_loads, int(cfg.n_jobs)
        self.p_scale_w = max(cfg.p_ch_max_w, cfg.p_dis_max_w, cfg.p_imp_max_w, cfg.p_exp_max_w,
                             cfg.p_def_max_w) or 1.0
        self.e_scale_j = cfg.e_max_j
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

    def penalty_per_j(self, import_price_per_j, export_price_per_j, econ=None):
        """Exact-penalty weight on energy-bound violation for these prices [price/J]; ``econ``
        is the resolved config of the window (:func:`picogrid.edge.optimizer.economics.resolve`), default
        the model's own."""
        cfg = self.cfg if econ is None else econ
        if cfg.soft_penalty_per_j is not None:
            return cfg.soft_penalty_per_j
        top = max(np.max(np.abs(import_price_per_j)), np.max(np.abs(export_price_per_j)),
                  max(cfg.voll_per_j), cfg.terminal_value_per_j, cfg.voll_def_per_j,
                  self.reserve_penalty_per_j(cfg)) + 2 * cfg.cycle_cost_per_j
        return _PENALTY_FACTOR * max(top, 1e-9) / (cfg.eta_ch * cfg.eta_dis)

    def reserve_penalty_per_j(self, econ=None):
        """Price of one J below the reserve for one step [price/J] (0 with the reserve off)."""
        cfg = self.cfg if econ is None else econ
        if not self.cfg.reserve:
            return 0.0
        return max(cfg.voll_per_j) if cfg.reserve_penalty_per_j is None else cfg.reserve_penalty_per_j

    def cost_unit(self, econ=None):
        """The objective's internal unit [price]: ``dt_s * p_scale_w * price_ref``, with
        ``price_ref`` the config's ``price_ref_per_j`` or its highest value of lost load, so
        that the scaled ``q`` does not change when every price and value is multiplied by one
        factor."""
        cfg = self.cfg if econ is None else econ
        return cfg.dt_s * self.p_scale_w * (cfg.price_ref_per_j or max(max(cfg.voll_per_j), 1e-9))

    def vectors(self, e0_j, pv_avail_w, demand_w, import_price_per_j, export_price_per_j,
                p_imp_max_w, p_exp_max_w, jobs=None, p_def_max_w=None, reserve_j=None, econ=None):
        """Return ``(q, l, u)`` of the scaled QP for one tick's data (arrays already validated).

        Shapes: ``pv_avail_w, import/export price, p_imp/exp_max_w, p_def_max_w`` [N],
        ``demand_w`` [N, L], ``jobs`` [J', 3] rows ``(start, end, energy_j)`` with J' <= J,
        ``reserve_j`` [N] stored energy to keep after each step [J] (``None``: no reserve);
        units as in :meth:`picogrid.edge.optimizer.optimize.MpcController.solve`; ``econ``: the window's
        resolved config (:func:`picogrid.edge.optimizer.economics.resolve`) whose values of lost load,
        terminal value, cycling cost and penalties price the objective (default: the model's).
        """
        cfg, cols, rows = self.cfg, self.cols, self.rows
        ec = cfg if econ is None else econ
        n = cfg.horizon
        ps, es, cu = self.p_scale_w, self.e_scale_j, self.cost_unit(ec)
        q = np.zeros(self.n)
        q[cols["p_imp"]] = import_price_per_j * cfg.dt_s * ps / cu
        q[cols["p_exp"]] = -export_price_per_j * cfg.dt_s * ps / cu
        q[cols["p_ch"]] = ec.cycle_cost_per_j * cfg.dt_s * ps / cu
        q[cols["p_dis"]] = ec.cycle_cost_per_j * cfg.dt_s * ps / cu
        sooner = 1.0 + _SERVE_NOW_TILT * np.linspace(1.0, 0.0, n)[:, None]
        q[cols["p_load"]] = -np.asarray(ec.voll_per_j)[None, :] * sooner * cfg.dt_s * ps / cu
        q[cols["e"][-1]] = -ec.terminal_value_per_j * es / cu
        q[cols["s_e"]] = (self.penalty_per_j(import_price_per_j, export_price_per_j, ec) * es / cu
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
            q[cols["s_def"]] = ec.voll_def_per_j * self.def_unit_j / cu / self.slack_scale["s_def"]
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
            q[cols["s_res"]] = self.reserve_penalty_per_j(ec) * es / cu / self.slack_scale["s_res"]
            l[rows["reserve"]] = -np.inf if reserve_j is None else reserve_j / es
            u[rows["reserve"]] = np.inf
            u[rows["bound_s_res"]] = np.inf
        return q, l, u

    def unscale(self, x, e0_j):
        """Split a scaled solution vector into the plan dict of :class:`~picogrid.edge.optimizer.optimize.Decision` (SI units).

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

    def objective_terms(self, plan, demand_w, import_price_per_j, export_price_per_j, econ=None):
        """Objective terms of a plan in price units (no regularisation); see
        :class:`~picogrid.edge.optimizer.optimize.Decision`. ``econ`` as in :meth:`vectors`."""
        cfg = self.cfg if econ is None else econ
        dt = cfg.dt_s
        voll = np.asarray(cfg.voll_per_j)
        terms = {
            "import_cost": float(dt * np.sum(import_price_per_j * plan["p_imp"])),
            "export_revenue": float(dt * np.sum(export_price_per_j * plan["p_exp"])),
            "shedding_cost": float(dt * np.sum(voll[None, :] * (demand_w - plan["p_load"]))),
            "cycling_cost": float(dt * cfg.cycle_cost_per_j * np.sum(plan["p_ch"] + plan["p_dis"])),
            "terminal_value": float(cfg.terminal_value_per_j * plan["e"][-1]),
            "violation_penalty": float(self.penalty_per_j(import_price_per_j, export_price_per_j, cfg)
                                       * np.sum(plan["s_e"])),
            "deferrable_shortfall_cost": float(cfg.voll_def_per_j * np.sum(plan["s_def"])),
            "reserve_penalty": float(self.reserve_penalty_per_j(cfg) * np.sum(plan["s_res"])),
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
