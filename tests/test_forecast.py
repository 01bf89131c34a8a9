"""Feature builder, quantile network, ONNX export, evaluation metrics, online band recalibration
and the edge Forecaster (models/features.py, models/qnet.py, models/train.py, models/evaluate.py,
models/recalibrate.py, edge/forecasting/forecast.py)
on real scenario days."""

import json
import shutil

import numpy as np
import pytest
from onnx import TensorProto, helper

from picogrid.edge.forecasting.forecast import Forecaster, default_artifact_dir
from picogrid.models import features as F
from picogrid.models import evaluate, scenario, train
from picogrid.models import recalibrate
from picogrid.models.qnet import QuantileNet, bucket_of, calibration_offsets, pinball_loss
from picogrid.models.recalibrate import OnlineBandTracker, calendar_elapsed
from picogrid.models.stepnet import StepQuantileNet

N = F.HORIZON


@pytest.fixture(scope="session")
def days():
    # three real test days: two of history, forecast from the start of the third
    return scenario.build_bench_days("2013-07-09", 3)


def _inputs(days, start):
    """History up to tick ``start`` (exclusive), calendar and clear-sky of the next N ticks."""
    history = {s: days[s].to_numpy()[:start] for s in F.SERIES}
    row = days.iloc[start]
    calendar = {"tick": int(row["tick"]), "day_of_year": int(row["day_of_year"]),
                "weekday": int(row["weekday"]), "n_ticks": 60}
    return history, calendar, days["clearsky_ghi_w_m2"].to_numpy()[start:start + N]


@pytest.fixture(scope="session")
def forecaster():
    return Forecaster()


def test_loads_committed_artefacts(forecaster):
    assert forecaster.series == F.SERIES and forecaster.horizon == 60
    assert set(forecaster.models) == set(F.SERIES)
    total = sum(p.stat().st_size for p in default_artifact_dir().rglob("*") if p.is_file())
    assert total <= 5 * 1024 * 1024   # every profile's graphs, cards and fan charts
    for card in forecaster.models.values():
        # folded float32 graph vs the numpy network, stated in the card, relative to the data scale
        assert card["onnx_vs_numpy_max_abs_diff_rel_to_scale"] < 1e-4
        m = card["metrics_test"]
        assert {"mae", "rmse", "pinball_mean", "coverage_p10_p90"} <= set(m["model"])
        for base in ("seasonal_naive", "persistence"):
            assert {"mae", "rmse", "pinball_mean"} <= set(m[base])
        assert card["training"]["command"].startswith("picogrid train --profile lab")


def test_forecast_shapes_order_and_bounds(forecaster, days):
    out = forecaster.forecast(*_inputs(days, 90))
    assert set(out) == set(F.SERIES)
    assert forecaster.source == {s: "onnx" for s in F.SERIES}
    for s, fan in out.items():
        assert sorted(fan) == [0.1, 0.5, 0.9]
        assert all(v.shape == (N,) and np.isfinite(v).all() for v in fan.values())
        assert np.all(fan[0.1] <= fan[0.5]) and np.all(fan[0.5] <= fan[0.9])
        if s in F.NON_NEGATIVE:
            assert np.all(fan[0.1] >= 0)
    # the fan is not degenerate: P90 above P10 on average
    assert np.mean(out["import_price_per_j"][0.9] - out["import_price_per_j"][0.1]) > 0.05


def test_pv_forecast_dark_at_night_and_sunny_by_day(forecaster, days):
    history, calendar, cs = _inputs(days, 120)  # from midnight of the third day
    p50 = forecaster.forecast(history, calendar, cs)["pv_available_w"][0.5]
    night, noon = cs == 0, cs > 0.8 * cs.max()
    assert p50[night].max() < 0.3 and p50[noon].mean() > 1.0  # [W] on a 4 W bench


def test_empty_dir_falls_back_to_seasonal_naive(tmp_path, days):
    fc = Forecaster(tmp_path)
    assert fc.models == {}
    history, calendar, cs = _inputs(days, 100)
    out = fc.forecast(history, calendar, cs)
    for s in F.SERIES:
        assert fc.source[s] == "seasonal_naive:no model"
        yesterday = days[s].to_numpy()[100 - 60:100]  # same tick yesterday, step by step
        for q in F.QUANTILES:
            np.testing.assert_allclose(out[s][q], np.maximum(yesterday, 0) if s in F.NON_NEGATIVE else yesterday)


