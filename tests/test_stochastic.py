"""Tests of the scenario (two-stage stochastic) MPC (picogrid.edge.forecasting.scenarios).

The stacked OSQP problem is checked against a two-stage programme written directly in cvxpy
(no shared code, Clarabel), which also has the non-anticipativity constraints: without them
the optimum would be the lower "wait-and-see" cost, so a missing or wrong row shows up as a cost
difference.
"""

import cvxpy as cp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from picogrid.edge.optimizer import economics
from picogrid.edge.optimizer.mpc_config import MpcConfig
from picogrid.edge.optimizer.optimize import MpcController
from picogrid.edge.optimizer.qp_model import build_model
from picogrid.edge.optimizer.scenario_qp import ScenarioQp
from picogrid.edge.forecasting.scenarios import (expected_value, forecast_inputs, quantile_scenarios,
                                      solve_scenarios)

LAB = dict(horizon=8, dt_s=2.5, e_min_j=2.0, e_max_j=45.0, p_ch_max_w=3.0, p_dis_max_w=3.0,
           eta_ch=0.9, eta_dis=0.9, p_imp_max_w=6.0, p_exp_max_w=6.0, n_loads=2,
           voll_per_j=[50.0, 20.0], cycle_cost_per_j=0.01, terminal_value_per_j=0.5)
TIGHT = dict(eps_abs=1e-6, eps_rel=1e-6, max_iter=200000, time_limit_s=10.0)
SM = dict(scenario_weights=(0.3, 0.4, 0.3), scenario_quantiles=(0.1, 0.5, 0.9))


def cfg_of(**over):
    return MpcConfig.from_dict({**LAB, **over})


def two_stage_cvxpy(cfg, e0_j, scenarios, weights, imp_max, exp_max, penalty_per_j, shared_steps=1):
    """Expected-cost optimum over scenarios sharing their first step and the storage power of
    their first ``shared_steps`` steps, in cvxpy/Clarabel."""
    n, dt = cfg.horizon, cfg.dt_s
    voll = np.asarray(cfg.voll_per_j)
    cost, cons, first = 0, [], []
    for sc, w in zip(scenarios, weights):
        pv, dem, c_imp, c_exp = (sc[k] for k in ("pv_avail_w", "demand_w", "import_price_per_j",
                                                  "export_price_per_j"))
        ch, dis, imp, exp, used = (cp.Variable(n, nonneg=True) for _ in range(5))
        load = cp.Variable(dem.shape, nonneg=True)
        e = cp.Variable(n + 1)
        cons += [used + dis + imp - ch - exp - cp.sum(load, axis=1) == 0, e[0] == e0_j,
                 e[1:] == e[:-1] + dt * (cfg.eta_ch * ch - dis / cfg.eta_dis),
                 ch <= cfg.p_ch_max_w, dis <= cfg.p_dis_max_w, imp <= imp_max, exp <= exp_max,
                 used <= pv, load <= dem]
        cost = cost + w * (dt * (c_imp @ imp - c_exp @ exp
                                 + cp.sum(cp.multiply(voll[None, :], dem - load))
                                 + cfg.cycle_cost_per_j * cp.sum(ch + dis))
                           - cfg.terminal_value_per_j * e[n]
                           + penalty_per_j * cp.sum(cp.pos(cfg.e_min_j - e[1:])
                                                    + cp.pos(e[1:] - cfg.e_max_j)))
        # now: every power; later shared steps: the storage setpoint only (no jobs here)
        first.append(cp.hstack([ch[:shared_steps], dis[:shared_steps], imp[0], exp[0], used[0], load[0, :]]))
    cons += [f == first[0] for f in first[1:]]
    prob = cp.Problem(cp.Minimize(cost), cons)
    prob.solve(solver=cp.CLARABEL)
    assert prob.status == cp.OPTIMAL
    return prob.value


@st.composite
def scenario_instances(draw):
    n, nl = LAB["horizon"], LAB["n_loads"]
    floats = lambda lo, hi, size: np.array(draw(st.lists(st.floats(lo, hi), min_size=size,
                                                         max_size=size)))
    now_pv, now_dem = floats(0.0, 3.0, 1), floats(0.0, 1.0, nl)
    scenarios = []
    for _ in range(3):
        pv, dem = floats(0.0, 4.0, n), floats(0.0, 1.0, n * nl).reshape(n, nl)
        c_imp = floats(1.0, 4.0, n)
        pv[0], dem[0], c_imp[0] = now_pv[0], now_dem, 2.0
        scenarios.append({"pv_avail_w": pv, "demand_w": dem, "import_price_per_j": c_imp,
                          "export_price_per_j": 0.3 * c_imp})
    return draw(st.floats(LAB["e_min_j"], LAB["e_max_j"])), scenarios, draw(st.integers(1, 3))


