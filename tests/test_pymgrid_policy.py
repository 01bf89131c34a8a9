"""Tests of picogrid.edge.evaluation.pymgrid_policy: our model mapped onto pymgrid's MPC (units, limits,
efficiency, jobs), with pymgrid's own ModelPredictiveControl solving."""

import numpy as np
import pytest

from picogrid.edge.evaluation import evaluate
from picogrid.edge.optimizer.mpc_config import MpcConfig
from picogrid.edge.evaluation.pymgrid_policy import PymgridMpc, asap_job_power


def _cfg(**kw):
    base = dict(horizon=4, dt_s=5.0, e_min_j=0.0, e_max_j=10.0, p_ch_max_w=10.0, p_dis_max_w=10.0,
                eta_ch=0.9, eta_dis=0.9, p_imp_max_w=20.0, p_exp_max_w=20.0, n_loads=2,
                voll_per_j=[5.0, 3.0], cycle_cost_per_j=0.0, terminal_value_per_j=0.0)
    base.update(kw)
    return MpcConfig(**base)


def _window(imp, exp=None, demand=1.0, pv=0.0, n=4):
    imp = np.asarray(imp, float)
    return {"pv_avail_w": np.full(n, pv), "demand_w": np.full((n, 2), demand / 2),
            "import_price_per_j": imp, "export_price_per_j": np.zeros(n) if exp is None else np.asarray(exp, float)}


def test_asap_job_power_serves_open_jobs_first_come_within_the_limit():
    # job A already open (relative start -2), 12 J left; job B opens at step 2 with 6 J; 4 W limit, 1 s steps
    jobs = [{"start": -2, "end": 3, "energy": 12.0}, {"start": 2, "end": 5, "energy": 6.0}]
    np.testing.assert_allclose(asap_job_power(jobs, np.full(6, 4.0), 1.0, 6), [4, 4, 4, 4, 2, 0])
    assert not asap_job_power(None, np.full(3, 4.0), 1.0, 3).any()
    assert not asap_job_power(jobs, None, 1.0, 3).any()


def test_cheap_now_fills_the_storage_in_joules_not_w_steps():
    """Import at 1 c/J now, 10 c/J after: the plan charges now, as much as the capacity takes.
    From 2 J of 10 J with eta = 0.9 that is 8 J / 0.9 at the battery's input in one 5 s step:
    1.78 W, well below the 10 W limit. A capacity in joules read as W-steps (10 W-step = 50 J)
    would charge 5 times as much."""
    pm = PymgridMpc(_cfg())
    d = pm.solve(2.0, **_window([1.0, 10.0, 10.0, 10.0]))
    assert d.status == "pymgrid"
    assert d.p_storage_w == pytest.approx(-8.0 / 0.9 / 5.0, rel=1e-3)
    assert d.p_grid_w == pytest.approx(1.0 + 8.0 / 0.9 / 5.0, rel=1e-3)      # load + charge, no PV
    np.testing.assert_allclose(d.load_served_w, [0.5, 0.5])
    assert d.pv_cap_w == 0.0 and d.p_deferrable_w == 0.0


@pytest.mark.parametrize("later_price, charges", [(1.2, False), (1.3, True)])
def test_the_round_trip_efficiency_decides_arbitrage(later_price, charges):
    """eta_ch = eta_dis = 0.9 is a 0.81 round trip: buying at 1 c/J to save 1.2 c/J later loses
    (1 / 0.81 = 1.235), at 1.3 c/J it pays. pymgrid's one eta is sqrt(eta_ch * eta_dis)."""
    pm = PymgridMpc(_cfg(eta_ch=0.81, eta_dis=1.0))
    assert pm.eta == pytest.approx(0.9)
    d = pm.solve(2.0, **_window([1.0, later_price, later_price, later_price]))
    assert (d.p_storage_w < -1e-3) is charges


def test_a_full_store_cannot_charge_and_an_outage_is_its_grid_status():
    pm = PymgridMpc(_cfg(voll_per_j=[50.0, 30.0]))
    d = pm.solve(10.0, **_window([1.0, 10.0, 10.0, 10.0]))
    assert d.p_storage_w == pytest.approx(0.0, abs=1e-6)
    # no import at steps 1..2: the store must keep its energy for the load then (lost load costs
    # 50 c/J, its highest value of lost load, against 5 c/J for import now)
    w = _window([5.0, 5.0, 5.0, 5.0], demand=1.0)
    d = pm.solve(10.0, **w, p_imp_max_w=np.array([20.0, 0.0, 0.0, 20.0]))
    assert d.p_storage_w <= 1e-6


def test_jobs_enter_the_load_as_the_naive_rule_serves_them():
    pm = PymgridMpc(_cfg())
    jobs = [{"start": 0, "end": 2, "energy": 15.0}]
    d = pm.solve(5.0, **_window([1.0] * 4), jobs=jobs, p_def_max_w=np.full(4, 2.0))
    assert d.p_deferrable_w == pytest.approx(2.0)       # the job at the deferrable load's limit now
    assert d.p_grid_w == pytest.approx(1.0 + 2.0 - d.p_storage_w)


def test_compared_runs_plan_on_the_fans_mpc_own_planned_on():
    """``pymgrid_own`` gets the fans ``mpc_own`` was served (one forecaster call per tick)."""
    calls = []

    def fans_at(t, now):
        calls.append(t)
        return {"t": t}

    fans = evaluate.cached_fans(fans_at)
    assert fans(0, None) is fans(0, None) and fans(1, None)["t"] == 1
    assert calls == [0, 1]


def test_without_a_plan_the_battery_holds(caplog):
    """Stored energy below the floor that its charge limit cannot lift in a step: pymgrid's LP is
    infeasible, cvxpy returns no plan, and the policy holds the battery and says so."""
    pm = PymgridMpc(_cfg(e_min_j=5.0, p_ch_max_w=0.01))
    d = pm.solve(0.0, **_window([1.0] * 4))
    assert d.status == "pymgrid_failed:infeasible"
    assert d.p_storage_w == 0.0 and d.p_grid_w == pytest.approx(1.0) and np.isnan(d.objective)
    assert "pymgrid MPC ended infeasible: battery held" in caplog.text
