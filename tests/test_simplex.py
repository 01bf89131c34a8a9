"""The exact-LP path of the MPC (picogrid.edge.optimizer.simplex): HiGHS on OSQP's matrices, warm basis,
and the controller's use of it (cold start, rescue, ``solver='highs'``)."""

import math

import numpy as np
import pytest

from picogrid.edge.optimizer.mpc_config import MpcConfig
from picogrid.edge.optimizer.optimize import MpcController, parse_jobs
from picogrid.edge.optimizer.policies import solve_perfect_foresight
from picogrid.edge.optimizer.simplex import SOLVED, WarmSimplex

LAB = dict(horizon=24, dt_s=2.5, e_min_j=2.0, e_max_j=45.0, p_ch_max_w=2.0, p_dis_max_w=2.0,
           eta_ch=0.93, eta_dis=0.89, p_imp_max_w=6.0, p_exp_max_w=6.0, n_loads=3,
           voll_per_j=[40.0, 12.0, 6.0], cycle_cost_per_j=0.02, terminal_value_per_j=0.7,
           p_dis_per_e_max_per_s=0.1, n_jobs=2, p_def_max_w=1.0)


def day(n, shift=0):
    """A lab-like day: PV by day, an evening price peak, three loads (W, c/J)."""
    t = np.arange(shift, shift + n)
    pv = 3.5 * np.clip(np.sin(np.pi * (t - 6) / 12), 0, None)
    dem = np.column_stack([0.3 + 0.1 * np.sin(t), 0.2 + 0.2 * (t % 7 == 0), 0.4 + 0.3 * (t % 5 == 0)])
    c_imp = np.where((t % 24 >= 17) & (t % 24 < 21), 3.0, 1.0)
    return dict(pv_avail_w=pv, demand_w=dem, import_price_per_j=c_imp, export_price_per_j=0.3 * c_imp,
                jobs=[{"start": 2, "end": 10, "energy": 4.0}])


def vectors(ctrl, e0_j, data):
    cfg = ctrl.config
    n = cfg.horizon
    vec = ctrl.model.vectors(e0_j, data["pv_avail_w"], data["demand_w"], data["import_price_per_j"],
                             data["export_price_per_j"], np.full(n, cfg.p_imp_max_w),
                             np.full(n, cfg.p_exp_max_w), parse_jobs(data["jobs"], cfg.n_jobs, n),
                             np.full(n, cfg.p_def_max_w))
    return ctrl._qp.vectors([vec])


def test_solution_satisfies_osqp_kkt_conditions():
    """x feasible, q + Aᵀy = 0 and y's sign says which bound holds (OSQP's convention), so the
    pair is a valid OSQP warm start; the optimum is the perfect-foresight LP's (scipy linprog, HiGHS)."""
    cfg = MpcConfig(**LAB)
    ctrl = MpcController(cfg)
    q, l, u = vectors(ctrl, 20.0, day(cfg.horizon))
    lp = WarmSimplex(ctrl._qp.A)
    r = lp.solve(q, l, u)
    assert r.info.status == "optimal" and r.info.status_val == SOLVED
    A = ctrl._qp.A
    ax = A @ r.x
    tol = 1e-7
    assert np.all(ax >= l - tol) and np.all(ax <= u + tol)
    np.testing.assert_allclose(q + A.T @ r.y, 0.0, atol=1e-9)
    assert np.all(np.abs(ax[r.y > tol] - u[r.y > tol]) <= tol)
    assert np.all(np.abs(ax[r.y < -tol] - l[r.y < -tol]) <= tol)
    d = day(cfg.horizon)
    perfect_foresight = solve_perfect_foresight(cfg, 20.0, **d)
    assert MpcController(cfg.replace(solver="highs")).solve(20.0, **d).objective == pytest.approx(
        perfect_foresight.objective, rel=1e-7, abs=1e-7)


def test_warm_basis_needs_fewer_pivots_than_a_cold_start():
    """The receding horizon moves one step: from the last basis the dual simplex needs a small
    part of the pivots from HiGHS's crash basis (reset)."""
    cfg = MpcConfig(**LAB)
    ctrl = MpcController(cfg)
    lp = WarmSimplex(ctrl._qp.A)
    warm, cold = [], []
    lp.solve(*vectors(ctrl, 20.0, day(cfg.horizon)))
    for k in range(1, 8):
        vec = vectors(ctrl, 20.0, day(cfg.horizon, shift=k))
        warm.append(lp.solve(*vec).info.iter)
        lp.reset()
        cold.append(lp.solve(*vec).info.iter)
    assert np.mean(warm) < 0.5 * np.mean(cold), (warm, cold)


