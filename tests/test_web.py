"""Dashboard tests: Flask test client over a fresh SQLite store written by the edge's Store.

Each test builds its own database through ``picogrid.edge.control.store.Store`` (the real writer and
schema), so the dashboard is checked against the contract rather than against fixtures of
its own making.
"""

import json
import logging
import threading
import time
import urllib.error
import urllib.request

import sqlite3

import pytest

from picogrid.edge.control.store import DISPATCH_COLUMNS, Store
from picogrid.web import create_app
from picogrid.web.api import parse_since
from picogrid.web.server import start_background
from werkzeug.serving import make_server
from picogrid.web.units import split_unit

BOARDS = (("pv", "pv"), ("storage", "storage"), ("grid", "grid"),
          ("load1", "load"), ("load2", "load"), ("load3", "load"))
POLICY_OFFSET_W = {"mpc": 0.0, "naive": 0.25, "perfect_foresight": -0.125, "mpc_perfect_forecast": -0.0625}


def dispatch_row(policy, tick):
    """A plausible lab-bench tick: every column distinct, so a mix-up shows."""
    k = float(tick)
    off = POLICY_OFFSET_W[policy]
    return {
        "pv_w": 2.0 + 0.5 * k, "storage_w": -0.5 + off, "grid_w": 0.75 - 0.25 * k - off,
        "load1_w": -0.5, "load2_w": -0.375 - 0.0625 * k, "load3_w": -0.25,
        "pv_available_w": 2.5 + 0.5 * k, "load1_demand_w": 0.5, "load2_demand_w": 0.4,
        "load3_demand_w": 0.25, "storage_energy_j": 20.0 + 2.5 * k, "bus_voltage_v": 7.0 + 0.01 * k,
        "import_price_per_j": 0.001 * (1 + k), "export_price_per_j": 0.0005,
        "cost": 0.01 * (1 + k) + off / 10, "balance_residual_j": 1e-6 * k, "deferrable_w": 0.03125 * k,
    }


def telemetry_values(board_index, tick):
    """The applied setpoint is a power [W] but the grid board's bus-voltage reference [V]."""
    grid = BOARDS[board_index][1] == "grid"
    return {
        "v_bus_v": 7.0 + 0.001 * tick, "v_port_v": 5.0 + board_index, "i_port_a": 0.1 * (tick + 1),
        "p_bus_w": 0.5 * board_index - tick, "p_port_w": 0.45 * board_index, "energy_bus_j": 10.0 * tick,
        "setpoint_w": None if grid else 0.125 * board_index, "setpoint_v": 7.0 + 0.01 * tick if grid else None,
        "flags": board_index + 16 * tick,
    }


def write_tick(store, tick):
    """One edge tick: telemetry of every board, a decision, the 'mpc' dispatch; one commit."""
    t_s = 5.0 * tick
    for i, (name, role) in enumerate(BOARDS):
        store.telemetry(t_s, tick, name, role, 100 + tick, telemetry_values(i, tick))
        store.board(name, role=role, last_seen_s=t_s, frames_ok=tick + 1, crc_errors=i % 2,
                    failsafe_events=0, firmware_version="0.1.0", link="pty")
    store.decision(tick, t_s, "solved", 0.0042 + tick * 1e-4, -1.5, "onnx",
                   {"storage": -0.5 - tick, "load1": 0.5}, reason=None)
    store.dispatch("mpc", tick, dispatch_row("mpc", tick))
    store.commit()


def write_baselines(store, n_ticks):
    """The 'naive' and 'perfect_foresight' baselines, computed for the day ahead of the live policy."""
    for policy in ("naive", "perfect_foresight"):
        for tick in range(n_ticks):
            store.dispatch(policy, tick, dispatch_row(policy, tick))
    store.commit()


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "picogrid.sqlite"


@pytest.fixture
def store(db_path):
    s = Store(db_path)
    yield s
    s.close()


def make_client(db_path, **config):
    app = create_app({"DATABASE": str(db_path), "TESTING": True, "SSE_POLL_S": 0.02,
                      "SSE_KEEPALIVE_S": 0.2, "SSE_MAX_S": 5.0, **config})
    return app.test_client()


@pytest.fixture
def day(store):
    """A running day of 60 ticks, 3 done by MPC; the baselines for 5 ticks ahead."""
    store.start_run("lab", "2010-06-14", 60, 5.0, {"horizon": 12})
    write_baselines(store, 5)
    for tick in range(3):
        write_tick(store, tick)
    return store


# --- empty and not-yet-started stores ------------------------------------------------------

def test_missing_database_shows_waiting_and_is_not_created(db_path):
    """No store file yet: 503 (nothing can be read), the page says it waits for the edge."""
    client = make_client(db_path)
    page = client.get("/")
    assert page.status_code == 503
    assert b"Waiting for the edge" in page.data and b"does not exist yet" in page.data
    for path in ("/api/latest", "/api/runs", "/api/run/1/summary", "/api/run/1/dispatch"):
        answer = client.get(path)
        assert answer.status_code == 503 and "does not exist yet" in answer.get_json()["error"], path
    assert not db_path.exists(), "a read-only dashboard must not create the edge's file"


def test_schema_without_run_shows_waiting(db_path, store):
    client = make_client(db_path)
    assert b"Waiting for the edge" in client.get("/").data
    assert client.get("/api/latest").get_json()["run"] is None


