"""A user's own time series (models/user_data.py, docs/own-data.md): units, checks, errors.

Every case writes a real file to tmp_path, once as CSV and once as Parquet, and reads it back
through :func:`load_user_data`.
"""

import pathlib

import numpy as np
import pandas as pd
import pytest

from picogrid.models.user_data import DataError, load_user_data

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "home-week.csv"


def _stamps(n, start="2024-06-01T00:00:00+01:00", step_min=15):
    t0 = pd.Timestamp(start)
    return [(t0 + pd.Timedelta(minutes=step_min * k)).isoformat() for k in range(n)]


def _good(n=8):
    """A valid table as columns of strings (what a CSV holds)."""
    return {"timestamp": _stamps(n), "pv_kw": ["0.5"] * n, "load1_w": ["300"] * n, "load2_w": ["120"] * n,
            "import_price_per_kwh": ["25"] * n, "export_price_per_kwh": ["8"] * n}


def _write(cols, tmp_path, fmt):
    """Write ``cols`` (name -> list of str) as CSV text, or as Parquet with numbers typed."""
    if fmt == "csv":
        path = tmp_path / "data.csv"
        names = list(cols)
        lines = [",".join(names)] + [",".join(row) for row in zip(*cols.values())]
        path.write_text("\n".join(lines) + "\n")
        return path
    path = tmp_path / "data.parquet"
    frame = {}
    for name, values in cols.items():
        if name == "timestamp":
            frame[name] = values      # ISO strings, as many tools write them
        else:
            frame[name] = pd.to_numeric(pd.Series(values).replace("", "nan"), errors="coerce")
    pd.DataFrame(frame).to_parquet(path, index=False)
    return path


FORMATS = ("csv", "parquet")


@pytest.mark.parametrize("fmt", FORMATS)
def test_units_become_si_in_the_project_names(tmp_path, fmt):
    cols = _good()
    cols["ghi_w_m2"] = ["500"] * 8
    cols["temp_air_c"] = ["-3.5"] * 8
    d = load_user_data(_write(cols, tmp_path, fmt))
    f = d.frame
    assert list(f.columns) == ["pv_available_w", "load1_demand_w", "load2_demand_w", "import_price_per_j",
                               "export_price_per_j", "ghi_w_m2", "temp_air_c", "gap"]
    assert d.n_loads == 2 and d.step_s == 900 and not d.gaps and not f["gap"].any()
    np.testing.assert_allclose(f["pv_available_w"], 500.0)
    np.testing.assert_allclose(f["import_price_per_j"], 25 / 3.6e6)
    np.testing.assert_allclose(f["temp_air_c"], -3.5)
    assert str(f.index.tz.utcoffset(None)) == "1:00:00"
    assert any("pv_kw -> pv_available_w x 1000" == c for c in d.conversions)


@pytest.mark.parametrize("column, value, per_j", [
    ("import_price_per_j", "2.8", 2.8),                 # c/J, the lab feed's unit
    ("import_price_per_wh", "0.036", 0.036 / 3.6e3),
    ("import_price_per_kwh", "25", 25 / 3.6e6),
    ("import_price_per_mwh", "40", 40 / 3.6e9),         # EUR/MWh, a spot market
])
def test_every_price_unit_without_code(tmp_path, column, value, per_j):
    cols = _good()
    del cols["import_price_per_kwh"], cols["export_price_per_kwh"]
    cols[column] = [value] * 8
    d = load_user_data(_write(cols, tmp_path, "csv"))
    np.testing.assert_allclose(d.frame["import_price_per_j"], per_j)
    assert (d.frame["export_price_per_j"] == 0).all()
    assert any("no export price" in c for c in d.conversions)


def test_currency_factor_turns_euros_into_the_sites_cents(tmp_path):
    cols = _good()
    cols["import_price_per_kwh"] = ["0.25"] * 8
    d = load_user_data(_write(cols, tmp_path, "csv"), currency_factor=100)
    np.testing.assert_allclose(d.frame["import_price_per_j"], 25 / 3.6e6)


