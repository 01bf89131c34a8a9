"""End to end: six MicroPython boards on pseudo-terminals, the plant, the edge and its store.

A short real day (12 ticks of 2 h of 2013-07-16, each run in 1.5 s on the bench) through
every layer; the assertions read only the SQLite file the edge wrote, as the dashboard does.
"""

import json
import sqlite3

import pytest

from picogrid.hil.day import Day, load_site

pytestmark = pytest.mark.e2e

N_TICKS = 12
# Bus energy balance tolerance per tick: sensor quantisation (INA219 0.1 mA, ADC 4.8 mV) and
# the few-ms skew between the boards' tick-boundary snapshots, at <= 4 W of throughput.
BALANCE_ABS_J = 0.05
BALANCE_REL = 0.02


@pytest.fixture(scope="module")
def day_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("e2e")
    site = load_site(tick_s=1.5, n_ticks=N_TICKS, horizon=N_TICKS)
    with Day(site, run_dir, day="2013-07-16", perfect_bench=True) as day:
        summary = day.run()
    conn = sqlite3.connect(str(run_dir / "picogrid.sqlite"))
    conn.row_factory = sqlite3.Row
    yield conn, summary, run_dir
    conn.close()


def test_telemetry_from_all_six_boards(day_run):
    conn, _, _ = day_run
    counts = dict(conn.execute("SELECT board, count(*) FROM telemetry GROUP BY board").fetchall())
    assert set(counts) == {"pv", "storage", "grid", "load1", "load2", "load3"}
    # periodic telemetry (4 Hz nominal; fewer when the CPU is contended) plus one
    # tick-boundary snapshot per tick: at least two reports per board per tick
    assert min(counts.values()) >= N_TICKS * 2
    roles = dict(conn.execute("SELECT board, role FROM board").fetchall())
    assert roles == {n: n for n in counts}


def test_every_setpoint_acknowledged(day_run):
    conn, _, _ = day_run
    rows = conn.execute("SELECT board, tick, acked FROM setpoint").fetchall()
    assert len(rows) == 6 * (N_TICKS + 1)     # one per board per tick, plus the closing round
    assert all(r["acked"] for r in rows), [tuple(r) for r in rows if not r["acked"]]


def test_bus_power_balance_closes_every_tick(day_run):
    conn, _, _ = day_run
    rows = conn.execute("SELECT * FROM dispatch WHERE policy='mpc' ORDER BY tick").fetchall()
    assert len(rows) == N_TICKS
    for r in rows:
        throughput_j = 1.5 * sum(abs(r[c]) for c in ("pv_w", "storage_w", "grid_w", "load1_w",
                                                     "load2_w", "load3_w")) / 2
        assert r["balance_residual_j"] is not None
        assert abs(r["balance_residual_j"]) <= BALANCE_ABS_J + BALANCE_REL * throughput_j, dict(r)


def test_bus_voltage_stays_in_band(day_run):
    conn, _, _ = day_run
    lo, hi = conn.execute("SELECT min(v_bus_v), max(v_bus_v) FROM telemetry WHERE board='grid' "
                          "AND flags & 1 = 0").fetchone()
    assert 7.0 * 0.9 <= lo and hi <= 7.0 * 1.1


def test_mpc_cost_no_higher_than_naive(day_run):
    conn, summary, _ = day_run
    assert summary["ticks_incomplete_mpc"] == 0 and summary["ticks_incomplete_naive"] == 0
    stored = json.loads(conn.execute("SELECT summary_json FROM run").fetchone()[0])
    assert stored["cost_mpc"] == pytest.approx(summary["cost_mpc"])
    assert summary["cost_mpc"] <= summary["cost_naive"], summary
    assert summary["cost_perfect_foresight"] <= summary["cost_naive"] + 1e-6


def test_perfect_foresight_measured_on_a_third_bench(day_run):
    """The MPC on the true future runs on its own bench: its measured cost is the capture's
    reference with every cost measured, and it records only its dispatch."""
    conn, summary, run_dir = day_run
    rows = conn.execute("SELECT * FROM dispatch WHERE policy='mpc_perfect_forecast' ORDER BY tick").fetchall()
    assert [r["tick"] for r in rows] == list(range(N_TICKS)) and summary["ticks_incomplete_mpc_perfect_forecast"] == 0
    assert summary["ticks_fallback_mpc_perfect_forecast"] == 0
    assert summary["bill_mpc_perfect_forecast"] == pytest.approx(sum(r["cost"] for r in rows), abs=0.05)
    assert summary["cost_mpc_perfect_forecast"] <= summary["cost_naive"], summary
    assert summary["savings_capture_vs_mpc_perfect_forecast"] == pytest.approx(
        (summary["cost_naive"] - summary["cost_mpc"]) / (summary["cost_naive"] - summary["cost_mpc_perfect_forecast"]))
    assert (run_dir / "mpc-perfect-forecast-bench").is_dir()
    # the main bench's records stay its own: one decision per tick
    assert conn.execute("SELECT count(*) FROM decision").fetchone()[0] == N_TICKS


def test_decisions_and_forecasts_recorded(day_run):
    conn, _, _ = day_run
    statuses = [r[0] for r in conn.execute("SELECT status FROM decision ORDER BY tick")]
    assert len(statuses) == N_TICKS and all(s.startswith("solved") for s in statuses)
    series = {r[0] for r in conn.execute("SELECT DISTINCT series FROM forecast")}
    assert {"pv_available_w", "load1_demand_w", "import_price_per_j"} <= series
    # the 60-tick models do not fit a 12-tick day: the edge must say it fell back
    sources = {r[0] for r in conn.execute("SELECT DISTINCT forecast_source FROM decision")}
    assert all("seasonal_naive" in s for s in sources)


def test_deferrable_jobs_delivered_by_the_deferrable_board(day_run):
    """The lab site has job slots: half of load3's energy in two windows becomes jobs
    (as in picogrid evaluate); load3 delivers them on top of its demand, inside the windows."""
    conn, summary, _ = day_run
    from picogrid.edge.sources.signals import job_windows

    windows = job_windows(N_TICKS)
    assert summary["deferrable_jobs"] == len(windows)
    rows = conn.execute("SELECT tick, deferrable_w, load3_w, load3_demand_w FROM dispatch "
                        "WHERE policy='mpc' ORDER BY tick").fetchall()
    inside = {t for a, b in windows for t in range(a, b)}
    assert all((r["deferrable_w"] or 0.0) == 0.0 for r in rows if r["tick"] not in inside)
    # the metered job energy is the board's energy beyond its demand, never more
    for r in rows:
        assert r["deferrable_w"] <= max(-r["load3_w"] - r["load3_demand_w"], 0.0) + 1e-9
    assert summary["deferrable_energy_j"] > 0
    # delivered, up to the LED's tracking at the last tick of a window
    assert summary["deferrable_shortfall_j"] <= 0.05 * summary["deferrable_energy_j"], summary


def test_demo_command_runs_its_three_benches(tmp_path):
    """``picogrid demo`` itself (what ``make demo`` runs), on a two-tick day: the CLI's glue to
    the benches and the summary lines, including the third bench's."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "picogrid.cli", "demo", "--exit", "--ticks", "2", "--tick-s", "1.0",
           "--run-dir", str(tmp_path), "--port", "0"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "MPC, perfect fcst" in run.stdout and "all measured" in run.stdout, run.stdout
    assert (tmp_path / "mpc-perfect-forecast-bench").is_dir() and (tmp_path / "dispatch.png").is_file()
    from picogrid import cli

    assert cli.build_parser().parse_args(["demo", "--no-perfect-bench"]).no_perfect_bench