def test_run_without_ticks_renders(db_path, store):
    store.start_run("site", "2019-01-07", 288, 300.0, {})
    store.board("pv", link="serial")      # known to the edge, silent so far
    store.commit()
    client = make_client(db_path)
    page = client.get("/")
    assert page.status_code == 200
    assert b"2019-01-07" in page.data and b"no decision yet" in page.data
    assert b'data-board="pv"' in page.data and b"no data" in page.data
    latest = client.get("/api/latest").get_json()
    assert latest["run"]["ticks_done"] == 0 and latest["run"]["latest_tick"] is None
    dispatch = client.get("/api/run/1/dispatch?policy=mpc").get_json()
    assert dispatch["tick"] == [] and dispatch["cumulative_cost"] == []


# --- a running day -------------------------------------------------------------------------

def test_page_renders_header_boards_decision_and_assets(db_path, day):
    client = make_client(db_path)
    html = client.get("/").get_data(as_text=True)
    assert "2010-06-14" in html and ">lab<" in html and ">running<" in html
    assert '<span id="run-ticks-done">3</span> <small>of <span id="run-n-ticks">60</span>' in html
    assert '<span id="bus-voltage">7.02</span> <small>V</small>' in html        # mpc tick 2
    for i, (name, _) in enumerate(BOARDS):
        assert 'data-board="%s"' % name in html
        # p_bus_w of tick 2, and health words from the flag bits (tick 2: 32 + i)
        assert '<span class="p-bus">%.2f</span>' % telemetry_values(i, 2)["p_bus_w"] in html
    assert "limited" in html and "fault" in html   # load1 flags 0x23, load2 0x24 at tick 2
    # the applied setpoint in its unit: the grid board's bus-voltage reference in V, a load's power in W
    assert "setpoint 7.02 V" in html and "setpoint 0.50 W" in html and html.count(" V</div>") == 1
    assert 'id="decision-status">solved<' in html and '"decision-solve-ms">4.4</span> ms' in html
    assert "Log in</a> to change the mode" in html and 'id="form-mode"' not in html
    for asset in ("vendor/uplot/uPlot.iife.min.js", "vendor/uplot/uPlot.min.css", "app.js", "style.css"):
        assert asset in html
        assert client.get("/static/" + asset).status_code == 200
    assert b"MIT License" in client.get("/static/vendor/uplot/LICENSE").data


@pytest.mark.parametrize("policy, n_ticks", [("mpc", 3), ("naive", 5), ("perfect_foresight", 5)])
def test_dispatch_api_returns_written_values(db_path, day, policy, n_ticks):
    data = make_client(db_path).get("/api/run/1/dispatch?policy=%s" % policy).get_json()
    assert data["policy"] == policy and data["tick"] == list(range(n_ticks))
    for column in DISPATCH_COLUMNS:
        assert data[column] == pytest.approx([dispatch_row(policy, k)[column] for k in range(n_ticks)])
    running = 0.0
    for k in range(n_ticks):
        running += dispatch_row(policy, k)["cost"]
        assert data["cumulative_cost"][k] == pytest.approx(running)


def test_dispatch_api_rejects_bad_input(db_path, day):
    client = make_client(db_path)
    bad = client.get("/api/run/1/dispatch?policy=greedy")
    assert bad.status_code == 400 and "greedy" in bad.get_json()["error"]
    assert client.get("/api/run/7/dispatch").status_code == 404
    assert client.get("/api/run/7/summary").status_code == 404


def test_latest_api_has_last_telemetry_and_decision(db_path, day):
    latest = make_client(db_path).get("/api/latest").get_json()
    assert latest["run"]["id"] == 1 and latest["run"]["latest_tick"] == 2
    assert latest["bus_voltage_v"] == pytest.approx(dispatch_row("mpc", 2)["bus_voltage_v"])
    assert [b["board"] for b in latest["boards"]] == [name for name, _ in BOARDS]
    for i, board in enumerate(latest["boards"]):
        assert board["telemetry"]["tick"] == 2
        for key, value in telemetry_values(i, 2).items():
            assert board["telemetry"][key] == (None if value is None else pytest.approx(value)), key
        assert board["last_seen_s"] == pytest.approx(10.0) and board["frames_ok"] == 3
    decision = latest["decision"]
    assert decision["tick"] == 2 and decision["status"] == "solved"
    assert decision["setpoints"] == {"storage": -2.5, "load1": 0.5}
    assert decision["solve_time_s"] == pytest.approx(0.0044)


def test_summary_api_costs_so_far_and_savings_capture(db_path, day):
    data = make_client(db_path).get("/api/run/1/summary").get_json()
    assert data["summary"] is None and data["rows"] == []
    costs = data["costs"]
    assert costs["tick"] == list(range(5))
    assert costs["cumulative"]["mpc"][3:] == [None, None]
    to_latest = {}
    for policy, n in (("mpc", 3), ("naive", 5), ("perfect_foresight", 5)):
        totals = costs["totals"][policy]
        assert totals["ticks"] == n
        assert totals["total"] == pytest.approx(sum(dispatch_row(policy, k)["cost"] for k in range(n)))
        to_latest[policy] = sum(dispatch_row(policy, k)["cost"] for k in range(3))
        assert totals["to_latest"] == pytest.approx(to_latest[policy])
    expected = (to_latest["naive"] - to_latest["mpc"]) / (to_latest["naive"] - to_latest["perfect_foresight"])
    assert costs["savings_capture"] == pytest.approx(expected)
    # no third bench on this run: no measured capture, and no empty row on the finance page
    assert costs["totals"]["mpc_perfect_forecast"]["ticks"] == 0 and costs["savings_capture_vs_mpc_perfect_forecast"] is None
    page = make_client(db_path).get("/finance?run=1").get_data(as_text=True)
    assert "<td>perfect_foresight</td>" in page and "<td>mpc_perfect_forecast</td>" not in page


