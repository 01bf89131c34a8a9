"""Forecast-error scenarios (picogrid.edge.forecasting.error_scenarios) and where they enter the plan: the
config's weights, forecast_inputs, the edge runner's past forecasts and picogrid evaluate's."""

import numpy as np
import pytest

from picogrid.edge.evaluation import evaluate
from picogrid.edge.forecasting.error_scenarios import error_scenarios, forecast_errors
from picogrid.edge.optimizer.mpc_config import MpcConfig
from picogrid.edge.sources.signals import LOAD_SERIES
from picogrid.edge.forecasting.scenarios import forecast_inputs, planned_point

LAB = dict(horizon=6, dt_s=2.5, e_min_j=2.0, e_max_j=45.0, p_ch_max_w=3.0, p_dis_max_w=3.0,
           eta_ch=0.9, eta_dis=0.9, p_imp_max_w=6.0, p_exp_max_w=6.0, n_loads=3,
           voll_per_j=[50.0, 20.0, 10.0], scenario_weights=(0.3, 0.4, 0.3),
           scenario_quantiles=(0.1, 0.5, 0.9))


def fans_of(n, pv=1.0, load=0.4):
    fan = lambda v: {0.1: np.full(n, 0.5 * v), 0.5: np.full(n, v), 0.9: np.full(n, 2.0 * v)}  # noqa: E731
    return {"pv_available_w": fan(pv), "import_price_per_j": fan(3.0), **{s: fan(load) for s in LOAD_SERIES}}


def test_plan_weights_share_the_error_weight_equally():
    cfg = MpcConfig.from_dict({**LAB, "error_scenario_days": 4, "error_scenario_weight": 0.2})
    w = cfg.plan_weights
    assert len(w) == 7 and sum(w) == pytest.approx(1.0)
    assert w[:3] == pytest.approx((0.24, 0.32, 0.24)) and w[3:] == pytest.approx((0.05,) * 4)
    assert MpcConfig.from_dict(LAB).plan_weights == (0.3, 0.4, 0.3)
    for bad, message in (({"error_scenario_days": -1}, "error_scenario_days"),
                         ({"error_scenario_days": 2.5}, "error_scenario_days"),
                         ({"error_scenario_weight": 1.0}, "error_scenario_weight")):
        with pytest.raises(ValueError, match=message):
            MpcConfig.from_dict({**LAB, **bad})


def test_error_scenarios_add_past_errors_after_step_0():
    n = 6
    window = {"pv_avail_w": np.full(n, 1.0), "demand_w": np.full((n, 3), 0.4),
              "import_price_per_j": np.full(n, 3.0), "export_price_per_j": np.full(n, 1.0)}
    err = {"pv_available_w": np.full(n, -2.0), "load1_demand_w": np.arange(n, dtype=float),
           "load2_demand_w": np.zeros(n), "load3_demand_w": np.full(4, 0.1)}   # shorter: 0 after
    out = error_scenarios(window, [err, None], LOAD_SERIES, 3)
    assert len(out) == 3
    a = out[0]
    assert a["pv_avail_w"][0] == 1.0 and np.all(a["pv_avail_w"][1:] == 0.0)     # clipped at 0
    np.testing.assert_allclose(a["demand_w"][:, 0], [0.4, 1.4, 2.4, 3.4, 4.4, 5.4])
    np.testing.assert_allclose(a["demand_w"][:, 2], [0.4, 0.5, 0.5, 0.5, 0.4, 0.4])
    for b in out[1:]:       # no past error yet: the point forecast itself
        np.testing.assert_array_equal(b["demand_w"], window["demand_w"])
        np.testing.assert_array_equal(b["pv_avail_w"], window["pv_avail_w"])
    fans = fans_of(n)
    point = planned_point(fans, LOAD_SERIES)
    assert point["pv_available_w"][1] == 1.0 and point["load1_demand_w"][1] == pytest.approx(0.4 * 3.5 / 3)
    e = forecast_errors(point, {s: np.full(4, 1.0) for s in point})
    assert all(len(v) == 4 for v in e.values()) and e["pv_available_w"][0] == 0.0


