"""`picogrid edge` on boards found through a site file: here the HIL bench's boards, whose
pseudo-terminals stand where /dev/ttyACM0..5 would be."""

import copy
import math
import os
import sqlite3
import time

import pytest

from picogrid.edge.forecasting.forecast import Forecaster
from picogrid.edge.control.service import EdgeService, open_links
from picogrid.edge.sources.signals import ScenarioSource, load_scenario
from picogrid.edge.site import SITE_DIR, load_site
from picogrid.hil.bench import Bench
from picogrid.hil.day import prepare_scenario

pytestmark = pytest.mark.e2e
N_TICKS = 4


def test_site_file_without_ports_is_a_clear_error():
    with pytest.raises(ValueError, match="board pv has no port"):
        open_links(load_site(), lambda *a: None, secrets={})
    site = copy.deepcopy(load_site())
    site["boards"]["pv"]["link"] = {"type": "tcp", "host": "127.0.0.1", "port": 9}
    with pytest.raises(ValueError, match="key_hex"):
        open_links(site, lambda *a: None, secrets={})


def test_battery_site_is_refused_before_any_port_opens(tmp_path):
    """The edge observes stored energy through a supercapacitor's voltage; a battery site file
    (no capacitance_f / esr_ohm, no state of charge in the telemetry) is a clear start-up error."""
    with pytest.raises(ValueError, match="no capacitance_f / esr_ohm"):
        EdgeService(load_site(SITE_DIR / "site.toml"), tmp_path / "edge.sqlite", None, None, 0.0, secrets={})
    assert not (tmp_path / "edge.sqlite").exists()


def test_a_start_up_failure_closes_the_ports_and_marks_the_run_failed(tmp_path):
    """Real pseudo-terminals stand for the boards; the MPC settings are bad, so the runner
    refuses to start after the run row exists: that run must not stay 'running'."""
    site = copy.deepcopy(load_site())
    masters = []
    for b in site["boards"].values():
        master, slave = os.openpty()
        masters.append(master)
        b["port"] = os.ttyname(slave)
        os.close(slave)
    site["optimizer"]["eps_abs"] = -1.0
    scenario = ScenarioSource(load_scenario(prepare_scenario(tmp_path, "2013-07-16", 60, site["pv"]["capability_w"])), 60)
    try:
        with pytest.raises(ValueError, match="eps_abs"):
            EdgeService(site, tmp_path / "edge.sqlite", scenario, None, 0.0, secrets={})
        conn = sqlite3.connect(str(tmp_path / "edge.sqlite"))
        assert conn.execute("SELECT status FROM run").fetchall() == [("failed",)]
        conn.close()
    finally:
        for m in masters:
            os.close(m)


def test_edge_runs_a_day_on_the_boards_of_a_site_file(tmp_path):
    site = load_site(tick_s=1.5)
    scenario = ScenarioSource(load_scenario(prepare_scenario(tmp_path, "2013-07-16", 60, site["pv"]["capability_w"])), 60)
    t0 = time.time() + 4.0
    bench = Bench(site, tmp_path / "bench", t0, 1.5, scenario.truth()["sun"]).start()
    try:
        for name, port in bench.ports.items():
            site["boards"][name]["port"] = port
        site["bench"]["n_ticks"] = N_TICKS
        service = EdgeService(site, tmp_path / "edge.sqlite", scenario, Forecaster(), t0, secrets={})
        try:
            assert service.wait_hello() == []
            summary = service.run()
        finally:
            service.stop()
    finally:
        bench.stop()
    conn = sqlite3.connect(str(tmp_path / "edge.sqlite"))
    assert conn.execute("SELECT count(*) FROM dispatch WHERE policy='mpc'").fetchone()[0] == N_TICKS
    assert conn.execute("SELECT count(*) FROM setpoint WHERE acked=1").fetchone()[0] == 6 * (N_TICKS + 1)
    assert conn.execute("SELECT DISTINCT forecast_source FROM decision").fetchall() == [("onnx",)]
    assert math.isfinite(summary["cost_naive_model"])      # the model's naive rule ran and scored
    assert summary["ticks_incomplete_mpc"] == 0
