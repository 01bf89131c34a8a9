"""Deferrable jobs ledger (edge/sources/deferrable.py) and its use in the report."""

import numpy as np
import pytest

from picogrid.edge.sources.deferrable import JobLedger, as_job_array


def test_earliest_deadline_first_and_live_view():
    ledger = JobLedger([{"start": 2, "end": 8, "energy": 10.0}, {"start": 0, "end": 4, "energy": 3.0}])
    assert ledger.need_w(0, 1.0).tolist() == [0.0, 3.0]     # only the open job asks
    # 5 J at tick 3: the job due at 4 takes its 3 J first, the rest goes to the later one
    assert ledger.deliver(3, 5.0, 1.0) == pytest.approx(5.0)
    assert ledger.delivered_j.tolist() == [2.0, 3.0]
    assert ledger.live(3) == [{"start": -1.0, "end": 5.0, "energy": 8.0}]
    # energy nobody asked for is not credited
    assert ledger.deliver(5, 20.0, 1.0) == pytest.approx(8.0)
    assert ledger.shortfall_j() == 0.0 and ledger.live(5) == []


def test_live_is_limited_to_the_slots_by_deadline():
    ledger = JobLedger([(0, 9, 1.0), (0, 3, 1.0), (0, 5, 1.0)])
    assert [j["end"] for j in ledger.live(0, limit=2)] == [3.0, 5.0]


def test_replace_keeps_what_known_jobs_got():
    ledger = JobLedger([(0, 5, 4.0)])
    ledger.deliver(0, 1.5, 1.0)
    ledger.replace([{"start_tick": 6, "end_tick": 9, "energy_j": 2.0}, {"start": 0, "end": 5, "energy": 4.0}])
    assert ledger.delivered_j.tolist() == [0.0, 1.5]
    assert ledger.shortfall_j() == pytest.approx(4.5)


@pytest.mark.parametrize("bad", [[(3, 2, 1.0)], [(-1, 2, 1.0)], [(0, 2, -1.0)], [(0, 2, float("nan"))]])
def test_bad_jobs_are_refused(bad):
    with pytest.raises(ValueError, match="deferrable job"):
        as_job_array(bad)


def test_report_does_not_count_job_energy_as_served_and_prices_the_shortfall():
    from picogrid.edge.optimizer import economics
    from picogrid.edge.control import report
    from picogrid.edge.optimizer.mpc_config import config_from_site
    from picogrid.edge.site import load_site

    # the site's values at the rows' price scale (1 c/J import): edge/optimizer/economics.py
    cfg = economics.resolve(config_from_site(load_site()), [1.0] * 4, [0.5] * 4)
    rows = []
    for t in range(4):
        jobs_w = 0.5 if t in (1, 2) else 0.0
        rows.append({"grid_w": 0.0, "storage_w": 0.0, "pv_w": 0.0, "import_price_per_j": 1.0,
                     "export_price_per_j": 0.5, "load1_w": -0.2, "load2_w": -0.2,
                     "load3_w": -0.2 - jobs_w, "load1_demand_w": 0.2, "load2_demand_w": 0.2,
                     "load3_demand_w": 0.2, "storage_energy_j": 0.0, "deferrable_w": jobs_w})
    job_j = 0.5 * 2 * cfg.dt_s
    whole = report.Deferrable("load3", 1.0, [{"start": 0, "end": 4, "energy": job_j}])
    short = report.Deferrable("load3", 1.0, [{"start": 0, "end": 4, "energy": job_j + 2.0}])
    c_whole, c_short = report.measured_costs(rows, cfg, whole), report.measured_costs(rows, cfg, short)
    assert c_whole["shedding_cost"] == pytest.approx(0.0, abs=1e-9)
    assert c_whole["deferrable_shortfall_cost"] == pytest.approx(0.0, abs=1e-9)
    assert c_short["deferrable_shortfall_cost"] == pytest.approx(2.0 * cfg.voll_def_per_j)
    assert c_short["total"] - c_whole["total"] == pytest.approx(2.0 * cfg.voll_def_per_j)
    # load3 shed at tick 1 and ran for the job only: its demand there was not served
    rows[1]["load3_w"] = -0.5
    c_shed = report.measured_costs(rows, cfg, whole)
    assert c_shed["shedding_cost"] == pytest.approx(0.2 * cfg.dt_s * cfg.voll_per_j[2])
    # a job whose window is still open at the run's end is not scored
    late = report.Deferrable("load3", 1.0, [{"start": 0, "end": 9, "energy": 100.0}])
    assert report.measured_costs(rows, cfg, late)["deferrable_shortfall_cost"] == 0.0


def test_store_adds_the_new_column_to_an_older_file(tmp_path):
    import sqlite3

    from picogrid.edge.control.store import DISPATCH_COLUMNS, connect

    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE dispatch (run_id INTEGER NOT NULL, policy TEXT NOT NULL, tick INTEGER NOT NULL, "
                + ", ".join(f"{c} REAL" for c in DISPATCH_COLUMNS if c != "deferrable_w")
                + ", PRIMARY KEY (run_id, policy, tick))")
    old.execute("INSERT INTO dispatch (run_id, policy, tick, grid_w) VALUES (1, 'mpc', 0, 0.5)")
    old.commit()
    old.close()
    conn = connect(path)
    cols = {r["name"] for r in conn.execute("PRAGMA table_info(dispatch)")}
    assert "deferrable_w" in cols
    assert conn.execute("SELECT grid_w, deferrable_w FROM dispatch").fetchone()[:] == (0.5, None)
