"""The lab market feed as the edge's source, end to end: a loopback feed server serving real
days (models.labfeed_server), the edge's LabFeed client, and both HIL benches, with the feed's
clock run 5x faster so a 5 s feed tick lasts 1 s on the bench."""

import math
import sqlite3
import time

import numpy as np
import pytest

from picogrid.edge.sources.labfeed import DAY_S, LabFeed
from picogrid.hil.day import Day, load_site
from picogrid.models.labfeed_server import LabFeedServer, generate_lab_days

pytestmark = pytest.mark.e2e

SPEED = 5.0
N_TICKS = 6
NOON = 30            # the served days are rotated to start at midday: there is sun to relay
JOB = {"start": 1, "end": 4, "energy": 1.2}    # /deferables: 1.2 J within ticks 1..4 (end: the deadline, inclusive) [J]


@pytest.fixture(scope="module")
def feed_day(tmp_path_factory):
    # a clock whose next lab day starts ~6 s from now, ticking 5x faster than real time
    wall0 = time.time()
    offset = (math.floor(wall0 * SPEED / DAY_S) + 1) * DAY_S - wall0 * SPEED - 12.0 * SPEED
    clock = lambda: time.time() * SPEED + offset     # noqa: E731
    days = generate_lab_days("2013-07-14", 3)
    for d in days:
        for key in ("sun", "demand", "sell_price", "buy_price"):
            d[key] = d[key][NOON:] + d[key][:NOON]
        d["deferables"] = [JOB]       # one job inside the ticks the test runs
    # served day index: the run day is days[2] (two days of /yesterday history before it)
    server = LabFeedServer(days, clock=clock, day0=int(clock() // DAY_S) - 1)
    run_dir = tmp_path_factory.mktemp("feed")
    site = load_site(tick_s=DAY_S / 60 / SPEED)
    try:
        with Day(site, run_dir, n_run_ticks=N_TICKS, feed=LabFeed(server.url, clock=clock)) as day:
            summary = day.run()
            sun_seen = list(day.source.observed["sun"][:N_TICKS])
            run_day = days[(day.source.day - server.day0) % len(days)]
    finally:
        server.close()
    conn = sqlite3.connect(str(run_dir / "picogrid.sqlite"))
    conn.row_factory = sqlite3.Row
    yield conn, summary, run_day, sun_seen
    conn.close()


def test_feed_values_drive_the_edge(feed_day):
    conn, summary, run_day, sun_seen = feed_day
    assert sun_seen == pytest.approx([s / 100 for s in run_day["sun"][:N_TICKS]])
    rows = conn.execute("SELECT * FROM dispatch WHERE policy='mpc' ORDER BY tick").fetchall()
    assert len(rows) == N_TICKS
    demand = [sum(r[l + "_demand_w"] for l in ("load1", "load2", "load3")) for r in rows]
    assert demand == pytest.approx([min(d, 3.0) for d in run_day["demand"][:N_TICKS]], abs=1e-6)
    assert [r["import_price_per_j"] for r in rows] == pytest.approx(run_day["sell_price"][:N_TICKS])


def test_forecasts_come_from_the_feed_learner(feed_day):
    conn, *_ = feed_day
    sources = {r[0] for r in conn.execute("SELECT forecast_source FROM decision")}
    assert all("labfeed_learner" in s for s in sources), sources


def test_bench_pv_follows_the_feed_sun(feed_day):
    conn, _, _, sun_seen = feed_day
    rows = conn.execute("SELECT pv_w, pv_available_w FROM dispatch WHERE policy='mpc' ORDER BY tick").fetchall()
    pv = np.array([r["pv_w"] for r in rows[1:]])      # after the first tick's MPPT start
    avail = np.array([r["pv_available_w"] for r in rows[1:]])
    assert min(sun_seen) > 0.2          # midday: the emulator has something to follow
    assert pv == pytest.approx(avail, rel=0.1, abs=0.05)


def test_feed_deferables_are_delivered_in_their_window(feed_day):
    conn, summary, _, _ = feed_day
    rows = conn.execute("SELECT tick, deferrable_w FROM dispatch WHERE policy='mpc' ORDER BY tick").fetchall()
    tick_s = DAY_S / 60 / SPEED
    per_tick_j = {r["tick"]: (r["deferrable_w"] or 0.0) * tick_s for r in rows}
    assert all(per_tick_j[t] == 0.0 for t in per_tick_j if not JOB["start"] <= t <= JOB["end"])
    assert summary["deferrable_jobs"] == 1
    assert sum(per_tick_j.values()) == pytest.approx(summary["deferrable_energy_j"])
    # the LED's power tracking may leave a little of the last tick's share undelivered
    assert summary["deferrable_shortfall_j"] <= 0.05 * JOB["energy"], summary
