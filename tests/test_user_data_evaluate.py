"""``picogrid evaluate --data FILE`` on the example week (issue 29 point 3): a time split, the
baselines in the same run, the clear errors; ``tick_days(hold=True)`` for a coarser file."""

import io
import pathlib

import numpy as np
import pandas as pd
import pytest

from picogrid.edge.evaluation import command, user_evaluate
from picogrid.models import user_data

REPO = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "home-week.csv"
#: the example's sun: the PV's site (Colorado, 1500 m of altitude fits its clear-sky data best)
#: moved to the file's +01:00 clock (docs/own-data.md)
LOC = dict(latitude=39.0, longitude=16.0, altitude=1500.0)


def test_a_coarser_file_is_held_over_the_ticks_only_when_asked():
    data = user_data.load_user_data(EXAMPLE)
    with pytest.raises(ValueError, match="not a whole multiple"):
        user_data.tick_days(data, 288)
    frame, dropped = user_data.tick_days(data, 288, hold=True)
    assert dropped == [] and len(frame) == 7 * 288
    pv = frame["pv_available_w"].to_numpy().reshape(-1, 3)      # three 5-min ticks per 15-min sample
    assert (pv == pv[:, :1]).all()
    np.testing.assert_allclose(pv[:, 0], data.frame["pv_available_w"].to_numpy())


def test_too_few_days_for_the_default_history_says_what_to_pass(capsys):
    rc = command.main(["--data", str(EXAMPLE), "--latitude", "39", "--longitude", "16"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "7 whole consecutive day(s)" in err and "9 history day(s)" in err and "--history-days" in err
    with pytest.raises(ValueError, match="at least 2"):
        user_evaluate.prepare(EXAMPLE, user_evaluate.load_site_file()[0], 39, 16, history_days=1)


def test_data_flags_need_data_and_data_needs_a_location(capsys):
    with pytest.raises(SystemExit):
        command.main(["--latitude", "39", "--days", "1"])
    assert "only with --data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        command.main(["--data", str(EXAMPLE)])
    assert "--latitude" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        command.main(["--data", str(EXAMPLE), "--latitude", "39", "--longitude", "16", "--profile", "lab"])


def test_scaling_to_the_site_reads_the_history_days_only(tmp_path):
    site = user_evaluate.load_site_file()[0]
    raw = pd.read_csv(EXAMPLE)
    changed = raw.copy()
    last = changed["timestamp"].str.startswith("2013-07-21")
    changed.loc[last, "pv_kw"] *= 3                            # a scored day far brighter
    changed.to_csv(tmp_path / "bright.csv", index=False)
    got = {}
    for name, path in (("as is", EXAMPLE), ("bright", tmp_path / "bright.csv")):
        frame, hist, n, notes = user_evaluate.prepare(path, site, 39, 16, history_days=4, scale="site")
        assert (hist, n) == (4, 3)
        got[name] = [x for x in notes if x.startswith("scaled")][0]
    assert got["as is"] == got["bright"]                     # the factors never saw the scored days
    assert "PV x" in got["as is"] and "load3_demand_w x" in got["as is"]


def test_one_scored_day_with_the_baselines_in_the_same_run():
    res = user_evaluate.evaluate_data(EXAMPLE, history_days=4, n_days=1, compare=False, **LOC)
    assert res["history"] == ["2013-07-15", "2013-07-16", "2013-07-17", "2013-07-18"]
    assert res["days"] == ["2013-07-19"]
    c = {p: float(v[0]) for p, v in res["costs"].items()}
    assert set(c) == {"naive", "perfect_foresight", "mpc_perfect_forecast", "mpc_own", "dayahead_own",
                      "mpc_seasonal_naive", "mpc_persistence"}
    assert all(np.isfinite(list(c.values())))
    for p, v in c.items():                                   # nothing beats the perfect-foresight optimum
        assert v >= c["perfect_foresight"] - 1e-6 * abs(c["perfect_foresight"]), p
    assert c["mpc_own"] < c["naive"]
    assert res["factors"] == {}                              # the shipped home site is the models' scale
    for s, m in res["skill"].items():
        assert set(m) == {"own", "seasonal_naive", "persistence"} and all(np.isfinite(list(m.values()))), s
    out = io.StringIO()
    user_evaluate.report_data(res, out)
    text = out.getvalue()
    assert "savings capture" in text and "mpc_seasonal_naive" in text and "held over the site's 300 s ticks" in text
    assert "nothing fitted on the file" in text


def _lab_site():
    import tomllib

    with open(REPO / "edge" / "sites" / "lab.toml", "rb") as f:
        return tomllib.load(f)


def test_bench_days_scale_the_run_day_by_its_history_only(tmp_path):
    from picogrid.models import user_scenario

    site = _lab_site()
    frame, notes = user_scenario.bench_days(EXAMPLE, site, 39, 16, 1500, history_days=2, max_history_days=9)
    days = list(dict.fromkeys(frame["day"]))
    assert days[-1] == "2013-07-21" and len(days) == 7 and len(frame) == 7 * 60     # 6 history days: all the file has
    assert "6 days of the 9" in notes[0] and "held over its interval" in notes[0]
    assert frame["sun"].between(0, 1).all() and frame["pv_available_w"].max() <= site["pv"]["capability_w"] + 1e-9
    raw = pd.read_csv(EXAMPLE)
    raw.loc[raw["timestamp"].str.startswith("2013-07-21"), ["pv_kw", "import_price_per_kwh"]] *= 5
    raw.to_csv(tmp_path / "odd-last-day.csv", index=False)
    _, notes5 = user_scenario.bench_days(tmp_path / "odd-last-day.csv", site, 39, 16, 1500, history_days=2,
                                         max_history_days=9)
    assert notes5[1] == notes[1]                                   # same factors: the run day is not read
    with pytest.raises(ValueError, match="needs 2 whole consecutive day"):
        user_scenario.bench_days(EXAMPLE, site, 39, 16, day="2013-07-16", history_days=2)
    with pytest.raises(ValueError, match="not a whole day"):
        user_scenario.bench_days(EXAMPLE, site, 39, 16, day="2013-08-01")


def test_demo_runs_a_day_of_the_file_on_the_bench_and_states_the_scaling(tmp_path):
    """``picogrid demo --data`` on two ticks of the example's last day (like test_e2e's demo run)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "picogrid.cli", "demo", "--exit", "--ticks", "2", "--tick-s", "1.0",
           "--run-dir", str(tmp_path), "--port", "0", "--no-perfect-bench", "--data", str(EXAMPLE),
           "--latitude", "39", "--longitude", "16", "--altitude", "1500"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "savings capture" in run.stdout and "your data (demo --data)" in run.stdout, run.stdout
    assert "run day 2013-07-21" in run.stdout and "sun = PV /" in run.stdout and "prices x" in run.stdout
    assert (tmp_path / "scenario-data-2013-07-21-60.json").is_file()
    bad = subprocess.run(cmd[:-6] + ["--latitude", "39"], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--longitude" in bad.stderr