def test_forecast_inputs_appends_the_error_scenarios():
    cfg = MpcConfig.from_dict({**LAB, "error_scenario_days": 2})
    n = cfg.horizon
    now = {"pv_avail_w": 0.7, "demand_w": np.array([0.2, 0.3, 0.4]), "import_price_per_j": 3.0,
           "export_price_per_j": 1.0}
    err = {s: np.full(n, 0.5) for s in ("pv_available_w", *LOAD_SERIES)}
    out = forecast_inputs(fans_of(n), cfg, LOAD_SERIES, now, errors=[err])
    sc = out["scenarios"]
    assert len(sc) == 5 == len(cfg.plan_weights)
    np.testing.assert_allclose(sc[3]["demand_w"][1:], out["demand_w"][1:] + 0.5)
    np.testing.assert_allclose(sc[3]["pv_avail_w"][1:], out["pv_avail_w"][1:] + 0.5)
    np.testing.assert_allclose(sc[3]["demand_w"][0], now["demand_w"])
    np.testing.assert_array_equal(sc[4]["demand_w"], out["demand_w"])     # no second day yet
    assert len(forecast_inputs(fans_of(n), cfg.replace(error_scenario_days=0), LOAD_SERIES, now)["scenarios"]) == 3


def test_evaluation_errors_are_the_past_forecasts_against_what_followed():
    """picogrid evaluate's error scenarios at tick t are the errors of the forecasts issued at
    tick t of the K days before, over steps that all lie before now."""
    run = evaluate.ProfileDays("lab", "2013-07-01", 1, overrides={"error_scenario_days": 2}, compare=False)
    fans, errors = run.forecast_day(0, {})
    assert len(run._points) == 2 and len(errors) == len(fans) == 60
    assert all(len(e) == 2 and all(len(v) == run.cfg.horizon for v in e[0].values()) for e in errors)
    # the same forecaster run by hand through the warm-up days; days -2 and -1 give the errors
    again = evaluate.ProfileDays("lab", "2013-07-01", 1, overrides={"error_scenario_days": 2}, compare=False)
    assert again.warm_days == evaluate.WARM_DAYS
    warm = [again._forecast(d, {})[0] for d in range(-again.warm_days, 0)][-2:]
    nt, n, i = 60, run.cfg.horizon, run.hist_days
    for t in (0, 37):
        for k, day_fans in ((1, warm[1]), (2, warm[0])):      # most recent day first
            rows = np.arange((i - k) * nt + t, (i - k) * nt + t + n)
            p = planned_point(day_fans[t], LOAD_SERIES, run.cfg.demand_p90_weight)
            for s in ("pv_available_w", "load1_demand_w", "load3_demand_w"):
                np.testing.assert_allclose(errors[t][k - 1][s], run.data.cols[s][rows] - p[s])


def test_evaluation_warm_up_does_not_depend_on_the_error_scenarios():
    """Runs with and without error scenarios start alike: the forecaster runs through the same
    warm-up days, so day 0's fans are the same (the comparison the site files report)."""
    with_k = evaluate.ProfileDays("lab", "2013-07-01", 1, overrides={"error_scenario_days": 2}, compare=False)
    without = evaluate.ProfileDays("lab", "2013-07-01", 1, overrides={"error_scenario_days": 0}, compare=False)
    assert with_k.warm_days == without.warm_days == evaluate.WARM_DAYS
    fans_k, errors_k = with_k.forecast_day(0, {})
    fans_0, errors_0 = without.forecast_day(0, {})
    assert all(len(e) == 2 for e in errors_k) and all(e == [] for e in errors_0)
    for t in (0, 30, 59):
        for s in ("load3_demand_w", "pv_available_w"):
            for q in (0.1, 0.5, 0.9):
                np.testing.assert_array_equal(fans_k[t][s][q], fans_0[t][s][q])


def test_feed_site_turns_error_scenarios_off():
    """The lab feed tells no day before the edge saw it: no past forecasts to take errors from."""
    from picogrid.edge.sources.feedsource import feed_site
    from picogrid.edge.optimizer.mpc_config import config_from_site
    from picogrid.edge.site import load_site

    site = load_site()
    assert config_from_site(site).error_scenario_days == 7
    assert config_from_site(feed_site(site)).error_scenario_days == 0
    assert site["optimizer"]["error_scenario_days"] == 7      # the caller's site unchanged


def test_reported_plan_is_the_median_quantile_scenario():
    """With one error scenario of half the weight the reported plan is still the median one's."""
    from picogrid.edge.optimizer.optimize import MpcController
    cfg = MpcConfig.from_dict({**LAB, "error_scenario_days": 1, "error_scenario_weight": 0.5})
    assert MpcController(cfg)._qp.main == 1


def test_labfeed_evaluation_refuses_error_scenarios():
    from picogrid.edge.evaluation.feed_evaluate import check_overrides

    with pytest.raises(ValueError, match="no past forecasts"):
        check_overrides({"error_scenario_days": 3})
    check_overrides({"error_scenario_days": 0, "scenario_spread": 0.9})