@settings(max_examples=20, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(scenario_instances(), st.sampled_from(["osqp", "highs"]))
def test_scenario_mpc_matches_two_stage_cvxpy(inst, solver):
    """Same expected optimal cost as the independent cvxpy two-stage programme, by OSQP (from
    zero) and as the exact LP."""
    e0_j, scenarios, shared = inst
    cfg = cfg_of(**SM, **TIGHT, scenario_shared_steps=shared, solver=solver, cold_start_exact=False)
    ctrl = MpcController(cfg)
    base = scenarios[1]
    d = ctrl.solve(e0_j, base["pv_avail_w"], base["demand_w"], base["import_price_per_j"],
                   base["export_price_per_j"], scenarios=scenarios)
    assert d.status == ("solved" if solver == "osqp" else "solved_exact")
    econ = economics.resolve(cfg, base["import_price_per_j"], base["export_price_per_j"],
                             [s[k] for s in scenarios for k in ("import_price_per_j", "export_price_per_j")])
    pen = max(ctrl.model.penalty_per_j(s["import_price_per_j"], s["export_price_per_j"], econ)
              for s in scenarios)
    # the QP prices violations per scenario; from inside the bounds none are needed (storage
    # can idle), so any exact penalty gives the same optimum (here: the largest)
    ref = two_stage_cvxpy(econ, e0_j, scenarios, cfg.scenario_weights, np.full(cfg.horizon, 6.0),
                          np.full(cfg.horizon, 6.0), pen, shared)
    scale = cfg.dt_s * cfg.horizon * (6.0 * 4.0 + sum(cfg.voll_per_j))
    assert abs(d.objective - ref) <= 1e-4 * scale


def test_identical_scenarios_give_the_deterministic_plan():
    cfg = cfg_of(**TIGHT)
    rng = np.random.default_rng(3)
    data = dict(pv_avail_w=rng.uniform(0, 3, 8), demand_w=rng.uniform(0, 1, (8, 2)),
                import_price_per_j=rng.uniform(1, 3, 8), export_price_per_j=np.full(8, 0.5))
    det = MpcController(cfg).solve(20.0, **data)
    sto = MpcController(cfg.replace(**SM)).solve(20.0, **data, scenarios=[data] * 3)
    assert sto.objective == pytest.approx(det.objective, rel=1e-4)
    assert sto.p_storage_w == pytest.approx(det.p_storage_w, abs=1e-3)
    assert sto.p_grid_w == pytest.approx(det.p_grid_w, abs=1e-3)


def test_hedge_keeps_energy_when_running_short_is_dear():
    """Storage can sell now at 1 c/J; the last steps' demand is 0.2 W (expected) or 1.2 W
    (30 %), to be bought at 5 c/J if storage is empty. Planning on the expectation sells more
    now; the scenario plan keeps the energy the dear scenario needs."""
    n = 8
    cfg = cfg_of(horizon=n, n_loads=1, voll_per_j=[50.0], terminal_value_per_j=0.0,
                 e_min_j=0.0, e_max_j=10.0, **TIGHT)
    low, mid, high = (np.where(np.arange(n) >= 4, v, 0.0)[:, None] for v in (0.0, 0.2, 1.2))
    common = dict(pv_avail_w=np.zeros(n), import_price_per_j=np.full(n, 5.0),
                  export_price_per_j=np.r_[1.0, np.zeros(n - 1)])
    mean_demand = 0.3 * low + 0.4 * mid + 0.3 * high
    det = MpcController(cfg).solve(10.0, demand_w=mean_demand, **common)
    sto = MpcController(cfg.replace(**SM)).solve(
        10.0, demand_w=mean_demand, **common,
        scenarios=[{"demand_w": low}, {"demand_w": mid}, {"demand_w": high}])
    sold_det, sold_sto = -det.p_grid_w * cfg.dt_s, -sto.p_grid_w * cfg.dt_s
    # needed in the dear scenario: 4 steps x 1.2 W x 2.5 s / 0.9 = 13.3 J > 10 J stored: keep all
    assert sold_sto == pytest.approx(0.0, abs=1e-3)
    assert sold_det > 1.0
    assert len(sto.scenario_objectives) == 3 and det.scenario_objectives == []
    assert sto.objective == pytest.approx(np.dot(cfg.replace(**SM).scenario_weights,
                                                 sto.scenario_objectives))
    assert sto.scenario_objectives[2] > sto.scenario_objectives[0]   # the dear one costs most


def test_scenario_input_errors_and_fallback(caplog):
    cfg = cfg_of(**SM)
    ctrl = MpcController(cfg)
    n = cfg.horizon
    base = dict(pv_avail_w=np.zeros(n), demand_w=np.full((n, 2), 0.5),
                import_price_per_j=np.ones(n), export_price_per_j=np.full(n, 0.3))
    with pytest.raises(ValueError, match="3 mappings"):
        ctrl.solve(10.0, **base, scenarios=[{}, {}])
    with pytest.raises(ValueError, match="demand_w must have shape"):
        ctrl.solve(10.0, **base, scenarios=[{"demand_w": np.zeros(n)}, {}, {}])
    bad = np.full(n, np.nan)
    # a gap in one scenario: that scenario plans on the point forecast, the tick still plans
    d = MpcController(cfg).solve(10.0, **base, scenarios=[{}, {"pv_avail_w": bad}, {}])
    assert d.ok and "non-finite scenarios[1]: the point forecast instead" in d.reason
    same = MpcController(cfg).solve(10.0, **base, scenarios=[{}, {}, {}])
    assert d.objective == pytest.approx(same.objective, rel=1e-6, abs=1e-6)
    # a gap in what every scenario shares (the point forecast itself) still falls back
    d = ctrl.solve(10.0, **dict(base, pv_avail_w=bad), scenarios=[{}, {}, {}])
    assert d.status.startswith("fallback:non-finite input") and "pv_avail_w" in d.reason
    assert ctrl.solve(10.0, **base).ok   # no scenarios given: every one is the expected one


@pytest.mark.parametrize("over, message", [
    (dict(scenario_weights=(0.5, 0.4)), "sum to 1"),
    (dict(scenario_weights=(1.2, -0.2)), "> 0"),
    (dict(scenario_weights=(0.5, 0.5), scenario_quantiles=(0.5,)), "one per scenario"),
    (dict(scenario_spread=0.0), "scenario_spread"),
    (dict(scenario_shared_steps=0), "scenario_shared_steps"),
    (dict(scenario_shared_steps=9), "scenario_shared_steps"),
    (dict(scenario_correlation=-0.1), "scenario_correlation"),
    (dict(demand_p90_weight=1.5), "demand_p90_weight"),
])
def test_config_rejects_bad_scenarios(over, message):
    with pytest.raises(ValueError, match=message):
        cfg_of(**over)


def test_scenario_qp_shapes_and_weights():
    model = build_model(cfg_of())
    qp = ScenarioQp(model, (0.3, 0.4, 0.3))
    k = sum(model.cols[b][0].size for b in model.cols.blocks if b.startswith("p_"))
    assert (qp.n, qp.m) == (3 * model.n, 3 * model.m + 2 * k)
    assert qp.main == 1 and qp.A.shape == (qp.m, qp.n)
    with pytest.raises(ValueError, match="sum to 1"):
        ScenarioQp(model, (0.3, 0.3))


def test_quantile_scenarios_spread_and_mirrored_pv():
    fans = {"pv_available_w": {0.1: np.array([1.0]), 0.5: np.array([2.0]), 0.9: np.array([4.0])},
            "load1_demand_w": {0.1: np.array([0.0]), 0.5: np.array([1.0]), 0.9: np.array([3.0])}}
    low, mid, high = quantile_scenarios(fans, (0.1, 0.5, 0.9), spread=0.5)
    assert high["load1_demand_w"][0] == pytest.approx(2.0)     # 1 + 0.5 * (3 - 1)
    assert high["pv_available_w"][0] == pytest.approx(1.5)     # dull: 2 + 0.5 * (1 - 2)
    assert low["pv_available_w"][0] == pytest.approx(3.0)
    assert mid["load1_demand_w"][0] == pytest.approx(1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 3.0), min_size=2, max_size=12), st.floats(0.0, 1.0))