def test_n_ticks_mismatch_falls_back(forecaster, days):
    history, calendar, cs = _inputs(days, 100)
    calendar = dict(calendar, n_ticks=30, tick=calendar["tick"] % 30)
    out = forecaster.forecast(history, calendar, cs)
    assert all(src.startswith("seasonal_naive:model trained for n_ticks=60") for src in forecaster.source.values())
    np.testing.assert_allclose(out["load3_demand_w"][0.5][:30], days["load3_demand_w"].to_numpy()[70:100])


def _copy_artefacts(dst):
    for p in default_artifact_dir().glob("*.*"):   # the lab graphs and cards (not site/)
        shutil.copy(p, dst / p.name)


def test_shape_mismatch_is_rejected_at_startup(tmp_path):
    _copy_artefacts(tmp_path)
    # a load card pointing at the PV graph: 131 features where the card/builder want 71
    card = json.loads((tmp_path / "load1_demand_w.json").read_text())
    card["onnx_file"] = "pv_available_w.onnx"
    (tmp_path / "load1_demand_w.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="inputs"):
        Forecaster(tmp_path)


def test_card_horizon_mismatch_is_rejected(tmp_path):
    _copy_artefacts(tmp_path)
    card = json.loads((tmp_path / "load2_demand_w.json").read_text())
    card["outputs"][0]["shape"] = [None, 3, 48]
    (tmp_path / "load2_demand_w.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="outputs"):
        Forecaster(tmp_path)


def test_model_that_raises_falls_back(tmp_path, days):
    _copy_artefacts(tmp_path)
    # same declared signature as the real load3 graph, but a reshape that fails at run time
    n = F.n_features("load3_demand_w")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["features", "shape"], ["r"]),
         helper.make_node("Identity", ["r"], ["quantiles"]),
         helper.make_node("Identity", ["start_tick"], ["unused"])],
        "broken",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n]),
         helper.make_tensor_value_info("start_tick", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("quantiles", TensorProto.FLOAT, [None, 3, N])],
        initializer=[helper.make_tensor("shape", TensorProto.INT64, [3], [-1, 3, N])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "load3_demand_w.onnx").write_bytes(model.SerializeToString())
    fc = Forecaster(tmp_path)
    history, calendar, cs = _inputs(days, 100)
    out = fc.forecast(history, calendar, cs)
    assert fc.source["load3_demand_w"].startswith("seasonal_naive:")
    assert fc.source["load1_demand_w"] == "onnx"
    np.testing.assert_allclose(out["load3_demand_w"][0.5], days["load3_demand_w"].to_numpy()[40:100])


def test_bad_history_is_a_clear_error(forecaster, days):
    history, calendar, cs = _inputs(days, 100)
    del history["load2_demand_w"]
    with pytest.raises(ValueError, match="load2_demand_w"):
        forecaster.forecast(history, calendar, cs)
    history, calendar, cs = _inputs(days, 30)  # 30 ticks: not even seasonal naive
    with pytest.raises(ValueError, match="n_ticks"):
        forecaster.forecast(history, calendar, cs)


def test_runtime_features_equal_training_windows(days):
    v = days["pv_available_w"].to_numpy()
    cs = days["clearsky_ghi_w_m2"].to_numpy()
    X, Y, tk = F.training_windows("pv_available_w", v, days["tick"], days["day_of_year"], days["weekday"],
                                  60, cs, starts=[77])
    history, calendar, cs_h = _inputs(days, 77)
    x = F.build_features("pv_available_w", history["pv_available_w"], calendar, cs_h)
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(Y[0], v[77:77 + N])
    assert tk[0] == 17 and x.shape == (1, F.n_features("pv_available_w"))


def _fit_small(series, days_frame, seed=0, epochs=8):
    d = F.profile_dims("lab")
    X, Y, tk = F.training_windows(series, days_frame[series], days_frame["tick"], days_frame["day_of_year"],
                                  days_frame["weekday"], 60, days_frame["clearsky_ghi_w_m2"],
                                  weather={k: days_frame[k].to_numpy() for k in F.WEATHER_KEYS})
    lag_cols = np.arange(d["n_lags"])
    level = lag_cols[-60:] if series in train.DELEVEL else None
    net = QuantileNet(F.QUANTILES, lag_cols, level, n_relu=16, n_linear=8, seed=seed)
    net.fit(X, Y, X[::7], Y[::7], epochs=epochs)
    return net, X, Y, tk