def test_measured_savings_capture_against_the_third_bench(db_path, day):
    """A demo day's third bench (the MPC on the true future) is a policy of its own: its costs
    so far give the capture with every cost measured."""
    for tick in range(4):
        day.dispatch("mpc_perfect_forecast", tick, dispatch_row("mpc_perfect_forecast", tick))
    day.commit()
    costs = make_client(db_path).get("/api/run/1/summary").get_json()["costs"]
    to_latest = {p: sum(dispatch_row(p, k)["cost"] for k in range(3)) for p in ("mpc", "naive", "mpc_perfect_forecast")}
    assert costs["totals"]["mpc_perfect_forecast"]["ticks"] == 4
    assert costs["savings_capture_vs_mpc_perfect_forecast"] == pytest.approx(
        (to_latest["naive"] - to_latest["mpc"]) / (to_latest["naive"] - to_latest["mpc_perfect_forecast"]))
    page = make_client(db_path).get("/finance?run=1").get_data(as_text=True)
    assert "<td>mpc_perfect_forecast</td>" in page
    # a tick that bench decided otherwise (here: without the true future): no reference any more
    day.event(12.5, None, "reference_fallback", "tick 2: true future unavailable: seasonal_naive:KeyError")
    day.commit()
    costs = make_client(db_path).get("/api/run/1/summary").get_json()["costs"]
    assert costs["savings_capture_vs_mpc_perfect_forecast"] is None and costs["mpc_perfect_forecast_fallback_ticks"] == 1


def test_finished_run_shows_summary_with_units(db_path, day):
    summary = {"energy_import_j": 412.5, "cost_mpc": 1.25, "savings_capture": 0.8,
               "solve_time_max_s": 0.012, "final_soc": 0.55}
    day.finish_run(summary)
    client = make_client(db_path)
    data = client.get("/api/run/1/summary").get_json()
    assert data["summary"] == summary and data["run"]["status"] == "finished"
    units = {r["name"]: (r["label"], r["unit"], r["value"]) for r in data["rows"]}
    assert units == {"energy_import_j": ("energy import", "J", 412.5),
                     "cost_mpc": ("cost mpc", "", 1.25),
                     "savings_capture": ("savings capture", "", 0.8),
                     "solve_time_max_s": ("solve time max", "s", 0.012),
                     "final_soc": ("final soc", "0-1", 0.55)}
    html = client.get("/finance").get_data(as_text=True)
    assert "Summary of the day" in html and '<section id="summary-section" >' in html
    assert '<td title="energy_import_j">energy import</td><td>412.5</td><td>J</td>' in html


def test_runs_api_lists_newest_first(db_path, day):
    day.start_run("lab", "2010-06-15", 60, 5.0, {})
    runs = make_client(db_path).get("/api/runs").get_json()["runs"]
    assert [(r["id"], r["scenario"], r["ticks_done"]) for r in runs] == [
        (2, "2010-06-15", 0), (1, "2010-06-14", 3)]


@pytest.mark.parametrize("name, expected", [
    ("pv_w", ("pv", "W")), ("storage_energy_j", ("storage energy", "J")),
    ("import_price_per_j", ("import", "price/J")), ("energy_import_wh", ("energy import", "Wh")),
    ("bus_voltage_v", ("bus voltage", "V")), ("ticks", ("ticks", "")), ("w", ("w", "")),
])
def test_split_unit(name, expected):
    assert split_unit(name) == expected


def test_split_unit_rejects_non_str():
    with pytest.raises(TypeError):
        split_unit(3)


# --- Server-Sent Events --------------------------------------------------------------------

class SSEReader:
    """Reads events from a streaming test response, giving up after ``max_chunks`` chunks."""

    def __init__(self, response, max_chunks=200):
        self.response = response
        self.chunks = iter(response.response)
        self.max_chunks = max_chunks
        self.comments = 0

    def next_event(self):
        for _ in range(self.max_chunks):
            text = next(self.chunks).decode()
            fields = {}
            for line in text.strip("\n").split("\n"):
                if line.startswith(":"):
                    self.comments += 1
                elif line:
                    key, _, value = line.partition(": ")
                    fields[key] = value
            if "event" in fields:
                fields["data"] = json.loads(fields["data"])
                return fields
        raise AssertionError("no event within %d chunks" % self.max_chunks)


def test_stream_sends_event_for_new_tick(db_path, day):
    client = make_client(db_path)
    response = client.get("/api/stream?since=1:2", buffered=False)
    assert response.mimetype == "text/event-stream"
    reader = SSEReader(response)
    try:
        first = reader.next_event()
        assert first["event"] == "tick" and first["id"] == "1:2"
        assert first["data"]["reset"] is False and first["data"]["dispatch"]["tick"] == []

        write_tick(day, 3)  # the mpc catches up one tick
        event = reader.next_event()
        assert event["id"] == "1:3"
        assert event["data"]["latest"]["run"]["ticks_done"] == 4
        news = event["data"]["dispatch"]
        assert news["tick"] == [3]
        assert news["pv_w"] == [pytest.approx(dispatch_row("mpc", 3)["pv_w"])]
        assert news["storage_energy_j"] == [pytest.approx(dispatch_row("mpc", 3)["storage_energy_j"])]
    finally:
        response.close()


def test_stream_resets_for_a_new_run_and_honours_last_event_id(db_path, day):
    day.start_run("lab", "2010-06-15", 60, 5.0, {})
    write_tick(day, 0)
    response = make_client(db_path).get("/api/stream", headers={"Last-Event-ID": "1:2"},
                                        buffered=False)
    try:
        event = SSEReader(response).next_event()
        assert event["id"] == "2:0" and event["data"]["reset"] is True
        assert event["data"]["dispatch"]["tick"] == [0]
    finally:
        response.close()