def test_single_load_is_load1(tmp_path):
    cols = _good()
    del cols["load1_w"], cols["load2_w"]
    cols["load_kw"] = ["1.2"] * 8
    d = load_user_data(_write(cols, tmp_path, "csv"))
    assert d.n_loads == 1
    np.testing.assert_allclose(d.frame["load1_demand_w"], 1200.0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_gap_flagged_never_filled(tmp_path, fmt):
    cols = _good(10)
    for c in cols:
        del cols[c][4:6]     # rows 5 and 6 (00:00 + 60 and 75 min) missing
    d = load_user_data(_write(cols, tmp_path, fmt))
    f = d.frame
    assert len(f) == 10 and f["gap"].sum() == 2 and f["gap"].iloc[4] and f["gap"].iloc[5]
    assert f.drop(columns="gap").iloc[4:6].isna().all().all()     # NaN, not a later value
    (first, last, n), = d.gaps
    assert n == 2 and first == pd.Timestamp("2024-06-01T01:00:00+01:00") and last == first + pd.Timedelta("15min")
    assert "gaps: 1 (2 samples missing" in "\n".join(d.summary())


def _set(cols, column, row, value):
    cols[column][row - 1] = value
    return cols


# (name, edit of the good table, expected (kind, row, column) in the error)
ERRORS = [
    ("duplicate timestamp", lambda c: _set(c, "timestamp", 4, c["timestamp"][2]),
     ("duplicate timestamp", 4, "timestamp")),
    ("not increasing", lambda c: _set(c, "timestamp", 5, c["timestamp"][1]),
     ("timestamp not increasing", 5, "timestamp")),
    ("no offset", lambda c: _set(c, "timestamp", 3, "2024-06-01T00:30:00"),
     ("timestamp without offset", 3, "timestamp")),
    ("DST change", lambda c: {**c, "timestamp": c["timestamp"][:5] + [
        (pd.Timestamp(t) + pd.Timedelta("1h")).tz_convert("+02:00").isoformat() for t in c["timestamp"][5:]]},
     ("DST jump", 6, "timestamp")),
    ("off the grid", lambda c: _set(c, "timestamp", 6, "2024-06-01T01:20:00+01:00"),
     ("off the grid", 6, "timestamp")),
    ("not a date", lambda c: _set(c, "timestamp", 2, "yesterday"), ("bad timestamp", 2, "timestamp")),
    ("negative power", lambda c: _set(c, "load2_w", 7, "-40"), ("negative power", 7, "load2_w")),
    ("negative PV", lambda c: _set(c, "pv_kw", 1, "-0.01"), ("negative power", 1, "pv_kw")),
    ("infinite", lambda c: _set(c, "load1_w", 3, "inf"), ("non-finite value", 3, "load1_w")),
    ("NaN", lambda c: _set(c, "import_price_per_kwh", 8, "nan"), ("non-finite value", 8, "import_price_per_kwh")),
    ("empty", lambda c: _set(c, "export_price_per_kwh", 2, ""), ("non-finite value", 2, "export_price_per_kwh")),
    ("a 5 MW household", lambda c: _set(c, "pv_kw", 5, "5000"), ("implausible unit", 5, "pv_kw")),
    ("kW under a W name", lambda c: {**c, "load1_w": ["0.3"] * len(c["load1_w"])}, ("implausible unit", 1, "load1_w")),
    ("unknown column", lambda c: {**c, "pv_kW": c.pop("pv_kw")}, ("unknown column", None, "pv_kW")),
    ("missing PV", lambda c: {k: v for k, v in c.items() if k != "pv_kw"}, ("missing column", None, "pv_w")),
    ("missing price", lambda c: {k: v for k, v in c.items() if k != "import_price_per_kwh"},
     ("missing column", None, "import_price_per_kwh")),
    ("missing loads", lambda c: {k: v for k, v in c.items() if not k.startswith("load")},
     ("missing column", None, "load1_w")),
    ("two units", lambda c: {**c, "pv_w": ["500"] * len(c["pv_kw"])}, ("duplicate column", None, "pv_w")),
    ("load hole", lambda c: {**{k: v for k, v in c.items() if k != "load2_w"}, "load3_w": c["load2_w"]},
     ("missing column", None, "load2_w")),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name, edit, expected", ERRORS, ids=[e[0] for e in ERRORS])
def test_error_names_row_and_column(tmp_path, fmt, name, edit, expected):
    cols = edit(_good())
    path = _write(cols, tmp_path, fmt)
    with pytest.raises(DataError) as err:
        load_user_data(path)
    found = [(p.kind, p.row, p.column) for p in err.value.problems]
    assert expected in found, found
    text = str(err.value)
    assert str(path) in text and "nothing loaded" in text and expected[0] in text
    if expected[1] is not None:
        line = f" (line {expected[1] + 1})" if fmt == "csv" else ""
        assert f"row {expected[1]}{line}, column {expected[2]}" in text


def test_every_problem_at_once_and_first_n_per_kind(tmp_path):
    cols = _good(20)
    cols["load1_w"] = ["-1"] * 20
    cols["pv_kw"][2] = "x"
    cols["extra"] = ["1"] * 20
    with pytest.raises(DataError) as err:
        load_user_data(_write(cols, tmp_path, "csv"))
    kinds = [p.kind for p in err.value.problems]
    assert kinds.count("negative power") == 20 and "non-finite value" in kinds and "unknown column" in kinds
    text = str(err.value)
    assert text.count("negative power: row") == 5 and "negative power: ... and 15 more" in text


def test_dst_hint_for_local_time_written_with_a_fixed_offset(tmp_path):
    cols = _good(12)
    # the autumn change written as local clock time with the summer offset: one hour repeats
    cols["timestamp"] = cols["timestamp"][:8] + [(pd.Timestamp(t) - pd.Timedelta("1h")).isoformat()
                                                 for t in cols["timestamp"][8:]]
    with pytest.raises(DataError, match=r"row 9 \(line 10\), column timestamp: 2700 s before row 8 "
                                        r"\(the clock went 1 h back: a DST change"):
        load_user_data(_write(cols, tmp_path, "csv"))


def test_bench_kind_bounds(tmp_path):
    cols = _good()
    cols["pv_kw"] = ["0.004"] * 8    # a 4 W bench PV emulator
    cols["load1_w"] = ["0.8"] * 8
    d = load_user_data(_write(cols, tmp_path, "csv"), kind="bench")
    np.testing.assert_allclose(d.frame["pv_available_w"], 4.0)
    cols["pv_kw"] = ["2"] * 8        # 2 kW is no bench
    with pytest.raises(DataError, match="implausible unit"):
        load_user_data(_write(cols, tmp_path, "csv"), kind="lab")
    with pytest.raises(ValueError, match="kind must be"):
        load_user_data(_write(cols, tmp_path, "csv"), kind="farm")


def test_parquet_with_timezone_aware_timestamps(tmp_path):
    cols = _good()
    frame = pd.DataFrame({k: pd.to_numeric(v) for k, v in cols.items() if k != "timestamp"})
    frame.insert(0, "timestamp", pd.DatetimeIndex(pd.to_datetime(cols["timestamp"])).tz_convert("UTC"))
    frame.to_parquet(tmp_path / "utc.parquet")
    d = load_user_data(tmp_path / "utc.parquet")
    assert len(d.frame) == 8 and str(d.frame.index.tz.utcoffset(None)) == "0:00:00"
    frame["timestamp"] = frame["timestamp"].dt.tz_localize(None)
    frame.to_parquet(tmp_path / "naive.parquet")
    with pytest.raises(DataError, match="timestamp without offset"):
        load_user_data(tmp_path / "naive.parquet")


def test_shipped_example_loads():
    d = load_user_data(EXAMPLE)
    assert len(d.frame) == 7 * 96 and d.n_loads == 3 and not d.gaps and d.step_s == 900
    assert {"ghi_w_m2", "temp_air_c"} <= set(d.frame.columns)
    f = d.frame.drop(columns="gap")
    assert np.isfinite(f.to_numpy()).all() and (f.filter(like="_w").drop(columns="ghi_w_m2") >= 0).all().all()


def test_data_check_command(tmp_path, capsys):
    from picogrid import cli

    assert cli.main(["data", "check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "672 samples of 900 s" in out and "pv_kw -> pv_available_w x 1000" in out
    cols = _good()
    cols["load2_w"][3] = "-5"
    assert cli.main(["data", "check", str(_write(cols, tmp_path, "csv"))]) == 1
    assert "negative power: row 4 (line 5), column load2_w" in capsys.readouterr().err


def test_tick_days_whole_days_only_means_never_later_values(tmp_path):
    from picogrid.models.user_data import tick_days

    n = 96 * 3 + 10                      # three whole days of 15 min, then 10 samples of a fourth
    cols = {"timestamp": _stamps(n, start="2024-06-01T00:00:00+01:00"),
            "pv_w": [str(k % 96) for k in range(n)], "load_w": ["100"] * n, "import_price_per_kwh": ["36"] * n}
    for c in cols:                       # a gap on the second day
        del cols[c][96 + 40]
    d = load_user_data(_write(cols, tmp_path, "csv"))
    frame, dropped = tick_days(d, 24)    # hourly ticks: 4 samples each
    assert dropped == [("2024-06-02", "gap"), ("2024-06-04", "partial")]
    assert list(frame["day"].unique()) == ["2024-06-01", "2024-06-03"] and len(frame) == 48
    first = frame[frame["day"] == "2024-06-01"]
    np.testing.assert_allclose(first["pv_available_w"], [4 * h + 1.5 for h in range(24)])   # mean of its own 4
    assert (frame["load2_demand_w"] == 0).all() and (frame["load3_demand_w"] == 0).all()
    np.testing.assert_allclose(frame["import_price_per_j"], 1e-5)
    assert first["weekday"].iloc[0] == 5 and first["day_of_year"].iloc[0] == 153
    with pytest.raises(ValueError, match="not a whole multiple"):
        tick_days(d, 288)                # 5-min ticks from 15-min samples
