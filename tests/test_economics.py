"""Scale-free economics (edge/optimizer/economics.py): a site's values follow the source's price scale,
no load is shed for price while the grid can supply it, and shedding that physics forces goes by
priority and says which rule forced it."""

import numpy as np
import pytest

from picogrid.edge.optimizer import economics
from picogrid.edge.optimizer import policies
from picogrid.edge.evaluation.evaluate import baselines, perfect_controller, perfect_forecast, run_mpc
from picogrid.edge.sources.feedsource import feed_site
from picogrid.edge.optimizer.mpc_config import MpcConfig, config_from_site
from picogrid.edge.optimizer.optimize import MpcController
from picogrid.edge.site import load_site

FEED_TICK_S = 5.0


def lab_feed_cfg(**changes):
    """The lab site's config on the lab feed's 5 s tick (its values set for 2.8 c/J)."""
    return config_from_site(feed_site(load_site())).replace(dt_s=FEED_TICK_S, **changes)


def teaching_day(seed=0, n=60, jobs=None):
    """A day as a teaching server states it: integer import prices 10-150 c/J jumping by about
    ±20 c/J per tick around a level, export at half, a bell of sun, 1-3 W of demand."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    level = 60 + 40 * np.sin(2 * np.pi * (t - 15) / n)
    imp = np.clip(np.round(level + rng.normal(0, 20, n)), 10, 150)
    sun = np.clip(np.sin(np.pi * (t - 10) / 40), 0, None)
    demand = np.clip(0.4 + 0.3 * rng.random((n, 3)) + 0.3 * np.cos(np.pi * t / n)[:, None] ** 2, 0, 1.0)
    return policies.DayTruth(pv_avail_w=3.87 * sun, demand_w=demand, import_price_per_j=imp,
                             export_price_per_j=np.round(0.5 * imp), e0_j=20.0, jobs=jobs)


def scaled(truth, k):
    return policies.DayTruth(truth.pv_avail_w, truth.demand_w, truth.import_price_per_j * k,
                             truth.export_price_per_j * k, truth.e0_j, jobs=truth.jobs)


# --------------------------------------------------------------------------- resolve

def test_values_follow_the_window_price_scale():
    cfg = lab_feed_cfg()
    imp, exp = np.full(60, 28.0), np.full(60, 7.0)          # ten times the site's 2.8 c/J
    econ = economics.resolve(cfg, imp, exp)
    assert econ.voll_per_j == pytest.approx(tuple(10 * v for v in cfg.voll_per_j))
    assert econ.terminal_value_per_j == pytest.approx(10 * cfg.terminal_value_per_j)
    assert econ.cycle_cost_per_j == pytest.approx(10 * cfg.cycle_cost_per_j)
    assert econ.price_scale_per_j is None and economics.resolve(econ, imp, exp) == econ   # idempotent


def test_every_value_of_lost_load_stays_above_the_dearest_price_in_priority_order():
    cfg = lab_feed_cfg()
    imp = np.full(60, 28.0)
    imp[30] = 2000.0                                        # one spike, 70 x the mean
    econ = economics.resolve(cfg, imp, 0.5 * imp, [np.full(60, 3000.0)])   # and a dearer scenario
    floor = economics.VOLL_HEADROOM * (3000.0 + 2 * econ.cycle_cost_per_j) / (cfg.eta_ch * cfg.eta_dis)
    assert min(econ.voll_per_j + (econ.voll_def_per_j,)) == pytest.approx(floor)
    assert econ.voll_per_j[0] > econ.voll_per_j[1] > econ.voll_per_j[2] >= econ.voll_def_per_j
    # a site whose values are far too low for its source is lifted alike
    low = MpcConfig(horizon=4, dt_s=1.0, e_min_j=0, e_max_j=10, p_ch_max_w=1, p_dis_max_w=1, eta_ch=1,
                    eta_dis=1, p_imp_max_w=5, p_exp_max_w=5, n_loads=2, voll_per_j=[0.02, 0.0])
    lifted = economics.resolve(low, [100.0] * 4, [50.0] * 4)
    assert min(lifted.voll_per_j) >= economics.VOLL_HEADROOM * 100.0
    assert lifted.voll_per_j[0] > lifted.voll_per_j[1]


def test_no_prices_no_scaling():
    cfg = lab_feed_cfg()
    econ = economics.resolve(cfg, np.zeros(60), np.zeros(60))
    assert econ.voll_per_j == cfg.voll_per_j and econ.terminal_value_per_j == cfg.terminal_value_per_j


# --------------------------------------------------------------------------- scale-free dispatch

def _runs(truth, cfg):
    out = baselines(truth, cfg)
    out["mpc_perfect_forecast"] = run_mpc(perfect_controller(cfg), perfect_forecast(None, 0, truth, cfg), truth, cfg)
    # the shipped three-scenario plan, on scenarios around the truth
    ctrl = MpcController(cfg)

    def scenario_window(t, delivered_j=None):
        w = policies.pad_day_end(truth.window(t, cfg.horizon, cfg, delivered_j), truth.n_steps - t, cfg)
        w["scenarios"] = [{"pv_avail_w": w["pv_avail_w"] * f, "demand_w": w["demand_w"] / f,
                           "import_price_per_j": w["import_price_per_j"] / f} for f in (0.8, 1.0, 1.2)]
        return w
    out["mpc_scenarios"] = run_mpc(ctrl, scenario_window, truth, cfg)
    return out


@pytest.mark.parametrize("kind", ["teaching", "lab_feed"])
def test_same_dispatch_on_any_price_scale(kind):
    """The same day with prices x0.01, x1 and x100: the same dispatch, every cost scaled."""
    if kind == "teaching":
        truth = teaching_day(3, jobs=[{"start": 5, "end": 30, "energy": 8.0}])
    else:
        from picogrid.models.labfeed_server import generate_lab_days
        day = generate_lab_days("2013-07-16", 1)[0]
        truth = policies.DayTruth(np.asarray(day["sun"], float) / 100 * 3.87,
                                  np.minimum(np.asarray(day["demand"])[:, None] / 3, 1.0).repeat(3, 1),
                                  np.asarray(day["sell_price"], float), np.asarray(day["buy_price"], float),
                                  20.0, jobs=[{"start": 10, "end": 40, "energy": 5.0}])
    cfg = lab_feed_cfg(n_jobs=2)
    ref = _runs(truth, cfg)
    for k in (0.01, 100.0):
        got = _runs(scaled(truth, k), cfg)
        for policy, r in ref.items():
            g = got[policy]
            for name in ("grid_w", "storage_w", "load_served_w", "deferrable_w"):
                np.testing.assert_allclose(getattr(g, name), getattr(r, name), atol=1e-6,
                                           err_msg=f"{policy} {name} at prices x{k}")
            for term, v in r.costs.items():
                assert g.costs[term] == pytest.approx(k * v, rel=1e-6, abs=1e-9 * k), (policy, term, k)


# --------------------------------------------------------------------------- never shed for price

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_demand_is_shed_for_price_on_a_teaching_day(seed):
    """Prices 10-150 c/J against a site set for 2.8 c/J: every policy serves the whole demand
    and delivers the jobs (the naive rule does; so must the MPC and the optimum)."""
    truth = teaching_day(seed, jobs=[{"start": 40, "end": 59, "energy": 12.0}])
    cfg = lab_feed_cfg(n_jobs=2)
    runs = _runs(truth, cfg)
    demand = np.asarray(truth.demand_w)
    for policy, r in runs.items():
        assert np.sum(demand - r.load_served_w) * cfg.dt_s == pytest.approx(0.0, abs=1e-3), policy
        assert r.costs["deferrable_shortfall_cost"] == pytest.approx(0.0, abs=1e-6), policy
    assert runs["mpc_perfect_forecast"].costs["total"] <= runs["naive"].costs["total"]


def _one_tick(cfg, imp_max_w, e0_j):
    n = cfg.horizon
    return MpcController(cfg).solve(e0_j, np.zeros(n), np.full((n, 3), 1.0), np.full(n, 80.0),
                                    np.full(n, 40.0), p_imp_max_w=np.full(n, imp_max_w),
                                    p_exp_max_w=np.full(n, imp_max_w))


def test_physics_sheds_by_priority_and_says_which_rule():
    cfg = lab_feed_cfg(scenario_weights=None, scenario_quantiles=None, horizon=12)
    served = _one_tick(cfg, 6.0, cfg.e_min_j)
    assert served.shed_rule == "" and served.load_served_w == pytest.approx([1.0, 1.0, 1.0])
    limited = _one_tick(cfg, 1.5, cfg.e_min_j)             # 3 W of demand, 1.5 W of import, empty store
    assert limited.shed_rule in ("import_limit", "storage_energy_min")
    assert limited.load_served_w == pytest.approx([1.0, 0.5, 0.0], abs=1e-3)   # load3 first, then load2
    assert "shed" in limited.reason
    islanded = _one_tick(cfg, 0.0, cfg.e_min_j)
    assert islanded.shed_rule == "islanded"
    assert islanded.load_served_w[2] == pytest.approx(0.0, abs=1e-3)


def test_islanded_serves_the_critical_load_now_not_later():
    """Islanded with 20 J stored and 3 W of demand for the whole horizon: the store cannot
    cover it all, so load2 and load3 go, but the critical load is served now (shedding it now
    to 'serve it later' is a tie the receding horizon would repeat every tick)."""
    cfg = lab_feed_cfg(scenario_weights=None, scenario_quantiles=None)
    d = _one_tick(cfg, 0.0, 20.0)
    assert d.shed_rule == "islanded"
    assert d.load_served_w == pytest.approx([1.0, 0.0, 0.0], abs=1e-3)
    assert d.p_storage_w == pytest.approx(1.0, abs=1e-3)
