"""Tests of the baselines and the day simulator (picogrid.edge.optimizer.policies).

The naive rule table, the perfect-foresight LP against cvxpy/Clarabel, cost accounting
identities, and the closed-loop figure of merit of docs/design.md §4 on a small synthetic day.
"""

import cvxpy as cp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from picogrid.edge.optimizer import economics
from picogrid.edge.optimizer import policies
from picogrid.edge.optimizer.mpc_config import MpcConfig
from picogrid.edge.optimizer.optimize import Decision, MpcController
from picogrid.edge.optimizer.economics import savings_capture
from picogrid.edge.optimizer.policies import (DayTruth, day_cost, naive_step, plant_step,
                                    simulate_policy, solve_perfect_foresight)

LAB = dict(horizon=60, dt_s=2.5, e_min_j=2.0, e_max_j=45.0, p_ch_max_w=3.0, p_dis_max_w=3.0,
           eta_ch=0.9, eta_dis=0.9, p_imp_max_w=6.0, p_exp_max_w=6.0, n_loads=3,
           voll_per_j=[50.0, 20.0, 5.0], cycle_cost_per_j=0.01)


def lab_cfg(**over):
    return MpcConfig.from_dict({**LAB, **over})


def synthetic_day(n_steps=120, seed=1):
    """Half-sine PV, wiggling loads and an evening price peak (lab watts, price/J)."""
    rng = np.random.default_rng(seed)
    phase = np.arange(n_steps) / n_steps
    pv = 4.0 * np.clip(np.sin(np.pi * (phase - 0.2) / 0.5), 0, None) * rng.uniform(0.7, 1.0, n_steps)
    dem = np.column_stack([0.6 + 0.1 * np.sin(2 * np.pi * phase),
                           0.5 + 0.4 * np.sin(2 * np.pi * (phase - 0.3)) ** 2,
                           0.3 + 0.6 * ((phase > 0.7) & (phase < 0.9))]) * rng.uniform(0.9, 1.1, (n_steps, 3))
    # Peak below the lowest value of lost load (5/J): savings must come from the storage.
    price = np.where((phase > 0.7) & (phase < 0.9), 4.0, 1.0) * rng.uniform(0.9, 1.1, n_steps)
    return DayTruth(pv, dem, price, 0.4 * price, e0_j=10.0)


# --------------------------------------------------------------------------- naive rule table

@pytest.mark.parametrize("e_j, pv_w, demand_w, imp_max, exp_max, expect", [
    # surplus 2 W: storage takes it all
    (20.0, 3.5, [0.5, 0.5, 0.5], 6.0, 6.0, dict(storage=-2.0, grid=0.0, pv=3.5, served=[0.5, 0.5, 0.5])),
    # surplus 3.5 W: storage at its 3 W limit, 0.5 W exported
    (20.0, 4.0, [0.2, 0.2, 0.1], 6.0, 6.0, dict(storage=-3.0, grid=-0.5, pv=4.0, served=[0.2, 0.2, 0.1])),
    # storage nearly full: headroom (45-44.1)/(0.9*2.5) = 0.4 W, rest exported
    (44.1, 2.0, [0.5, 0.5, 0.0], 6.0, 6.0, dict(storage=-0.4, grid=-0.6, pv=2.0, served=[0.5, 0.5, 0.0])),
    # storage full, outage: PV curtailed to the loads
    (45.0, 4.0, [0.5, 0.5, 0.5], 0.0, 0.0, dict(storage=0.0, grid=0.0, pv=1.5, served=[0.5, 0.5, 0.5])),
    # deficit 2 W: storage discharges it
    (20.0, 0.0, [1.0, 0.5, 0.5], 6.0, 6.0, dict(storage=2.0, grid=0.0, pv=0.0, served=[1.0, 0.5, 0.5])),
    # storage nearly empty: (2.5-2)*0.9/2.5 = 0.18 W, rest imported
    (2.5, 0.0, [1.0, 0.5, 0.5], 6.0, 6.0, dict(storage=0.18, grid=1.82, pv=0.0, served=[1.0, 0.5, 0.5])),
    # outage, storage empty, 1.2 W PV for 3 W of demand: shed load3 then load2
    (2.0, 1.2, [1.0, 1.0, 1.0], 0.0, 0.0, dict(storage=0.0, grid=0.0, pv=1.2, served=[1.0, 0.2, 0.0])),
    # import limit 1 W in deficit: import 1 W, shed lowest value for the rest
    (2.0, 0.0, [1.0, 0.5, 0.5], 1.0, 6.0, dict(storage=0.0, grid=1.0, pv=0.0, served=[1.0, 0.0, 0.0])),
])
def test_naive_rule_table(e_j, pv_w, demand_w, imp_max, exp_max, expect):
    d = naive_step(e_j, pv_w, demand_w, lab_cfg(), p_imp_max_w=imp_max, p_exp_max_w=exp_max)
    assert d.status == "naive"
    assert d.p_storage_w == pytest.approx(expect["storage"], abs=1e-9)
    assert d.p_grid_w == pytest.approx(expect["grid"], abs=1e-9)
    assert d.pv_cap_w == pytest.approx(expect["pv"], abs=1e-9)
    np.testing.assert_allclose(d.load_served_w, expect["served"], atol=1e-9)