def test_correlated_scenarios_match_the_energy_of_equicorrelated_errors(dev_w, rho):
    n = len(dev_w)
    mid, dev = np.linspace(1.0, 2.0, n), np.asarray(dev_w)
    fans = {"load1_demand_w": {0.1: mid - dev, 0.5: mid, 0.9: mid + dev},
            "import_price_per_j": {0.1: mid - dev, 0.5: mid, 0.9: mid + dev}}
    low, _, high = quantile_scenarios(fans, (0.1, 0.5, 0.9), spread=0.8, correlation=rho,
                                      energy_series=("load1_demand_w",))
    d = dev[1:]
    want = 0.8 * np.sqrt((1 - rho) * np.cumsum(d * d) + rho * np.cumsum(d) ** 2)
    np.testing.assert_allclose(np.cumsum(high["load1_demand_w"][1:] - mid[1:]), want, atol=1e-9)
    np.testing.assert_allclose(np.cumsum(low["load1_demand_w"][1:] - mid[1:]), -want, atol=1e-9)
    assert np.all(high["load1_demand_w"] >= mid - 1e-12)          # increments keep the sign
    assert high["load1_demand_w"][0] == pytest.approx(mid[0] + 0.8 * dev[0])   # step 0 as it was
    np.testing.assert_allclose(high["import_price_per_j"], mid + 0.8 * dev)    # not an energy series


