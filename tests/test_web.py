"""Dashboard tests: Flask test client over a fresh SQLite store written by the edge's Store.

Each test builds its own database through ``picogrid.edge.store.Store`` (the real writer and
schema), so the dashboard is checked against the contract rather than against fixtures of
its own making.
"""

import json
import logging
import threading
import time
import urllib.error
import urllib.request

import pytest

from picogrid.edge.store import DISPATCH_COLUMNS, Store
from picogrid.web import create_app
from picogrid.web.api import parse_since
from picogrid.web.server import start_background
from werkzeug.serving import make_server
from picogrid.web.units import split_unit

BOARDS = (("pv", "pv"), ("storage", "storage"), ("grid", "grid"),
          ("load1", "load"), ("load2", "load"), ("load3", "load"))
POLICY_OFFSET_W = {"mpc": 0.0, "naive": 0.25, "oracle": -0.125}


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
        "cost": 0.01 * (1 + k) + off / 10, "balance_residual_j": 1e-6 * k,
    }


def telemetry_values(board_index, tick):
    return {
        "v_bus_v": 7.0 + 0.001 * tick, "v_port_v": 5.0 + board_index, "i_port_a": 0.1 * (tick + 1),
        "p_bus_w": 0.5 * board_index - tick, "p_port_w": 0.45 * board_index, "energy_bus_j": 10.0 * tick,
        "setpoint_w": 0.125 * board_index, "flags": board_index + 16 * tick,
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
    """The 'naive' and 'oracle' baselines, computed for the day ahead of the live policy."""
    for policy in ("naive", "oracle"):
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
    client = make_client(db_path)
    page = client.get("/")
    assert page.status_code == 200
    assert b"Waiting for the edge" in page.data
    assert client.get("/api/latest").get_json() == {
        "run": None, "bus_voltage_v": None, "boards": [], "decision": None}
    assert client.get("/api/runs").get_json() == {"runs": []}
    assert client.get("/api/run/1/summary").status_code == 404
    assert client.get("/api/run/1/dispatch").status_code == 404
    assert not db_path.exists(), "a read-only dashboard must not create the edge's file"


def test_schema_without_run_shows_waiting(db_path, store):
    client = make_client(db_path)
    assert b"Waiting for the edge" in client.get("/").data
    assert client.get("/api/latest").get_json()["run"] is None


def test_run_without_ticks_renders(db_path, store):
    store.start_run("site", "2019-01-07", 288, 300.0, {})
    client = make_client(db_path)
    page = client.get("/")
    assert page.status_code == 200
    assert b"2019-01-07" in page.data and b"no decision yet" in page.data
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
        assert '<span class="p-bus">%s</span>' % format(telemetry_values(i, 2)["p_bus_w"], ".4g") in html
    assert "limited" in html and "fault" in html   # load1 flags 0x23, load2 0x24 at tick 2
    assert "solved" in html and "4.4 ms" in html                          # tick 2's solve
    assert "Log in</a> to change the mode" in html and 'id="form-mode"' not in html
    for asset in ("vendor/uplot/uPlot.iife.min.js", "vendor/uplot/uPlot.min.css", "app.js", "style.css"):
        assert asset in html
        assert client.get("/static/" + asset).status_code == 200
    assert b"MIT License" in client.get("/static/vendor/uplot/LICENSE").data


@pytest.mark.parametrize("policy, n_ticks", [("mpc", 3), ("naive", 5), ("oracle", 5)])
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
            assert board["telemetry"][key] == pytest.approx(value)
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
    for policy, n in (("mpc", 3), ("naive", 5), ("oracle", 5)):
        totals = costs["totals"][policy]
        assert totals["ticks"] == n
        assert totals["total"] == pytest.approx(sum(dispatch_row(policy, k)["cost"] for k in range(n)))
        to_latest[policy] = sum(dispatch_row(policy, k)["cost"] for k in range(3))
        assert totals["to_latest"] == pytest.approx(to_latest[policy])
    expected = (to_latest["naive"] - to_latest["mpc"]) / (to_latest["naive"] - to_latest["oracle"])
    assert costs["savings_capture"] == pytest.approx(expected)


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
    started = time.monotonic()
    body = client.get("/api/stream?since=1:2").get_data(as_text=True)  # buffered: waits for the end
    assert time.monotonic() - started < 3.0
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
    finally:
        started = time.monotonic()
        stop()
        assert time.monotonic() - started < 5.0
    # stop() ends the open stream within a poll (0.5 s), not at the next keep-alive (10 s).
    started = time.monotonic()
    rest = stream.read()
    assert time.monotonic() - started < 3.0 and b"event: tick" in rest
    stream.close()
    stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "api/runs", timeout=2)