def test_naive_discharge_within_the_esr_loss_limit():
    # 5 J stored, 0.1 W/J: the rule discharges 0.5 W and imports the rest of the 3 W demand
    d = naive_step(5.0, 0.0, [1.0, 1.0, 1.0], lab_cfg(p_dis_per_e_max_per_s=0.1), p_imp_max_w=6.0,
                   p_exp_max_w=6.0)
    assert d.p_storage_w == pytest.approx(0.5) and d.p_grid_w == pytest.approx(2.5)


def test_naive_shedding_follows_voll_not_position():
    cfg = lab_cfg(voll_per_j=[5.0, 50.0, 20.0])  # load2 critical here
    d = naive_step(2.0, 0.0, [1.0, 1.0, 1.0], cfg, p_imp_max_w=1.5, p_exp_max_w=0.0)
    np.testing.assert_allclose(d.load_served_w, [0.0, 1.0, 0.5], atol=1e-12)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(e=st.floats(0.0, 50.0), pv=st.floats(0.0, 4.0),
       dem=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
       imp=st.sampled_from([0.0, 0.5, 6.0]), exp=st.sampled_from([0.0, 0.5, 6.0]))
def test_naive_respects_balance_and_limits(e, pv, dem, imp, exp):
    cfg = lab_cfg()
    d = naive_step(e, pv, dem, cfg, p_imp_max_w=imp, p_exp_max_w=exp)
    assert d.pv_cap_w + d.p_storage_w + d.p_grid_w == pytest.approx(d.load_served_w.sum(), abs=1e-9)
    assert -exp - 1e-12 <= d.p_grid_w <= imp + 1e-12
    assert 0 <= d.pv_cap_w <= pv + 1e-12
    assert np.all(d.load_served_w >= 0) and np.all(d.load_served_w <= np.array(dem) + 1e-12)
    e_next = e + cfg.dt_s * (cfg.eta_ch * max(-d.p_storage_w, 0) - max(d.p_storage_w, 0) / cfg.eta_dis)
    # Never pushes the storage further out of its band.
    assert e_next <= max(e, cfg.e_max_j) + 1e-9 and e_next >= min(e, cfg.e_min_j) - 1e-9


# --------------------------------------------------------------------------- perfect foresight

def test_perfect_foresight_matches_cvxpy_on_a_day():
    truth = synthetic_day(48, seed=4)
    cfg = lab_cfg(terminal_value_per_j=0.5)
    outage = np.zeros(48)
    outage[30:36] = 1
    imp_max = np.where(outage > 0, 0.0, 6.0)
    perfect_foresight = solve_perfect_foresight(cfg, 10.0, truth.pv_avail_w, truth.demand_w, truth.import_price_per_j,
                          truth.export_price_per_j, p_imp_max_w=imp_max, p_exp_max_w=imp_max)
    n, dt = 48, cfg.dt_s
    ch, dis, imp, exp, pv = (cp.Variable(n, nonneg=True) for _ in range(5))
    load = cp.Variable((n, 3), nonneg=True)
    e = cp.Variable(n + 1)
    cons = [pv + dis + imp - ch - exp - cp.sum(load, axis=1) == 0, e[0] == 10.0,
            e[1:] == e[:-1] + dt * (0.9 * ch - dis / 0.9), e[1:] >= 2.0, e[1:] <= 45.0,
            ch <= 3, dis <= 3, imp <= imp_max, exp <= imp_max, pv <= truth.pv_avail_w,
            load <= truth.demand_w]
    voll = np.array([50.0, 20.0, 5.0])
    cost = (dt * (truth.import_price_per_j @ imp - truth.export_price_per_j @ exp
                  + cp.sum(cp.multiply(voll[None, :], truth.demand_w - load)) + 0.01 * cp.sum(ch + dis))
            - 0.5 * e[n])
    prob = cp.Problem(cp.Minimize(cost), cons)
    prob.solve(solver=cp.CLARABEL)
    assert perfect_foresight.objective == pytest.approx(prob.value, rel=1e-6, abs=1e-4)
    # in the outage the plan balances the bus without the grid (its p_imp/p_exp are clipped
    # to the zero limits, so the balance is the check)
    plan = perfect_foresight.plan
    np.testing.assert_allclose((plan["p_pv"] + plan["p_dis"] - plan["p_ch"])[30:36],
                               plan["p_load"].sum(axis=1)[30:36], atol=1e-6)