def test_stream_waits_for_the_edge_then_sees_the_run(db_path):
    response = make_client(db_path).get("/api/stream", buffered=False)
    reader = SSEReader(response)
    try:
        assert reader.next_event()["data"]["latest"]["run"] is None
        store = Store(db_path)
        try:
            store.start_run("lab", "2010-06-14", 60, 5.0, {})
            write_tick(store, 0)
            event = reader.next_event()
        finally:
            store.close()
        assert event["data"]["latest"]["run"]["scenario"] == "2010-06-14"
        assert event["data"]["reset"] is True and event["data"]["dispatch"]["tick"] == [0]
    finally:
        response.close()


def test_stream_keeps_alive_and_ends_by_itself(db_path, day):
    client = make_client(db_path, SSE_KEEPALIVE_S=0.05, SSE_MAX_S=0.5)
    body = client.get("/api/stream?since=1:2").get_data(as_text=True)  # buffered: returns at its end
    assert body.count("event: tick") == 1
    assert body.count(": keep-alive") >= 3


def test_stream_ends_when_the_client_disconnects(db_path, day, caplog):
    app = create_app({"DATABASE": str(db_path), "SSE_POLL_S": 0.02, "SSE_KEEPALIVE_S": 0.1,
                      "SSE_MAX_S": 60.0})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    caplog.set_level(logging.DEBUG, logger="picogrid.web.api")
    try:
        stream = urllib.request.urlopen("http://127.0.0.1:%d/api/stream" % server.server_port, timeout=5)
        assert stream.readline() == b"retry: 2000\n"
        stream.close()  # the client goes away; the next keep-alive write must fail
        deadline = time.monotonic() + 3.0
        while "SSE stream closed" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "SSE stream closed" in caplog.text
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("text, expected", [
    ("1:2", (1, 2)), ("4:", (4, None)), ("", (None, None)), ("x:1", (None, None)), ("3:y", (None, None)),
])
def test_parse_since(text, expected):
    assert parse_since(text) == expected


# --- background server ---------------------------------------------------------------------

def test_start_background_serves_loopback_and_stops(db_path, day):
    url, stop = start_background(db_path)
    try:
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/")
        with urllib.request.urlopen(url, timeout=5) as page:
            assert page.status == 200 and b"2010-06-14" in page.read()
        with urllib.request.urlopen(url + "api/latest", timeout=5) as latest:
            assert json.load(latest)["run"]["ticks_done"] == 3
        # An open SSE stream must not keep the server alive after stop().
        stream = urllib.request.urlopen(url + "api/stream", timeout=5)
        assert stream.readline() == b"retry: 2000\n"
        first = [stream.readline() for _ in range(4)]   # blank, id, event, data
        assert b"event: tick\n" in first
    finally:
        stop()
    # stop() ends the open stream within a poll (0.5 s), not at the next keep-alive (10 s): the
    # stream's 5 s socket timeout would raise here first, and no keep-alive comment was sent
    assert b": keep-alive" not in stream.read()
    stream.close()
    stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "api/runs", timeout=2)


# --- the other pages and their API ---------------------------------------------------------

def write_forecasts(store, ticks, horizon=4):
    """Forecasts of 'pv_available_w' as the edge stores them: P10/P50/P90 rows per tick."""
    for k in ticks:
        for q, offset in ((0.1, -0.5), (0.5, 0.0), (0.9, 0.5)):
            store.forecast(k, "pv_available_w", q, [2.5 + 0.5 * (k + i) + offset + 0.1 * i for i in range(horizon)])
    store.commit()


@pytest.mark.parametrize("path, text", [
    ("/consumption", "served / used [J]"),
    ("/finance", "savings capture"), ("/finance", "import [J]"),
    ("/forecasts", "P10–P90"), ("/forecasts?series=load2_demand_w", 'data-series="load2_demand_w"'),
    ("/boards", "CRC errors"), ("/boards", "Audit log"), ("/", "Dispatch of the day so far"),
])
def test_pages_render_the_running_day(db_path, day, path, text):
    client = make_client(db_path)
    page = client.get(path)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert text in html
    if path.split("?")[0] not in ("/consumption", "/boards"):   # those two do not name the day
        assert "2010-06-14" in html
    for _, title in (("", "Live"), ("", "Consumption"), ("", "Finance"), ("", "Forecasts"), ("", "Boards")):
        assert ">%s</a>" % title in html


def test_consumption_chart_is_drawn_by_the_served_script(db_path, day):
    """The cumulative-energy chart is drawn client-side: the page loads app.js, which names it."""
    client = make_client(db_path)
    html = client.get("/consumption").get_data(as_text=True)
    assert 'src="/static/app.js"' in html or "static/app.js" in html
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "Cumulative energy per load" in script.get_data(as_text=True)


def test_pages_wait_for_the_edge(db_path):
    client = make_client(db_path)
    for path in ("/", "/consumption", "/finance", "/forecasts", "/boards"):
        page = client.get(path)
        assert page.status_code == 503 and b"Waiting for the edge" in page.data


def test_forecasts_page_rejects_unknown_series(db_path, day):
    assert make_client(db_path).get("/forecasts?series=wind_w").status_code == 400