@pytest.fixture(scope="module")
def week():
    return scenario.build_bench_days("2013-07-01", 8)


@pytest.mark.parametrize("series", ["pv_available_w", "import_price_per_j"])   # plain and de-levelled
def test_onnx_export_matches_numpy_network(week, series):
    net, X, Y, tk = _fit_small(series, week)
    offsets = _assert_onnx_matches_numpy(net, X, Y, tk)
    assert np.all(offsets[:, 1] == 0)   # the median is not shifted


def _assert_onnx_matches_numpy(net, X, Y, tk):
    """The exported graph (calibration offsets included) equals the numpy network; returns the
    offsets. float32 folded graph vs float64 preprocessing: <= 1e-4 of the data scale."""
    offsets = calibration_offsets(Y, net.predict(X), tk, 60, 12, F.QUANTILES)
    blob = net.to_onnx(offsets, 60).SerializeToString()
    got = train.run_onnx(blob, X, tk)
    want = net.predict(X) + offsets[bucket_of(tk, 12, 60)]
    assert got.shape == (len(X), 3, N)
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(Y))
    return offsets


def test_training_is_deterministic_with_a_seed(week):
    a = _fit_small("load3_demand_w", week, seed=3, epochs=3)[0]
    b = _fit_small("load3_demand_w", week, seed=3, epochs=3)[0]
    c = _fit_small("load3_demand_w", week, seed=4, epochs=3)[0]
    np.testing.assert_array_equal(a.W1, b.W1)
    np.testing.assert_array_equal(a.W2, b.W2)
    assert not np.array_equal(a.W1, c.W1)


def test_quantile_net_learns_input_dependent_quantiles():
    # y = x0 + (0.2 + |x1|) * e, e ~ N(0, 1): the P10..P90 band must widen with |x1|
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6000, 4)).astype(np.float32)
    scale = 0.2 + np.abs(X[:, 1:2])
    Y = X[:, :1] + scale * rng.standard_normal((6000, 3))
    net = QuantileNet(F.QUANTILES, lag_cols=[], n_relu=32, n_linear=4, seed=0)
    net.fit(X[:4000], Y[:4000], X[4000:5000], Y[4000:5000], epochs=60)
    q = net.predict(X[5000:])
    y = Y[5000:]
    for i, tau in enumerate(F.QUANTILES):
        assert abs(np.mean(y < q[:, i]) - tau) < 0.04
    width = (q[:, 2] - q[:, 0]).mean(axis=1)
    wide = np.abs(X[5000:, 1]) > 1.0
    assert width[wide].mean() > 2.0 * width[np.abs(X[5000:, 1]) < 0.3].mean()


def test_calibration_offsets_reach_the_nominal_coverage():
    rng = np.random.default_rng(1)
    y = rng.standard_normal((3000, 5))
    q = np.zeros((3000, 3, 5))                     # a fan of width 0: covers nothing
    tk = rng.integers(0, 60, 3000)
    off = calibration_offsets(y, q, tk, 60, 6, F.QUANTILES)
    fixed = q + off[bucket_of(tk, 6, 60)]
    cover = np.mean((y >= fixed[:, 0]) & (y <= fixed[:, 2]))
    assert 0.77 < cover < 0.83
    np.testing.assert_allclose(off[:, 0].mean(), -1.2816, atol=0.1)   # N(0,1) 10 % quantile


def test_metrics_by_hand():
    y = np.array([[1.0, 2.0]])
    fan = np.array([[[0.0, 2.5], [1.0, 3.0], [2.0, 4.0]]])   # P10, P50, P90 per step
    m = evaluate.fan_metrics(y, fan)
    assert m["mae"] == pytest.approx(0.5) and m["rmse"] == pytest.approx(np.sqrt(0.5))
    assert m["coverage_p10_p90"] == pytest.approx(0.5)       # step 1 covered, step 2 below P10
    # pinball at 0.1: (0.1*1 + 0.9*0.5) / 2
    assert m["pinball"]["0.1"] == pytest.approx(0.275)
    assert pinball_loss([1.0], [3.0], 0.9) == pytest.approx(0.2)
    b = evaluate.baselines(np.arange(10.0), [6], n_ticks=3, horizon=4)
    np.testing.assert_array_equal(b["seasonal_naive"][0], [3, 4, 5, 3])
    np.testing.assert_array_equal(b["persistence"][0], [5, 5, 5, 5])