def test_perfect_foresight_replay_costs_its_objective():
    """Replaying the perfect-foresight plan through the plant reproduces the LP objective: one cost model."""
    truth = synthetic_day(60, seed=2)
    cfg = lab_cfg(terminal_value_per_j=0.3)
    perfect_foresight = solve_perfect_foresight(cfg, truth.e0_j, truth.pv_avail_w, truth.demand_w,
                          truth.import_price_per_j, truth.export_price_per_j)
    res = simulate_policy(policies.perfect_foresight_policy(perfect_foresight), truth, cfg)
    assert res.total_cost == pytest.approx(perfect_foresight.objective, rel=1e-6, abs=1e-6)
    np.testing.assert_allclose(res.e_j, perfect_foresight.plan["e"], atol=1e-6)


def test_perfect_foresight_rejects_nan():
    truth = synthetic_day(10)
    pv = truth.pv_avail_w.copy()
    pv[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        solve_perfect_foresight(lab_cfg(), 10.0, pv, truth.demand_w, truth.import_price_per_j, truth.export_price_per_j)


# --------------------------------------------------------------------------- accounting

def test_day_cost_by_hand():
    # 2 s steps: import 1 W at 3/J = 6; export 2 W at 0.5/J = -2; idle = 0.
    assert day_cost([1.0, -2.0, 0.0], [3.0, 3.0, 3.0], [0.5, 0.5, 0.5], 2.0) == pytest.approx(4.0)


def test_savings_capture_values():
    assert savings_capture(100.0, 90.0, 80.0) == pytest.approx(0.5)
    assert savings_capture(100.0, 80.0, 80.0) == pytest.approx(1.0)
    assert savings_capture(100.0, 110.0, 80.0) == pytest.approx(-0.5)
    assert np.isnan(savings_capture(100.0, 100.0, 100.0))


def test_window_pads_with_last_values():
    truth = synthetic_day(10)
    w = truth.window(7, 5, lab_cfg())
    np.testing.assert_array_equal(w["pv_avail_w"], truth.pv_avail_w[[7, 8, 9, 9, 9]])
    np.testing.assert_array_equal(w["demand_w"], truth.demand_w[[7, 8, 9, 9, 9]])
    np.testing.assert_array_equal(w["p_imp_max_w"], np.full(5, 6.0))


def test_plant_islands_when_the_decision_is_wrong():
    """A decision that counts on 2 W of import during an outage: storage covers what it can
    (its energy limit), then loads are shed lowest value first."""
    cfg = lab_cfg()
    d = Decision(status="solved", solve_time_s=0.0, iterations=0, objective=0.0, p_storage_w=1.0,
                 p_grid_w=2.0, pv_cap_w=0.0, load_served_w=np.array([1.0, 1.0, 1.0]))
    pv, storage, grid, served, e_next, _ = plant_step(d, 2.5, 0.0, np.array([1.0, 1.0, 1.0]), cfg, 0.0, 0.0)
    assert grid == pytest.approx(0.0) and pv == 0.0
    assert storage == pytest.approx(0.18)  # the 0.5 J above e_min over 2.5 s, times eta_dis
    np.testing.assert_allclose(served, [0.18, 0.0, 0.0], atol=1e-12)
    assert e_next == pytest.approx(2.0)


@pytest.mark.parametrize("setpoint_w, e_j, pv_w, demand_w, expect_storage_w, expect_served_w, expect_pv_w", [
    # plan charges 2 W, the grid is out: the storage swings to discharge 1.5 W, nothing is shed
    (-2.0, 20.0, 0.0, [1.0, 0.5, 0.0], 1.5, [1.0, 0.5, 0.0], 0.0),
    # swing limited by the 3 W discharge limit: 3 W from storage, load3 shed by 0.5 W
    (-2.0, 20.0, 0.0, [1.0, 1.0, 1.5], 3.0, [1.0, 1.0, 1.0], 0.0),
    # plan discharges 2 W into a PV surplus in an outage: the storage swings to charge, no curtailment
    (2.0, 20.0, 3.0, [0.5, 0.5, 0.0], -2.0, [0.5, 0.5, 0.0], 3.0),
])
def test_plant_swings_a_wrong_sign_storage_setpoint(setpoint_w, e_j, pv_w, demand_w, expect_storage_w,
                                                     expect_served_w, expect_pv_w):
    """In an outage the storage covers the whole residual within its limits, whatever the sign of
    the setpoint it was given; only then are loads shed (deficit) or PV curtailed (surplus)."""
    cfg = lab_cfg()
    d = Decision(status="solved", solve_time_s=0.0, iterations=0, objective=0.0, p_storage_w=setpoint_w,
                 p_grid_w=0.0, pv_cap_w=pv_w, load_served_w=np.array(demand_w))
    pv, storage, grid, served, _, _ = plant_step(d, e_j, pv_w, np.array(demand_w), cfg, 0.0, 0.0)
    assert grid == pytest.approx(0.0, abs=1e-12)
    assert storage == pytest.approx(expect_storage_w)
    np.testing.assert_allclose(served, expect_served_w, atol=1e-12)
    assert pv == pytest.approx(expect_pv_w)


def test_plant_curtails_surplus_in_an_outage():
    cfg = lab_cfg()
    d = Decision(status="solved", solve_time_s=0.0, iterations=0, objective=0.0, p_storage_w=0.0,
                 p_grid_w=-3.0, pv_cap_w=4.0, load_served_w=np.array([0.5, 0.5, 0.0]))
    pv, storage, grid, served, e_next, _ = plant_step(d, 45.0, 4.0, np.array([0.5, 0.5, 0.0]), cfg, 0.0, 0.0)
    assert grid == pytest.approx(0.0) and storage == 0.0 and pv == pytest.approx(1.0)


# --------------------------------------------------------------------------- closed loop

def test_mpc_closed_loop_perfect_forecast_captures_savings():
    """Perfect forecasts, N = 60 over a 120-step day: capture >= 0.95, never worse than naive."""
    truth = synthetic_day(120, seed=1)
    cfg = lab_cfg()
    naive = simulate_policy(policies.naive_policy(truth, cfg), truth, cfg)
    perfect_foresight = solve_perfect_foresight(cfg, truth.e0_j, truth.pv_avail_w, truth.demand_w,
                          truth.import_price_per_j, truth.export_price_per_j)
    mpc = simulate_policy(policies.mpc_policy(MpcController(cfg), truth), truth, cfg)
    # the cold first tick is the exact LP, OSQP's warm start; OSQP solves every tick after it
    assert mpc.statuses[0] == "solved_exact" and all(s == "solved" for s in mpc.statuses[1:])
    assert perfect_foresight.objective <= mpc.total_cost + 1e-9 and perfect_foresight.objective <= naive.total_cost + 1e-9
    assert mpc.total_cost <= naive.total_cost
    assert naive.total_cost - perfect_foresight.objective > 1.0  # the day leaves something to save
    assert savings_capture(naive.total_cost, mpc.total_cost, perfect_foresight.objective) >= 0.95


def test_mpc_closed_loop_with_outage_never_worse_than_naive():
    truth = synthetic_day(90, seed=5)
    truth.p_imp_max_w = np.where((np.arange(90) >= 60) & (np.arange(90) < 75), 0.0, 6.0)
    truth.p_exp_max_w = truth.p_imp_max_w.copy()
    cfg = lab_cfg(horizon=30)
    naive = simulate_policy(policies.naive_policy(truth, cfg), truth, cfg)
    decisions = []
    mpc_policy = policies.mpc_policy(MpcController(cfg), truth)

    def recorded(*args, **kw):
        decisions.append(mpc_policy(*args, **kw))
        return decisions[-1]

    mpc = simulate_policy(recorded, truth, cfg)
    perfect_foresight = solve_perfect_foresight(cfg, truth.e0_j, truth.pv_avail_w, truth.demand_w, truth.import_price_per_j,
                          truth.export_price_per_j, truth.p_imp_max_w, truth.p_exp_max_w)
    # the plant forces the grid to 0 in the outage whatever was decided: check the decisions
    for d in decisions[60:75]:
        assert d.status.startswith("solved"), d.status
        assert d.plan["p_imp"][0] < 1e-3 and d.plan["p_exp"][0] < 1e-3
        assert abs(d.load_served_w.sum() + d.p_deferrable_w - d.pv_cap_w - d.p_storage_w) < 1e-3
    assert perfect_foresight.objective <= mpc.total_cost + 1e-9 <= naive.total_cost + 1e-9


# --------------------------------------------------------------------------- deferrable jobs

def _day_with_jobs():
    truth = synthetic_day()
    truth.jobs = [{"start": 10, "end": 40, "energy": 20.0}, {"start": 60, "end": 110, "energy": 30.0}]
    return truth


def test_naive_delivers_jobs_as_early_as_possible_and_accounts_energy():
    cfg = lab_cfg(n_jobs=2, p_def_max_w=1.0)
    truth = _day_with_jobs()
    res = simulate_policy(policies.naive_policy(truth, cfg), truth, cfg)
    # 20 J at 1 W x 2.5 s per tick: ticks 10..17 (8 ticks = 20 J); nothing before the window
    np.testing.assert_allclose(res.deferrable_w[:10], 0.0)
    np.testing.assert_allclose(res.deferrable_w[10:18], 1.0)
    assert res.deferrable_w[18:60].sum() == pytest.approx(0.0)
    assert res.deferrable_w.sum() * cfg.dt_s == pytest.approx(50.0)
    assert res.costs["deferrable_shortfall_cost"] == pytest.approx(0.0)
    # the bus balance of the plant includes the deferrable load
    np.testing.assert_allclose(res.pv_w + res.storage_w + res.grid_w,
                               res.load_served_w.sum(axis=1) + res.deferrable_w, atol=1e-9)


def test_undelivered_job_energy_is_charged():
    cfg = lab_cfg(n_jobs=1, p_def_max_w=0.5)
    truth = synthetic_day()
    truth.jobs = [{"start": 0, "end": 4, "energy": 10.0}]   # at most 4 x 2.5 s x 0.5 W = 5 J
    res = simulate_policy(policies.naive_policy(truth, cfg), truth, cfg)
    econ = economics.resolve(cfg, truth.import_price_per_j, truth.export_price_per_j)
    assert res.costs["deferrable_shortfall_cost"] == pytest.approx(5.0 * econ.voll_def_per_j)


def test_more_jobs_than_slots_are_planned_earliest_deadline_first():
    """Three overlapping jobs, two job slots: each window carries the two earliest deadlines
    (the runner's rule) and the third gets its energy once one is done, instead of the day
    simulation raising."""
    cfg = lab_cfg(n_jobs=2, p_def_max_w=1.0)
    truth = synthetic_day()
    truth.jobs = [{"start": 10, "end": 100, "energy": 10.0}, {"start": 10, "end": 40, "energy": 10.0},
                  {"start": 10, "end": 60, "energy": 10.0}]
    assert [j["end"] for j in truth.window(10, cfg.horizon, cfg)["jobs"]] == [30, 50]
    mpc = simulate_policy(policies.mpc_policy(MpcController(cfg), truth), truth, cfg)
    # all three delivered, up to the few mJ the controller's first-step snap leaves
    assert mpc.deferrable_w.sum() * cfg.dt_s == pytest.approx(30.0, abs=0.05)


def test_perfect_foresight_and_mpc_with_jobs_beat_naive():
    cfg = lab_cfg(n_jobs=2, p_def_max_w=1.0)
    truth = _day_with_jobs()
    naive = simulate_policy(policies.naive_policy(truth, cfg), truth, cfg)
    perfect_foresight = solve_perfect_foresight(cfg, truth.e0_j, truth.pv_avail_w, truth.demand_w, truth.import_price_per_j,
                          truth.export_price_per_j, jobs=truth.jobs)
    replay = simulate_policy(policies.perfect_foresight_policy(perfect_foresight), truth, cfg)
    mpc = simulate_policy(policies.mpc_policy(MpcController(cfg), truth), truth, cfg)
    assert replay.total_cost == pytest.approx(perfect_foresight.objective, rel=1e-6, abs=1e-6)
    assert perfect_foresight.objective <= mpc.total_cost + 1e-6 and perfect_foresight.objective <= naive.total_cost + 1e-6
    assert mpc.costs["deferrable_shortfall_cost"] == pytest.approx(0.0, abs=1e-2)
    assert savings_capture(naive.total_cost, mpc.total_cost, perfect_foresight.objective) > 0.9