def test_consumption_leaves_the_deferrable_jobs_out_of_the_boards_load(db_path, store):
    """The deferrable board draws its jobs on top of its own demand: served and shed are of
    that demand, as in the edge's summary (edge/control/report.py)."""
    store.start_run("lab", "2010-06-14", 60, 5.0, {"deferrable_board": "load3"})
    row = dict(dispatch_row("mpc", 2), load3_w=-0.35, load3_demand_w=0.3, deferrable_w=0.1)
    store.dispatch("mpc", 0, row)
    store.commit()
    data = make_client(db_path).get("/api/run/1/consumption").get_json()
    assert data["load3_served_j"][0] == pytest.approx(0.25 * 5.0)           # 0.35 W drawn, 0.1 W of jobs
    assert data["load3_shed_j"][0] == pytest.approx(0.05 * 5.0)
    assert data["load2_served_j"][0] == pytest.approx(-row["load2_w"] * 5.0)  # other loads as drawn


def test_summary_with_an_unknown_cost_is_strict_json(db_path, day):
    """A summary holds NaN for a cost nobody measured (a naive bench that did not run); the
    API sends it as null, so a browser's response.json() can read the reply."""
    import json
    day.finish_run({"cost_naive": float("nan"), "cost_mpc": 1.25, "savings_capture": float("inf")})
    body = make_client(db_path).get("/api/run/1/summary").get_data(as_text=True)
    data = json.loads(body, parse_constant=lambda c: pytest.fail("non-JSON constant %s" % c))
    assert data["summary"]["cost_naive"] is None and data["summary"]["cost_mpc"] == 1.25
    assert data["summary"]["savings_capture"] is None


def test_consumption_api_served_shed_curtailed(db_path, day):
    data = make_client(db_path).get("/api/run/1/consumption").get_json()
    dt = 5.0
    assert data["tick"] == [0, 1, 2] and data["tick_s"] == dt
    for k in range(3):
        row = dispatch_row("mpc", k)
        assert data["load2_served_j"][k] == pytest.approx(-row["load2_w"] * dt)
        assert data["load2_shed_j"][k] == pytest.approx(max(row["load2_demand_w"] + row["load2_w"], 0) * dt)
        assert data["pv_curtailed_j"][k] == pytest.approx((row["pv_available_w"] - row["pv_w"]) * dt)
        assert data["storage_charge_j"][k] == pytest.approx(0.5 * dt)
        assert data["storage_discharge_j"][k] == 0.0
    # load2 serves 0.375 + 0.0625 k W of a 0.4 W demand: shed only at tick 0
    assert data["load2_shed_j"][0] == pytest.approx(0.025 * dt) and data["load2_shed_j"][1] == 0.0
    assert data["totals"]["pv_used_j"] == pytest.approx(sum((2.0 + 0.5 * k) * dt for k in range(3)))
    assert make_client(db_path).get("/api/run/1/consumption?policy=x").status_code == 400
    assert make_client(db_path).get("/api/run/9/consumption").status_code == 404


def test_finance_api_costs_energies_prices(db_path, day):
    data = make_client(db_path).get("/api/run/1/finance").get_json()
    assert data["tick"] == list(range(5))
    assert data["cost"]["mpc"][:3] == pytest.approx([dispatch_row("mpc", k)["cost"] for k in range(3)])
    assert data["cost"]["mpc"][3:] == [None, None]
    assert data["cost"]["naive"] == pytest.approx([dispatch_row("naive", k)["cost"] for k in range(5)])
    grid = [dispatch_row("perfect_foresight", k)["grid_w"] for k in range(5)]
    assert data["import_j"]["perfect_foresight"] == pytest.approx(5.0 * sum(max(g, 0) for g in grid))
    assert data["export_j"]["perfect_foresight"] == pytest.approx(5.0 * sum(max(-g, 0) for g in grid))
    assert data["import_price_per_j"] == pytest.approx([0.001 * (1 + k) for k in range(5)])
    assert data["savings_capture"] == make_client(db_path).get(
        "/api/run/1/summary").get_json()["costs"]["savings_capture"]


def test_forecast_api_fan_against_actual(db_path, day):
    write_forecasts(day, ticks=(0, 1, 2))
    client = make_client(db_path)
    data = client.get("/api/run/1/forecast?series=pv_available_w").get_json()
    assert data["unit"] == "W" and data["forecast_ticks"] == [0, 1, 2]
    horizon = data["horizon"]
    assert horizon["issued_tick"] == 2 and horizon["tick"] == [2, 3, 4, 5]
    assert horizon["p50"] == pytest.approx([2.5 + 0.5 * (2 + i) + 0.1 * i for i in range(4)])
    assert horizon["p10"][0] == pytest.approx(horizon["p50"][0] - 0.5)
    # actual = the measured pv_available_w of the mpc ticks, unknown beyond tick 2
    assert horizon["actual"] == [pytest.approx(dispatch_row("mpc", 2)["pv_available_w"]), None, None, None]
    day_view = data["day"]   # one step ahead: tick t forecast at t-1, value 1
    assert day_view["tick"] == [0, 1, 2, 3]
    assert day_view["p50"][0] is None
    assert day_view["p50"][1] == pytest.approx(2.5 + 0.5 * 1 + 0.1)
    issued0 = client.get("/api/run/1/forecast?tick=0&step=0").get_json()
    assert issued0["horizon"]["issued_tick"] == 0 and issued0["day"]["p90"][0] == pytest.approx(3.0)
    assert client.get("/api/run/1/forecast?series=bogus_w").status_code == 400
    assert client.get("/api/run/1/forecast?step=-1").status_code == 400
    assert client.get("/api/run/1/forecast?tick=abc").status_code == 400