def test_cold_start_is_the_exact_lp_then_osqp_takes_over():
    cfg = MpcConfig(**LAB)
    ctrl = MpcController(cfg)
    d0 = ctrl.solve(20.0, **day(cfg.horizon))
    assert d0.status == "solved_exact" and d0.reason == "cold start: exact LP"
    assert d0.objective == pytest.approx(solve_perfect_foresight(cfg, 20.0, **day(cfg.horizon)).objective, rel=1e-7)
    d1 = ctrl.solve(float(d0.plan["e"][1]), **day(cfg.horizon, shift=1))
    assert d1.status == "solved" and d1.reason == ""
    ctrl.reset()
    assert ctrl.solve(20.0, **day(cfg.horizon)).status == "solved_exact"


def test_highs_every_tick_and_its_time_limit_falls_back_to_the_rule():
    cfg = MpcConfig(**LAB, solver="highs")
    ctrl = MpcController(cfg)
    e = 20.0
    for k in range(3):
        d = ctrl.solve(e, **day(cfg.horizon, shift=k))
        assert d.status == "solved_exact"
        e = float(d.plan["e"][1])
    late = MpcController(cfg.replace(time_limit_s=1e-9))
    d = late.solve(20.0, **day(cfg.horizon))
    assert d.status.startswith("fallback:exact LP status") and "time limit" in d.status
    assert np.isfinite(d.p_grid_w) and np.isnan(d.objective)


def test_a_timed_out_tick_keeps_the_basis_for_the_next():
    """One tick that runs into its time limit falls back, but the next tick resumes from
    HiGHS's basis: a few pivots, not a cold start's (which could time out again under load)."""
    cfg = MpcConfig(**LAB, solver="highs")
    cold = MpcController(cfg).solve(20.0, **day(cfg.horizon, shift=2)).iterations
    ctrl = MpcController(cfg)
    for k in range(2):
        assert ctrl.solve(20.0, **day(cfg.horizon, shift=k)).status == "solved_exact"
    ctrl.config = cfg.replace(time_limit_s=1e-9)
    assert "time limit" in ctrl.solve(20.0, **day(cfg.horizon, shift=2)).status
    ctrl.config = cfg
    d = ctrl.solve(20.0, **day(cfg.horizon, shift=2))
    assert d.status == "solved_exact" and d.iterations < cold / 2, (d.iterations, cold)


def test_solver_name_is_checked():
    with pytest.raises(ValueError, match="solver must be 'osqp' or 'highs'"):
        MpcConfig(**LAB, solver="gurobi")


class _HoursOld:
    """A HiGHS instance seen through a clock ``offset_s`` ahead: as if it had already run that
    long. Its time limit option is translated back to the real instance's clock, so a limit
    taken from the wrong origin bites at once (no wall-clock window, no speed assumption)."""

    def __init__(self, h, offset_s):
        self._h, self._offset_s = h, offset_s

    def getRunTime(self):
        return self._h.getRunTime() + self._offset_s

    def setOptionValue(self, name, value):
        if name == "time_limit" and math.isfinite(value):
            value = max(value - self._offset_s, 0.0)    # HiGHS refuses a negative limit
        return self._h.setOptionValue(name, value)

    def __getattr__(self, name):
        return getattr(self._h, name)


def test_time_limit_is_per_solve_not_the_instances_total():
    """HiGHS counts its time limit on the instance's accumulated run time: a limit that fits one
    solve must hold for every solve of a long-lived controller (before the fix, a site day fell
    back to the rule after about 0.5 s of summed solves). A fake clock makes the instance hours
    old; the limit is far above any one solve's time, loaded machine or not."""
    cfg = MpcConfig(**LAB)
    ctrl = MpcController(cfg)
    lp = WarmSimplex(ctrl._qp.A)
    vec = vectors(ctrl, 20.0, day(cfg.horizon))
    lp._h = _HoursOld(lp._h, offset_s=4 * 3600.0)
    statuses = []
    for _ in range(3):
        lp.reset()    # a cold solve each time: the most work per run
        statuses.append(lp.solve(*vec, time_limit_s=60.0).info.status)
    assert statuses == ["optimal"] * 3
    # and the limit still bites: a limit of nothing, on an hours-old instance, is reached
    lp.reset()
    assert lp.solve(*vec, time_limit_s=0.0).info.status == "time limit reached"


def test_only_changed_entries_are_passed_and_the_model_stays_right():
    """Each solve passes HiGHS only the entries that changed: a long-lived instance must give
    the optimum of a fresh one on every tick, also when data moves back to earlier values."""
    cfg = MpcConfig(**LAB)
    ctrl = MpcController(cfg)
    lp = WarmSimplex(ctrl._qp.A)
    for k, e0_j in ((0, 20.0), (1, 20.0), (2, 5.0), (1, 20.0), (5, 44.0), (0, 20.0)):
        vec = vectors(ctrl, e0_j, day(cfg.horizon, shift=k))
        kept, fresh = lp.solve(*vec), WarmSimplex(ctrl._qp.A).solve(*vec)
        assert kept.info.status == fresh.info.status == "optimal"
        assert kept.info.obj_val == pytest.approx(fresh.info.obj_val, rel=1e-9, abs=1e-12)
