"""Scenario energies calibrated on the forecaster's own errors (picogrid.edge.forecasting.energy_calibration)."""

import json
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from picogrid.edge.evaluation import energy_calibration_fit as fitting
from picogrid.edge.forecasting import energy_calibration as EC
from picogrid.edge.forecasting import scenarios as stochastic
from picogrid.edge.forecasting.forecast import Forecaster, default_artifact_dir
from picogrid.edge.optimizer.mpc_config import MpcConfig
from picogrid.edge.forecasting.scenarios import solve_scenarios

LOADS = ["load1_demand_w", "load2_demand_w", "load3_demand_w"]
QS = (0.1, 0.5, 0.9)


def _fans(rng, n):
    fans = {}
    for s in ["pv_available_w", *LOADS, "import_price_per_j"]:
        v = np.sort(rng.uniform(0.0, 2.0, (3, n)), axis=0)
        fans[s] = dict(zip(QS, v))
    return fans


def _table(rng, n_buckets, n):
    return np.sort(rng.normal(0.0, 0.4, (n_buckets, n, 3)), axis=2)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), tick=st.integers(0, 59), spread=st.floats(0.3, 2.0))
def test_scenario_net_energy_sits_at_the_calibrated_quantiles(seed, tick, spread):
    """Every scenario's net energy (loads - PV) over steps 1..k is the median forecast's plus
    z_q * (summed P10-P90 widths over 1..k), z_q moved ``spread`` of the way from the median's."""
    rng = np.random.default_rng(seed)
    n = 12
    cal = EC.EnergyCalibration(_table(rng, 6, n), QS, 60)
    fans = _fans(rng, n)
    out = cal.energy_series(fans, tick, QS, spread, LOADS)
    mid_net = sum(fans[s][0.5] for s in LOADS) - fans["pv_available_w"][0.5]
    width = sum(fans[s][0.9] - fans[s][0.1] for s in ["pv_available_w", *LOADS])
    z = cal.z[cal.bucket(tick)]
    for i, sc in enumerate(out):
        net = sum(sc[s] for s in LOADS) - sc["pv_available_w"]
        zq = z[1:, 1] + spread * (z[1:, i] - z[1:, 1])
        np.testing.assert_allclose(np.cumsum(net[1:] - mid_net[1:]), zq * np.cumsum(width[1:]), atol=1e-9)
        for s in ["pv_available_w", *LOADS]:
            assert sc[s][0] == fans[s][0.5][0]          # step 0 is known: untouched
    assert cal.bucket(0) == 0 and cal.bucket(59) == 5          # four-hour buckets of the lab day


def test_a_step_without_spread_goes_to_the_loads():
    """Past step 1 every fan is a point (zero width), but the calibrated z still grows with k:
    that change of net energy goes to the loads in equal parts, never to PV, and nothing is
    divided by zero."""
    n = 4
    fans = {s: {q: np.ones(n) for q in QS} for s in ["pv_available_w", *LOADS]}
    fans["load1_demand_w"] = {0.1: np.array([1.0, 0.0, 1.0, 1.0]), 0.5: np.ones(n),
                              0.9: np.array([1.0, 3.0, 1.0, 1.0])}             # width 3 at step 1 only
    z = np.zeros((1, n, 3))
    z[0, :, 2] = [0.0, 0.5, 1.0, 1.5]                  # z_0.9 at steps 1, 2, 3
    sc = EC.EnergyCalibration(z, QS, 60).energy_series(fans, 0, (0.9,), 1.0, LOADS)[0]
    np.testing.assert_allclose(sc["pv_available_w"], 1.0)
    # cumulative width 3 from step 1 on: net deviations 1.5, 3.0, 4.5, so steps of 1.5 each;
    # step 1 goes to load1 (the only width there), steps 2 and 3 a third to each load
    np.testing.assert_allclose(sc["load1_demand_w"], [1.0, 2.5, 1.5, 1.5])
    for s in LOADS[1:]:
        np.testing.assert_allclose(sc[s], [1.0, 1.0, 1.5, 1.5])


def test_quantile_table_repeats_thin_steps_and_refuses_empty_buckets():
    errors = [[[], list(np.linspace(-1, 1, 101)), [0.0] * 5, list(np.linspace(0, 2, 101))]]
    t = fitting.quantile_table(errors, 4, QS, min_samples=30)
    np.testing.assert_allclose(t[0, 1], [-0.8, 0.0, 0.8])
    np.testing.assert_allclose(t[0, 2], t[0, 1])                 # 5 errors: too few, repeated
    np.testing.assert_allclose(t[0, 3], [0.2, 1.0, 1.8])
    with pytest.raises(ValueError, match="bucket 0"):
        fitting.quantile_table([[[], [0.0], [0.0]]], 3, QS, min_samples=30)