def test_correlation_one_is_the_stepwise_construction_and_zero_the_root_sum_square():
    fans = {"pv_available_w": {0.1: np.zeros(5), 0.5: np.full(5, 2.0), 0.9: np.full(5, 3.0)}}
    step = quantile_scenarios(fans, (0.1, 0.9), energy_series=("pv_available_w",))
    same = quantile_scenarios(fans, (0.1, 0.9), correlation=1.0, energy_series=("pv_available_w",))
    np.testing.assert_allclose(step[0]["pv_available_w"], same[0]["pv_available_w"])
    indep = quantile_scenarios(fans, (0.1, 0.9), correlation=0.0, energy_series=("pv_available_w",))
    # the P10 scenario of PV takes the mirrored quantile, P90 (+1 W a step): sqrt(k) after k steps
    np.testing.assert_allclose(np.cumsum(indep[0]["pv_available_w"][1:] - 2.0), np.sqrt(np.arange(1, 5)))
    np.testing.assert_allclose(np.cumsum(indep[1]["pv_available_w"][1:] - 2.0), -2 * np.sqrt(np.arange(1, 5)))


def test_solve_scenarios_from_fans():
    cfg = cfg_of(horizon=4, n_loads=1, voll_per_j=[50.0], **SM, scenario_spread=1.0)
    fan = lambda a, b, c: {0.1: np.full(6, a), 0.5: np.full(6, b), 0.9: np.full(6, c)}
    fans = {"pv_available_w": fan(1.0, 2.0, 3.0), "load1_demand_w": fan(-1.0, 0.5, 1.0),
            "import_price_per_j": fan(1.0, 2.0, 3.0)}
    sc = solve_scenarios(fans, cfg, ["load1_demand_w"], export_fee_per_j=0.5)
    assert [s["demand_w"].shape for s in sc] == [(4, 1)] * 3
    assert sc[0]["demand_w"][0, 0] == 0.0                        # negative demand clipped
    assert sc[2]["pv_avail_w"][0] == 1.0 and sc[2]["import_price_per_j"][0] == 3.0
    assert sc[2]["export_price_per_j"][0] == pytest.approx(2.5)
    assert solve_scenarios(fans, cfg_of(), ["load1_demand_w"], 0.5) is None


def test_demand_p90_weight_moves_the_planned_demand_towards_p90_after_step_0():
    fan = lambda a, b, c: {0.1: np.full(6, a), 0.5: np.full(6, b), 0.9: np.full(6, c)}
    fans = {"pv_available_w": fan(1.0, 2.0, 3.0), "load1_demand_w": fan(0.0, 1.0, 3.0),
            "import_price_per_j": fan(1.0, 2.0, 3.0)}
    now = {"pv_avail_w": 2.5, "demand_w": [0.7], "import_price_per_j": 2.0, "export_price_per_j": 1.5}
    cfg = cfg_of(horizon=4, n_loads=1, voll_per_j=[50.0])
    mean = expected_value(fans["load1_demand_w"])[1]
    plain = forecast_inputs(fans, cfg, ["load1_demand_w"], now)["demand_w"][:, 0]
    tilted = forecast_inputs(fans, cfg.replace(demand_p90_weight=0.5), ["load1_demand_w"], now)["demand_w"][:, 0]
    assert plain[1:] == pytest.approx(mean) and tilted[0] == plain[0] == 0.7   # the present is measured
    assert tilted[1:] == pytest.approx(mean + 0.5 * (3.0 - mean))