def test_boards_api_health_and_events(db_path, day):
    day.event(9.5, "storage", "failsafe_enter", "no setpoint for 8 s")
    day.event(9.7, None, "no_ack", "tick 2: load3")
    day.board("grid", replayed_hellos=2, t_ms_regressions=1, replay_errors=4, auth_errors=5)
    day.commit()
    data = make_client(db_path).get("/api/run/1/boards").get_json()
    dropped = {b["board"]: b["replays_dropped"] for b in data["boards"]}
    assert dropped["grid"] == 2 + 1 + 4 and dropped["pv"] == 0
    assert {b["board"]: b["auth_errors"] for b in data["boards"]}["grid"] == 5
    health = {b["board"]: b["health"] for b in data["boards"]}
    assert health["pv"] == ["ok"]                       # flags 32 + 0: no known bit
    assert health["storage"] == ["failsafe"]            # flags 33
    assert health["load2"] == ["fault"]                 # flags 36
    assert [(e["board"], e["kind"]) for e in data["events"]] == [(None, "no_ack"), ("storage", "failsafe_enter")]
    assert data["boards"][0]["firmware_version"] == "0.1.0" and data["boards"][0]["link"] == "pty"
    html = make_client(db_path).get("/boards").get_data(as_text=True)
    assert "failsafe_enter" in html and "no setpoint for 8 s" in html


# --- operator control: login, CSRF, commands, audit ----------------------------------------

PASSWORD = "correct horse battery staple"


@pytest.fixture
def site_file(tmp_path):
    """A site file with one operator; the hash is made here, never committed."""
    from werkzeug.security import generate_password_hash
    path = tmp_path / "site.toml"
    path.write_text('[web]\nusers = { alice = "%s" }\n' % generate_password_hash(PASSWORD, "pbkdf2:sha256:1000"))
    return path


def control_client(db_path, site_file):
    return make_client(db_path, SITE_CONFIG=str(site_file))


def page_csrf(client, path="/login"):
    html = client.get(path).get_data(as_text=True)
    marker = 'name="csrf_token" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


def log_in(client, user="alice", password=PASSWORD):
    token = page_csrf(client)
    response = client.post("/login", data={"username": user, "password": password, "csrf_token": token,
                                            "next": "/"})
    if response.status_code == 303:   # a new session: its own token
        token = page_csrf(client, "/login")
    return response, token


def rows(db_path, table):
    conn = sqlite3.connect(str(db_path))
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM %s ORDER BY id" % table)]
    finally:
        conn.close()


def test_login_then_command_queued_with_audit(db_path, day, site_file):
    client = control_client(db_path, site_file)
    response, _ = log_in(client)
    assert response.status_code == 303 and response.headers["Location"] == "/"
    html = client.get("/").get_data(as_text=True)
    assert 'id="form-mode"' in html and '<span id="user">alice</span>' in html
    token = html.split('<meta name="csrf-token" content="')[1].split('"')[0]
    answer = client.post("/api/commands", json={"kind": "override", "board": "storage", "value": -1.5},
                         headers={"X-CSRF-Token": token, "Origin": "http://localhost"},
                         environ_base={"REMOTE_ADDR": "10.0.0.7"})
    assert answer.status_code == 201, answer.get_json()
    command = answer.get_json()["command"]
    assert command["status"] == "pending" and command["user"] == "alice"
    [row] = rows(db_path, "command")
    assert (row["kind"], row["board"], row["value"], row["status"], row["user"]) == (
        "override", "storage", -1.5, "pending", "alice")
    audit = rows(db_path, "audit")
    assert [a["action"] for a in audit] == ["login", "command:override"]
    assert audit[1]["user"] == "alice" and audit[1]["remote_addr"] == "10.0.0.7"
    assert json.loads(audit[1]["detail"])["value"] == -1.5 and abs(audit[1]["t"] - time.time()) < 60
    # viewers see it without logging in
    viewer = make_client(db_path)
    assert viewer.get("/api/commands").get_json()["commands"][0]["id"] == command["id"]
    assert viewer.get("/api/control").get_json()["pending"][0]["kind"] == "override"
    assert viewer.get("/api/audit").get_json()["audit"][0]["action"] == "command:override"
    assert "alice" in viewer.get("/boards").get_data(as_text=True)


def test_mode_and_overrides_follow_what_the_edge_applied(db_path, day, site_file):
    client = control_client(db_path, site_file)
    _, token = log_in(client)
    headers = {"X-CSRF-Token": token}
    for body in ({"kind": "mode", "mode": "manual"}, {"kind": "shed", "board": "load3"},
                 {"kind": "override", "board": "grid", "value": 7.2}, {"kind": "mode", "mode": "approve"}):
        assert client.post("/api/commands", json=body, headers=headers).status_code == 201
    assert client.get("/api/control").get_json()["mode"] == "automatic"   # nothing applied yet
    # The edge's side of the contract (edge/control/store.py): it marks rows applied or rejected.
    conn = sqlite3.connect(str(db_path))
    conn.execute("UPDATE command SET status='applied', applied_at=?, result='ok' WHERE id IN (1, 2, 3)",
                 (time.time(),))
    conn.execute("UPDATE command SET status='rejected', result='no plan to approve' WHERE id=4")
    conn.commit()
    conn.close()
    state = client.get("/api/control").get_json()
    assert state["mode"] == "manual" and state["pending"] == [] and state["user"] == "alice"
    assert state["boards"] == {"load3": {"override": None, "shed": True},
                               "grid": {"override": 7.2, "shed": False}}
    html = client.get("/").get_data(as_text=True)
    assert '<b id="mode">manual</b>' in html and "no plan to approve" in html and 'class="cmd-rejected"' in html
    # the next run on the same store starts in automatic mode without overrides
    time.sleep(0.01)
    day.start_run("lab", "2010-06-15", 60, 5.0, {})
    state = client.get("/api/control").get_json()
    assert state["mode"] == "automatic" and state["boards"] == {} and state["pending"] == []


