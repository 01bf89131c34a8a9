"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright.

Pages are served on loopback by ``picogrid.web.server.start_background``, over a store the
edge's own ``Store`` writes (fast checks) or over a real short day on the HIL bench (the
operator's override going all the way to a MicroPython board and back). Skipped, with the
reason, only where chromium or Playwright cannot be installed (see ``make test``).
"""

import sqlite3
import threading
import time

import pytest
from werkzeug.security import generate_password_hash

from picogrid.tools.screenshots import N_CHARTS, PAGES, Browser, browser_missing, wait_for_charts
from picogrid.web.server import start_background
from test_web import BOARDS, dispatch_row, telemetry_values, write_baselines, write_forecasts, write_tick

_MISSING = browser_missing()
if _MISSING:
    pytest.skip("browser tests skipped: %s" % _MISSING, allow_module_level=True)

PASSWORD = "operator on duty"


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


@pytest.fixture
def running_day(tmp_path):
    """A store with 3 of 60 ticks done, baselines, forecasts; served on loopback."""
    from picogrid.edge.control.store import Store
    db = tmp_path / "picogrid.sqlite"
    store = Store(db)
    store.start_run("lab", "2010-06-14", 60, 5.0, {})
    write_baselines(store, 5)
    for tick in range(3):
        write_tick(store, tick)
    write_forecasts(store, ticks=(0, 1, 2))
    url, stop = start_background(db)
    yield store, url.rstrip("/")
    stop()
    store.close()


@pytest.mark.parametrize("name, path", PAGES)
def test_page_renders_with_data_and_units(browser, running_day, name, path):
    _, url = running_day
    page = browser.new_page()
    try:
        page.goto(url + path)
        wait_for_charts(page, N_CHARTS[name])
        page.wait_for_selector("#live-status.live")          # the SSE stream is connected
        text = page.inner_text("main")
        assert "run 1" in text
        # every chart axis carries a unit in brackets, the x axis excepted (ticks); uPlot
        # draws axes on the canvas, so the labels are read from the live chart objects
        labels = page.evaluate("Object.values(charts).flatMap(u => u.axes.map(a => a.label))")
        assert len(labels) >= 2 * N_CHARTS[name]
        assert all(lab == "tick" or ("[" in lab and lab.endswith("]")) for lab in labels), labels
        expected = {
            "live": "%.2f" % telemetry_values(0, 2)["p_bus_w"],      # pv card, tick 2
            "consumption": "%.4g" % sum((2.0 + 0.5 * k) * 5.0 for k in range(3)),  # PV used [J]
            "finance": "%.4g" % sum(dispatch_row("mpc", k)["cost"] for k in range(3)),   # cost so far
            "forecasts": "interval coverage",
            "boards": "0.1.0",
        }[name]
        assert expected in text, text[:2000]
        assert page.errors == []
    finally:
        page.close()


def test_live_values_update_without_reload(browser, running_day):
    store, url = running_day
    page = browser.new_page()
    try:
        page.goto(url + "/")
        wait_for_charts(page, 1)
        page.wait_for_selector("#live-status.live")
        page.evaluate("window.__notReloaded = true")
        assert page.inner_text("#run-ticks-done") == "3"
        points_before = page.evaluate("document.querySelector('.uplot') && 1")
        write_tick(store, 3)                                   # the edge finishes tick 3
        page.wait_for_function("document.getElementById('run-ticks-done').textContent === '4'",
                               timeout=10000)
        assert page.inner_text("#bus-voltage") == "%.4g" % dispatch_row("mpc", 3)["bus_voltage_v"]
        card = page.inner_text("[data-board=pv] .p-bus")
        assert card == "%.2f" % telemetry_values(0, 3)["p_bus_w"]
        assert page.evaluate("window.__notReloaded") is True and points_before == 1
        assert page.evaluate("document.body.dataset.updates") not in (None, "0")
        assert page.errors == []
    finally:
        page.close()


def test_finance_shows_the_third_bench_once_its_rows_arrive(browser, running_day):
    """A finance page opened before the third bench's first tick (the demo prints the URL
    before tick 0) shows the all-measured capture live once that bench has rows."""
    store, url = running_day
    page = browser.new_page()
    try:
        page.goto(url + "/finance?run=1")
        page.wait_for_selector("#live-status.live")
        assert page.is_hidden("#vs-mpc-perfect-forecast")
        for tick in range(4):
            store.dispatch("mpc_perfect_forecast", tick, dispatch_row("mpc_perfect_forecast", tick))
        write_tick(store, 3)                                   # the next update reads them
        page.wait_for_selector("#vs-mpc-perfect-forecast", state="visible", timeout=10000)
        to_latest = {p: sum(dispatch_row(p, k)["cost"] for k in range(4))
                     for p in ("mpc", "naive", "mpc_perfect_forecast")}
        capture = (to_latest["naive"] - to_latest["mpc"]) / (to_latest["naive"] - to_latest["mpc_perfect_forecast"])
        page.wait_for_function("document.getElementById('savings-capture-vs-mpc-perfect-forecast').textContent"
                               " === %r" % ("%.4g" % capture), timeout=10000)
        assert page.errors == []
    finally:
        page.close()


def test_viewer_without_login_sees_no_controls(browser, running_day):
    _, url = running_day
    page = browser.new_page()
    try:
        page.goto(url + "/")
        assert page.query_selector("#form-override") is None
        assert "Log in" in page.inner_text("#operator")
        # a script on the page cannot control either: no session, no token
        status = page.evaluate("""async () => (await fetch('/api/commands', {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: '{"kind": "shed", "board": "load3"}'})).status""")
        assert status in (401, 403)
    finally:
        page.close()


# --- the round trip through a real day on the HIL bench ------------------------------------

OVERRIDE_W = -0.37    # storage charge [W]: a value the optimiser would not pick by itself


@pytest.fixture(scope="module")
def hil_day(tmp_path_factory):
    """A short real day (6 MicroPython boards, plant, edge, store) with the dashboard on it."""
    from picogrid.hil.day import Day, load_site
    run_dir = tmp_path_factory.mktemp("browser-day")
    site_file = run_dir / "site.toml"
    site_file.write_text('[web]\nusers = { ada = "%s" }\n' % generate_password_hash(PASSWORD, "pbkdf2:sha256:1000"))
    # 10 ticks of 1.5 s: the round trip needs about 3 of them; the rest is margin for a busy CI
    site = load_site(tick_s=1.5, n_ticks=10, horizon=10)
    day = Day(site, run_dir, day="2013-07-16", start_delay_s=2.0)
    day.start()
    url, stop = start_background(day.db_path, site_config=site_file)
    errors = []

    def run():
        try:
            day.run()
        except BaseException as exc:     # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, name="browser-day", daemon=True)
    thread.start()
    try:
        yield day, url.rstrip("/"), errors
    finally:
        thread.join(timeout=60)
        stop()
        day.stop()


def test_override_round_trips_to_the_board(browser, hil_day):
    day, url, errors = hil_day
    page = browser.new_page()
    try:
        page.goto(url + "/login?next=/")
        page.fill("input[name=username]", "ada")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#form-override")
        assert page.inner_text("#user") == "ada"
        page.select_option("#form-override select[name=board]", "storage")
        page.fill("#form-override input[name=value]", str(OVERRIDE_W))
        page.click("#form-override button[type=submit]")
        page.wait_for_function("document.getElementById('command-result').textContent.includes('queued')")
        # the edge takes it at its next tick; the page learns it from the stream
        page.wait_for_selector("#commands-body td.cmd-applied", timeout=20000)
        # ... and the storage board itself reports the new setpoint in its telemetry
        page.wait_for_function(
            "document.querySelector('[data-board=storage] .card-sub').textContent.includes(%r)"
            % ("%.2f" % OVERRIDE_W), timeout=20000)
        assert "operator" in page.inner_text("#decision-reason")
        assert page.errors == []
    finally:
        page.close()
    assert errors == []
    conn = sqlite3.connect(str(day.db_path))
    try:
        cmd = conn.execute("SELECT kind, board, value, status, user, result FROM command").fetchone()
        assert cmd[:5] == ("override", "storage", OVERRIDE_W, "applied", "ada"), cmd
        audit = [r[0] for r in conn.execute("SELECT action FROM audit ORDER BY id")]
        assert audit == ["login", "command:override"]
        sent = conn.execute("SELECT value_w, acked FROM setpoint WHERE board='storage' ORDER BY rowid DESC"
                            " LIMIT 1").fetchone()
        assert sent == (pytest.approx(OVERRIDE_W), 1)
    finally:
        conn.close()