def test_file_round_trip_and_bad_files(tmp_path):
    rng = np.random.default_rng(1)
    cal = EC.EnergyCalibration(_table(rng, 2, 5), QS, 60, {"n_days": 3})
    cal.save(tmp_path / "c.json")
    back = EC.EnergyCalibration.load(tmp_path / "c.json")
    np.testing.assert_allclose(back.z, cal.z, atol=1e-6)
    assert back.meta == {"n_days": 3} and back.quantiles == QS
    (tmp_path / "x.json").write_text(json.dumps({"kind": "model_card"}))
    with pytest.raises(ValueError, match="not a scenario energy calibration"):
        EC.EnergyCalibration.load(tmp_path / "x.json")
    with pytest.raises(ValueError, match="include 0.5"):
        EC.EnergyCalibration(np.zeros((1, 5, 2)), (0.1, 0.9), 60)
    with pytest.raises(ValueError, match="non-finite"):
        EC.EnergyCalibration(np.full((1, 5, 3), np.nan), QS, 60)


def test_forecaster_loads_its_calibration_and_refuses_a_mismatch(tmp_path):
    assert Forecaster(profile="lab").energy_calibration is not None        # committed next to the cards
    assert Forecaster(profile="site").energy_calibration.horizon == 288
    EC.EnergyCalibration(np.zeros((6, 30, 3)), QS, 60).save(tmp_path / EC.FILE_NAME)
    with pytest.raises(ValueError, match="horizon 30"):
        Forecaster(artifact_dir=tmp_path, profile="lab")


def _scenario_cfg(n):
    """A small three-scenario lab-like config of horizon ``n`` with calibrated energies on."""
    return MpcConfig(horizon=n, dt_s=5.0, e_min_j=0, e_max_j=10, p_ch_max_w=1, p_dis_max_w=1, eta_ch=0.9,
                     eta_dis=0.9, p_imp_max_w=5, p_exp_max_w=5, n_loads=3, voll_per_j=[3.0, 2.0, 1.0],
                     scenario_weights=(0.3, 0.4, 0.3), scenario_quantiles=QS, scenario_correlation=0.5,
                     scenario_energy_spread=1.0)


def test_solve_scenarios_takes_the_calibrated_energies_or_warns(caplog):
    rng = np.random.default_rng(3)
    n = 8
    fans = _fans(rng, n)
    cfg = _scenario_cfg(n)
    cal = EC.EnergyCalibration(np.full((6, n, 3), [-5.0, 0.0, 5.0]), QS, 60)
    want = cal.energy_series(fans, 10, QS, 1.0, LOADS)
    got = solve_scenarios(fans, cfg, LOADS, 0.5, calibration=cal, tick=10)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g["pv_avail_w"], np.maximum(w["pv_available_w"], 0.0))
        np.testing.assert_allclose(g["demand_w"], np.maximum(np.column_stack([w[s] for s in LOADS]), 0.0))
    stochastic._warned.clear()                      # warned once per process: make this the first time
    with caplog.at_level(logging.WARNING, logger="picogrid.edge.forecasting.scenarios"):
        plain = solve_scenarios(fans, cfg, LOADS, 0.5)
    assert "no scenario energy calibration" in caplog.text
    assert not np.allclose(plain[2]["demand_w"], got[2]["demand_w"])


@pytest.mark.parametrize("profile", ["lab", "site"])
def test_committed_calibration_is_what_the_command_fits(profile):
    """The file next to each profile's cards is reproducible: refit on its days, same quantiles."""
    committed = EC.EnergyCalibration.load(default_artifact_dir(profile) / EC.FILE_NAME)
    assert committed.meta["profile"] == profile
    refit = fitting.fit(profile, committed.meta["first_day"], committed.meta["n_days"])
    np.testing.assert_allclose(refit.z, committed.z, atol=1e-4)
    assert refit.meta["samples_step_1"] == committed.meta["samples_step_1"]


def test_a_calibration_for_another_horizon_keeps_the_correlation_construction(caplog):
    """A day shorter than the models' (the 12-tick HIL day of test_e2e) cannot use step
    quantiles fitted on 60-tick days: warned, and planned as without the calibration."""
    rng = np.random.default_rng(4)
    n = 8
    fans = _fans(rng, n)
    cfg = _scenario_cfg(n)
    other = EC.EnergyCalibration(np.full((6, 60, 3), [-5.0, 0.0, 5.0]), QS, 60)
    stochastic._warned.clear()
    with caplog.at_level(logging.WARNING, logger="picogrid.edge.forecasting.scenarios"):
        got = solve_scenarios(fans, cfg, LOADS, 0.5, calibration=other, tick=3)
    assert "horizon of 8" in caplog.text
    plain = solve_scenarios(fans, cfg.replace(scenario_energy_spread=None), LOADS, 0.5)
    for g, p in zip(got, plain):
        np.testing.assert_allclose(g["demand_w"], p["demand_w"])