def test_control_refused_without_login(db_path, day, site_file):
    client = control_client(db_path, site_file)
    token = page_csrf(client)     # a session with a token, but nobody logged in
    answer = client.post("/api/commands", json={"kind": "shed", "board": "load3"}, headers={"X-CSRF-Token": token})
    assert answer.status_code == 401 and "log in" in answer.get_json()["error"]
    form = client.post("/api/commands", data={"kind": "shed", "board": "load3", "csrf_token": token})
    assert form.status_code == 401 and b"Operator login" in form.data
    assert rows(db_path, "command") == []


def test_wrong_password_refused_and_audited(db_path, day, site_file):
    client = control_client(db_path, site_file)
    response, token = log_in(client, password="guess")
    assert response.status_code == 401 and b"wrong password" in response.data
    response, _ = log_in(client, user="mallory")
    assert response.status_code == 401
    assert [(a["user"], a["action"]) for a in rows(db_path, "audit")] == [
        ("alice", "login_failed"), ("mallory", "login_failed")]
    assert client.post("/api/commands", json={"kind": "shed", "board": "load1"},
                       headers={"X-CSRF-Token": token}).status_code == 401


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example"},
    {"Referer": "http://evil.example/attack.html"},
    {"Origin": "http://localhost:8050"},            # another port is another origin
])
def test_cross_site_control_refused(db_path, day, site_file, headers):
    client = control_client(db_path, site_file)
    _, token = log_in(client)
    answer = client.post("/api/commands", data={"kind": "mode", "mode": "manual", "csrf_token": token},
                         headers=headers)
    assert answer.status_code == 403 and b"cross-site" in answer.data
    assert rows(db_path, "command") == []


@pytest.mark.parametrize("token", [None, "", "forged-token"])
def test_control_refused_without_the_csrf_token(db_path, day, site_file, token):
    client = control_client(db_path, site_file)
    log_in(client)
    headers = {} if token is None else {"X-CSRF-Token": token}
    answer = client.post("/api/commands", json={"kind": "restore", "board": "load2"}, headers=headers)
    assert answer.status_code == 403 and "CSRF" in answer.get_json()["error"]
    assert rows(db_path, "command") == []


def test_login_itself_needs_csrf_and_stays_on_site(db_path, day, site_file):
    client = control_client(db_path, site_file)
    assert client.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 403
    token = page_csrf(client)
    response = client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token,
                                            "next": "//evil.example/"})
    assert response.status_code == 303 and response.headers["Location"] == "/"


@pytest.mark.parametrize("body, message", [
    ({"kind": "launch"}, "unknown command"),
    ({"kind": "mode", "mode": "turbo"}, "unknown mode"),
    ({"kind": "override", "board": "storage", "value": 2.5}, "outside its limits -2..2 W"),
    ({"kind": "override", "board": "grid", "value": 7.5}, "outside its limits 6.65..7.35 V"),
    ({"kind": "override", "board": "pv", "value": 4.0}, "outside its limits 0..3.87 W"),
    ({"kind": "override", "board": "load1", "value": -0.1}, "outside its limits 0..1 W"),
    ({"kind": "override", "board": "storage", "value": "nan"}, "finite"),
    ({"kind": "override", "board": "storage"}, "required"),
    ({"kind": "override", "board": "heater", "value": 1}, "needs a board"),
    ({"kind": "shed", "board": "pv"}, "needs a board among load1"),
    ({"kind": "approve", "value": 2.5}, "whole number"),
    ({"kind": 5}, "kind must be text"),
    ({"kind": "mode", "mode": 3}, "mode must be text"),
    ({"kind": "shed", "board": 1}, "board must be text"),
])
def test_commands_validated_against_limits(db_path, day, site_file, body, message):
    client = control_client(db_path, site_file)
    _, token = log_in(client)
    answer = client.post("/api/commands", json=body, headers={"X-CSRF-Token": token})
    assert answer.status_code == 400 and message in answer.get_json()["error"]
    assert rows(db_path, "command") == []
    assert rows(db_path, "audit")[-1]["action"] == "command_refused"


def test_site_limits_come_from_the_site_file(db_path, day, tmp_path):
    from werkzeug.security import generate_password_hash
    site = tmp_path / "home.toml"
    site.write_text('[bench]\nbus_voltage_v = 48.0\n[storage]\npower_max_w = 5000.0\n'
                    '[web]\nusers = { bob = "%s" }\n' % generate_password_hash("pw", "pbkdf2:sha256:1000"))
    client = make_client(db_path, SITE_CONFIG=str(site))
    limits = client.get("/api/control").get_json()["limits"]
    assert limits["storage"] == {"min": -5000.0, "max": 5000.0, "unit": "W"}
    assert limits["grid"] == {"min": pytest.approx(45.6), "max": pytest.approx(50.4), "unit": "V"}
    assert limits["pv"] == {"min": 0.0, "max": 3.87, "unit": "W"}     # from the lab bench
    _, token = log_in(client, "bob", "pw")
    assert client.post("/api/commands", json={"kind": "override", "board": "storage", "value": 4000},
                       headers={"X-CSRF-Token": token}).status_code == 201


def test_form_post_without_javascript_redirects_back(db_path, day, site_file):
    client = control_client(db_path, site_file)
    _, token = log_in(client)
    answer = client.post("/api/commands", data={"kind": "approve", "value": "2", "csrf_token": token},
                         headers={"Referer": "http://localhost/"})
    assert answer.status_code == 303 and answer.headers["Location"] == "http://localhost/"
    assert b"command 1 queued" in client.get("/").data
    assert rows(db_path, "command")[0]["value"] == 2.0