def test_runtime_weather_features_equal_training_windows(days):
    v = days["pv_available_w"].to_numpy()
    wx = {k: days[k].to_numpy() for k in F.WEATHER_KEYS}
    X, _, _ = F.training_windows("pv_available_w", v, days["tick"], days["day_of_year"], days["weekday"], 60,
                                 days["clearsky_ghi_w_m2"], starts=[100], weather=wx)
    history, calendar, cs = _inputs(days, 100)
    history.update({k: a[:100] for k, a in wx.items()})
    x = F.build_features("pv_available_w", history["pv_available_w"], calendar, cs, weather=history)
    np.testing.assert_allclose(x, X, rtol=1e-6)
    assert x[0, -4] == 1.0 and x[0, -3] == pytest.approx(wx["ghi_w_m2"][40:100].mean(), rel=1e-5)


def test_feature_builder_rejects_bad_input(days):
    history, calendar, cs = _inputs(days, 100)
    with pytest.raises(ValueError, match="need >= 60"):
        F.build_features("load1_demand_w", history["load1_demand_w"][:10], calendar)
    with pytest.raises(ValueError, match="clearsky"):
        F.build_features("pv_available_w", history["pv_available_w"], calendar, cs[:5])
    with pytest.raises(ValueError, match="tick"):
        F.build_features("load1_demand_w", history["load1_demand_w"], dict(calendar, tick=60))
    with pytest.raises(ValueError, match="unknown series"):
        F.feature_names("load4_demand_w")


@pytest.fixture(scope="module")
def site_days():
    return scenario.build_bench_days("2013-07-09", 3, n_ticks=288, bench=train.PROFILE_BENCH["site"])


def test_site_profile_forecasts_288_steps_for_every_series(site_days):
    fc = Forecaster(profile="site")
    assert fc.profile == "site" and fc.horizon == 288 and set(fc.models) == set(F.SERIES)
    start = 2 * 288 + 100
    history = {s: site_days[s].to_numpy()[:start] for s in F.SERIES}
    row = site_days.iloc[start]
    calendar = {"tick": int(row["tick"]), "day_of_year": int(row["day_of_year"]), "weekday": int(row["weekday"]),
                "n_ticks": 288}
    cs = np.concatenate([site_days["clearsky_ghi_w_m2"].to_numpy()] * 2)[start:start + 288]
    out = fc.forecast(history, calendar, cs)
    assert fc.source == {s: "onnx" for s in F.SERIES}
    for s in F.SERIES:
        assert all(out[s][q].shape == (288,) for q in F.QUANTILES)
    # a 5 kW array: daytime P50 of a July day in kW, zero at night
    assert out["pv_available_w"][0.5][cs > 0.8 * cs.max()].mean() > 1000.0
    assert out["pv_available_w"][0.5][cs == 0].max() < 300.0


def test_profile_mismatch_and_unknown_profile_are_clear_errors():
    with pytest.raises(ValueError, match="profile"):
        Forecaster(default_artifact_dir("lab"), profile="site")
    with pytest.raises(ValueError, match="unknown profile"):
        Forecaster(profile="home")


def test_evaluate_without_artefacts_says_so(tmp_path, capsys):
    assert evaluate.main(["--artifacts", str(tmp_path)]) == 1
    assert "no model cards" in capsys.readouterr().err


# -- online band recalibration (models/recalibrate.py) --------------------------------------------

def _run_tracker(values, fans, lr, horizon):
    tr = OnlineBandTracker(horizon, lr)
    return np.stack([tr.adjust(fans[t], None if t == 0 else 1, values[:t]) for t in range(len(fans))]), tr