def test_command_before_the_edge_started_is_refused(db_path, site_file):
    client = control_client(db_path, site_file)
    _, token = log_in(client)     # login works, the audit row cannot be stored yet
    answer = client.post("/api/commands", json={"kind": "mode", "mode": "manual"}, headers={"X-CSRF-Token": token})
    assert answer.status_code == 503 and "has not created" in answer.get_json()["error"]
    assert not db_path.exists()


def test_logout_ends_control_and_is_audited(db_path, day, site_file):
    client = control_client(db_path, site_file)
    _, token = log_in(client)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 303
    assert client.post("/api/commands", json={"kind": "shed", "board": "load1"},
                       headers={"X-CSRF-Token": token}).status_code in (401, 403)
    assert [a["action"] for a in rows(db_path, "audit")] == ["login", "logout"]


def test_without_site_file_the_dashboard_is_view_only(db_path, day):
    client = make_client(db_path)
    response, _ = log_in(client)
    assert response.status_code == 401
    assert client.get("/api/control").get_json()["user"] is None


def test_site_file_errors_are_clear(db_path, tmp_path):
    from picogrid.web.site import SiteConfigError
    plain = tmp_path / "plain.toml"
    plain.write_text('[web]\nusers = { alice = "hunter2" }\n')
    with pytest.raises(SiteConfigError, match="not a password hash"):
        make_client(db_path, SITE_CONFIG=str(plain))
    with pytest.raises(SiteConfigError, match="cannot read"):
        make_client(db_path, SITE_CONFIG=str(tmp_path / "missing.toml"))


def test_hash_password_cli_makes_a_usable_site_file(db_path, day, tmp_path):
    app = create_app({"DATABASE": str(db_path)})
    result = app.test_cli_runner().invoke(args=["hash-password", "carol"], input="s3cret\ns3cret\n")
    assert result.exit_code == 0, result.output
    toml_text = result.output[result.output.index("[web]"):]
    assert "s3cret" not in toml_text
    site = tmp_path / "site.toml"
    site.write_text(toml_text)
    client = make_client(db_path, SITE_CONFIG=str(site))
    assert log_in(client, "carol", "s3cret")[0].status_code == 303


def test_web_writes_only_command_and_audit_rows(db_path, day):
    from picogrid.web.db import write_control
    with pytest.raises(ValueError, match="only command/audit"):
        write_control(db_path, [("INSERT INTO dispatch (run_id, policy, tick) VALUES (1, 'mpc', 99)", ())])
    with pytest.raises(ValueError):
        write_control(db_path, [("DELETE FROM command", ())])


def test_stream_tells_viewers_about_commands(db_path, day, site_file):
    client = control_client(db_path, site_file)
    _, token = log_in(client)
    response = make_client(db_path).get("/api/stream?since=1:2", buffered=False)
    reader = SSEReader(response)
    try:
        reader.next_event()
        assert client.post("/api/commands", json={"kind": "shed", "board": "load2"},
                           headers={"X-CSRF-Token": token}).status_code == 201
        assert reader.next_event()["event"] == "tick"
    finally:
        response.close()


# --- every route is tested above and documented in the OpenAPI file ------------------------

def test_openapi_documents_every_api_route(db_path):
    client = make_client(db_path)
    spec = client.get("/api/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    served = set()
    for rule in client.application.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            path = rule.rule.replace("<int:run_id>", "{run_id}")
            served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served
    pages = {r.rule for r in client.application.url_map.iter_rules() if not r.rule.startswith("/api/")}
    assert pages == {"/", "/consumption", "/finance", "/forecasts", "/boards", "/login", "/logout",
                     "/static/<path:filename>"}


def test_viewers_share_one_poller_and_its_events(db_path, day):
    app = create_app({"DATABASE": str(db_path), "SSE_POLL_S": 0.02})
    hub = app.extensions["picogrid_hub"]
    try:
        version = hub.wait(-1, 0.0)
        assert hub.wait(version, 0.1) == version          # nothing new: no change, no event
        first = hub.event(version, 1, 2)
        assert hub.event(version, 1, 2) is first           # built once, shared by all viewers
        write_tick(day, 3)
        newer = hub.wait(version, 5.0)
        assert newer > version
        event = hub.event(newer, 1, 2)
        assert event["dispatch"]["tick"] == [3] and event["latest"]["run"]["ticks_done"] == 4
    finally:
        app.extensions["picogrid_stop"].set()


def test_stream_follows_a_store_made_anew(tmp_path):
    """`picogrid demo` deletes the store and makes a fresh one: the live poller reads the new
    file, not the deleted one it had open."""
    import threading

    from picogrid.edge.control.store import Store
    from picogrid.web.stream import Hub

    path = tmp_path / "picogrid.sqlite"
    first = Store(path)
    first.start_run("lab", "2010-06-14", 60, 5.0, {})
    write_tick(first, 0)
    first.close()
    hub = Hub(str(path), 0.05, threading.Event())
    hub._poll_once()
    assert hub.event(hub.version, None, None)["latest"]["run"]["scenario"] == "2010-06-14"
    for f in tmp_path.iterdir():          # the database and its WAL files
        f.unlink()
    second = Store(path)
    second.start_run("lab", "2010-06-20", 60, 5.0, {})
    second.close()
    hub._poll_once()
    assert hub.event(hub.version, None, None)["latest"]["run"]["scenario"] == "2010-06-20"