def test_tracker_restores_tail_rates_under_drift():
    # the truth's spread doubles after calibration: a static N(0,1) band misses ~32 % of the time
    rng = np.random.default_rng(5)
    H, T = 12, 6000
    y = 2.0 * rng.standard_normal(T + H)
    fan = np.tile(np.array([-1.2816, 0.0, 1.2816])[:, None], (1, H))
    fans = np.repeat(fan[None], T, axis=0)
    target = np.stack([y[t:t + H] for t in range(T)])
    static_cover = np.mean((target >= fans[:, 0]) & (target <= fans[:, 2]))
    adj, tr = _run_tracker(y, fans, 0.01, H)
    late = slice(T // 2, T)   # after the tracker has settled
    cover = np.mean((target[late] >= adj[late, 0]) & (target[late] <= adj[late, 2]))
    assert static_cover < 0.55 and 0.77 < cover < 0.83
    np.testing.assert_allclose(np.exp(tr.log_factors), 2.0, rtol=0.2)   # the band doubled
    np.testing.assert_array_equal(adj[:, 1], fans[:, 1])                # P50 untouched
    assert np.all(adj[:, 0] <= adj[:, 1]) and np.all(adj[:, 1] <= adj[:, 2])


def test_tracker_is_causal_and_resets_on_a_step_back():
    rng = np.random.default_rng(6)
    H = 10
    y = rng.standard_normal(200)
    fans = np.repeat(np.array([[-0.5] * H, [0.0] * H, [0.5] * H])[None], 200, axis=0)
    a, _ = _run_tracker(y, fans, 0.05, H)
    y2 = y.copy()
    y2[120:] += 50.0                      # a different future from tick 120 on
    b, _ = _run_tracker(y2, fans, 0.05, H)
    np.testing.assert_array_equal(a[:121], b[:121])   # fan issued at 120 has only seen y[:120]
    assert not np.array_equal(a[121:], b[121:])
    tr = OnlineBandTracker(H, 0.05)
    for t in range(50):
        tr.adjust(fans[t], None if t == 0 else 1, y[:t])
    assert tr.n_updates == 49 and np.any(tr.log_factors != 0)
    same = tr.adjust(fans[0], 0, y[:50])              # same tick again: nothing new to learn
    assert tr.n_updates == 49
    np.testing.assert_array_equal(tr.adjust(fans[0], -5, y[:45]), fans[0])   # back in time: reset
    assert tr.n_updates == 0 and same.shape == (3, H)
    with pytest.raises(ValueError, match="fan must be"):
        tr.adjust(np.zeros((3, H + 1)), 1, y)
    with pytest.raises(ValueError, match="lr > 0"):
        OnlineBandTracker(H, 0.0)


def test_calendar_elapsed():
    cal = {"day_of_year": 365, "tick": 59, "n_ticks": 60}
    assert calendar_elapsed(None, cal) is None
    assert calendar_elapsed((365, 58, 60), cal) == 1
    assert calendar_elapsed((365, 59, 60), {"day_of_year": 1, "tick": 0, "n_ticks": 60}) == 1   # New Year
    assert calendar_elapsed((200, 10, 60), {"day_of_year": 199, "tick": 10, "n_ticks": 60}) is None
    assert calendar_elapsed((200, 10, 60), {"day_of_year": 200, "tick": 10, "n_ticks": 288}) is None


def test_forecaster_online_recalibration_keeps_p50_and_learns(days):
    online, plain = Forecaster(), Forecaster(online_recalibration=False)
    assert plain.trackers == {} and set(online.trackers) == set(recalibrate.TRACKED)
    for start in range(80, 121):
        a = online.forecast(*_inputs(days, start))
        b = plain.forecast(*_inputs(days, start))
        assert online.source == plain.source == {s: "onnx" for s in F.SERIES}
        for s in F.SERIES:
            np.testing.assert_allclose(a[s][0.5], b[s][0.5])
    tracker = online.trackers["load3_demand_w"]
    assert tracker.n_updates == 40 and np.any(tracker.log_factors != 0)
    for s in recalibrate.TRACKED:
        f_lo, f_hi = np.exp(online.trackers[s].log_factors)
        np.testing.assert_allclose(a[s][0.9] - a[s][0.5], (b[s][0.9] - b[s][0.5]) * f_hi, atol=1e-6)
    np.testing.assert_array_equal(a["pv_available_w"][0.1], b["pv_available_w"][0.1])   # PV: static
    online.forecast(*_inputs(days, 90))          # back in time (a replay): the trackers restart
    assert tracker.n_updates == 0


def test_committed_cards_record_static_and_online_coverage(forecaster):
    for s in recalibrate.TRACKED:
        m = forecaster.models[s]["metrics_test"]
        assert {"coverage_p10_p90", "below_p10", "above_p90"} <= set(m["model_static"])
        assert m["online_recalibration"]["lr_per_tick"] == pytest.approx(recalibrate.lr_per_tick(60))
        # same P50 either way: the recalibration only rescales the band
        assert m["model"]["mae"] == pytest.approx(m["model_static"]["mae"])


def test_committed_lab_cards_reproduce_from_their_onnx_files():
    """The figures in the committed lab cards (and so in MODEL_CARD.md) are what the committed
    ONNX files score on the test period, recomputed here, baselines included; the file hashes
    match the cards."""
    import hashlib

    frame, split = train.build_frame("lab")
    starts = train.split_starts(frame["day"].to_numpy(), split, "lab")["test"]
    directory = train.PROFILE_DIRS["lab"]
    for series in F.SERIES:
        card = json.loads((directory / f"{series}.json").read_text())
        blob = (directory / card["onnx_file"]).read_bytes()
        assert hashlib.sha256(blob).hexdigest() == card["onnx_sha256"], series
        got = evaluate.evaluate_series(series, blob, frame, starts, "lab")
        want = card["metrics_test"]
        assert got["n_windows"] == want["n_windows"]
        for key in ("model", "seasonal_naive", "persistence"):
            assert got[key]["mae"] == pytest.approx(want[key]["mae"], rel=1e-6), (series, key)
        assert got["model"]["coverage_p10_p90"] == pytest.approx(want["model"]["coverage_p10_p90"], abs=1e-9)
        assert got["mae_ratio_vs_seasonal_naive"] == pytest.approx(want["mae_ratio_vs_seasonal_naive"], rel=1e-6)


@pytest.mark.parametrize("cal, expect", [
    (dict(tick=10, day_of_year=190, weekday=2, n_ticks=60), dict(tick=11, day_of_year=190, weekday=2)),
    (dict(tick=59, day_of_year=190, weekday=6, n_ticks=60), dict(tick=0, day_of_year=191, weekday=0)),
    (dict(tick=287, day_of_year=365, weekday=1, n_ticks=288), dict(tick=0, day_of_year=1, weekday=2)),
])
def test_next_calendar(cal, expect):
    from picogrid.edge.forecasting.forecast import next_calendar
    got = next_calendar(cal)
    assert {k: got[k] for k in expect} == expect and got["n_ticks"] == cal["n_ticks"]


def test_forecast_from_now_starts_at_the_next_tick_with_now_in_the_history(days):
    """Plan step 0 is the known value; step k >= 1 is the forecast made from the next tick
    with the current tick's known values appended to the history (weather repeated)."""
    from picogrid.edge.forecasting.forecast import forecast_from_now
    fc = Forecaster(online_recalibration=False)        # stateless: the two calls must agree
    start = 90
    history, calendar, _ = _inputs(days, start)
    for s in ("ghi_w_m2", "temp_air_c"):
        history[s] = days[s].to_numpy()[:start]
    now = {s: float(days[s].to_numpy()[start]) for s in F.SERIES}
    clearsky_next = days["clearsky_ghi_w_m2"].to_numpy()[start + 1:start + 1 + N]
    loads = ("load1_demand_w", "load2_demand_w", "load3_demand_w")
    plan_now = {"pv_avail_w": now["pv_available_w"], "import_price_per_j": now["import_price_per_j"],
                "demand_w": [now[s] for s in loads]}
    plan = forecast_from_now(fc, history, plan_now, loads, calendar, clearsky_next)
    shifted = {s: days[s].to_numpy()[1:start + 1] for s in F.SERIES}
    for s in ("ghi_w_m2", "temp_air_c"):
        shifted[s] = np.append(days[s].to_numpy()[1:start], days[s].to_numpy()[start - 1])
    nxt = _inputs(days, start + 1)[1]
    direct = fc.forecast(shifted, nxt, clearsky_next)
    for s in F.SERIES:
        for q in (0.1, 0.5, 0.9):
            assert plan[s][q].shape == (N,)
            assert plan[s][q][0] == now[s]
            np.testing.assert_allclose(plan[s][q][1:], direct[s][q][:-1], rtol=0, atol=0)


# -- per-step features and the step-shared network (load 3) ---------------------------------------

def test_step_features_equal_training_windows_and_read_only_the_past(week):
    s = "load3_demand_w"
    assert s in F.STEP_ALIGNED
    v = week[s].to_numpy()
    start = 3 * 60 + 17
    X, Y, tk = F.training_windows(s, v, week["tick"], week["day_of_year"], week["weekday"], 60, starts=[start])
    row = week.iloc[start]
    cal = {"tick": int(row["tick"]), "day_of_year": int(row["day_of_year"]), "weekday": int(row["weekday"]),
           "n_ticks": 60}
    x = F.build_features(s, v[:start], cal)
    np.testing.assert_array_equal(x, X)
    assert x.shape == (1, F.n_features(s)) == (1, N * len(F.STEP_FEATURE_NAMES))
    steps = x.reshape(N, -1)
    col = {n: i for i, n in enumerate(F.STEP_FEATURE_NAMES)}
    for h in (0, 30, 59):
        assert steps[h, col["same_tick_yesterday"]] == pytest.approx(v[start + h - 60])
        assert steps[h, col["same_tick_day_before"]] == pytest.approx(v[start + h - 120])
        target_tick = (17 + h) % 60
        assert steps[h, col[f"target_hour_{target_tick * 24 // 60}"]] == 1.0
        assert steps[h, col[f"target_weekday_{(int(row['weekday']) + (17 + h) // 60) % 7}"]] == 1.0
    assert steps[0, col["last"]] == pytest.approx(v[start - 1])
    # another future changes nothing
    w = v.copy()
    w[start:] += 10.0
    np.testing.assert_array_equal(F.build_features(s, w[:start], cal), x)
    # one to two days of history: the missing ticks of the day before are yesterday's
    short = F.build_features(s, v[start - 90:start], cal).reshape(N, -1)
    padded = np.concatenate([v[start - 60:start - 30], v[start - 90:start]])
    np.testing.assert_array_equal(short, F.step_features(padded[None], [17], [cal["day_of_year"]],
                                                         [cal["weekday"]], 60, N)[0])
    with pytest.raises(ValueError, match="need >= 60"):
        F.build_features(s, v[start - 59:start], cal)


def _fit_small_step(week, seed=0, epochs=3):
    s = "load3_demand_w"
    X, Y, tk = F.training_windows(s, week[s], week["tick"], week["day_of_year"], week["weekday"], 60)
    net = StepQuantileNet(F.QUANTILES, len(F.STEP_FEATURE_NAMES), n_relu=16, seed=seed)
    return net.fit(X, Y, X[::7], Y[::7], epochs=epochs), X, Y, tk


def test_step_net_onnx_export_matches_numpy_and_is_deterministic(week):
    net, X, Y, tk = _fit_small_step(week)
    _assert_onnx_matches_numpy(net, X, Y, tk)
    again = _fit_small_step(week)[0]
    other = _fit_small_step(week, seed=1)[0]
    np.testing.assert_array_equal(net.W1, again.W1)
    assert not np.array_equal(net.W1, other.W1)
    with pytest.raises(ValueError, match="horizon"):
        net.predict(X[:, :-1])


def test_weekly_step_features_read_the_target_tick_days_before():
    # experimental weekly features of models.select_history: on a ramp every value is its own index
    from picogrid.models.select_history import WEEKLY_FEATURE_NAMES, weekly_step_features

    n, M = 60, 2
    hist = np.tile(np.arange(15 * n, dtype=np.float64), (M, 1))
    x = weekly_step_features(hist, n, n)
    assert x.shape == (M, n, len(WEEKLY_FEATURE_NAMES))
    col = {c: i for i, c in enumerate(WEEKLY_FEATURE_NAMES)}
    L, h = 15 * n, np.arange(n)
    np.testing.assert_array_equal(x[0, :, col["same_tick_7d"]], L + h - 7 * n)
    np.testing.assert_array_equal(x[0, :, col["same_tick_14d"]], L + h - 14 * n)
    np.testing.assert_array_equal(x[0, :, col["same_tick_median_7d"]], L + h - 4 * n)
    np.testing.assert_array_equal(x[0, :, col["same_tick_median_1_7_14d"]], L + h - 7 * n)
    np.testing.assert_allclose(x[0, :, col["same_tick_mean_14d"]], L + h - 7.5 * n)
    assert x[0, 0, col["last_7d_mean"]] == pytest.approx(L - 3.5 * n - 0.5)
    # the +-2 tick window around the last step's tick yesterday (the last past tick) is clipped to the
    # past: ticks L-3, L-2, L-1, L-1, L-1 (mean L-1.6 instead of L-1)
    assert x[0, -1, col["around_tick_mean_7d"]] == pytest.approx(L + n - 1 - 4 * n - 0.6 / 7)
    with pytest.raises(ValueError, match="history"):
        weekly_step_features(hist[:, 1:], n, n)
