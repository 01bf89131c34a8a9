"""What the edge takes from a lab feed it has not seen before (docs/design.md §2): deferrable jobs
whose windows a teaching server states oddly (edge/sources/deferrable.py ``normalise_jobs``, told once
per job and day by the runner), and the first day's sun, learnt within the day
(edge/sources/feedsource.py ``FeedForecaster``)."""

import math
import sqlite3

import numpy as np
import pytest

from picogrid.edge.sources import labfeed as L
from picogrid.edge.sources.deferrable import DeferrableLoad, normalise_jobs
from clocks import Clock

DAY0 = 5_900_000
TICK_S = 5.0           # the feed's tick [s]
RATING_W = 1.0         # the lab's deferrable board (load3)


def _normalise(feed_jobs):
    """The feed's jobs as stated (inclusive deadlines) through the client and the board's rules."""
    return normalise_jobs(L.parse("deferables", feed_jobs), 60, RATING_W, TICK_S)


# (as the feed states it, the job delivered (end exclusive) or None when refused, the note or None)
CASES = [
    ({"start": 10, "end": 19, "energy": 20.0}, {"start": 10, "end": 20, "energy": 20.0}, None),
    ({"start": 10, "end": 10, "energy": 5.0}, {"start": 10, "end": 11, "energy": 5.0}, None),   # one tick, full
    ({"start": 10, "end": 19, "energy": 0.0}, {"start": 10, "end": 20, "energy": 0.0}, None),
    ({"start": 40, "end": 30, "energy": 10.0}, {"start": 30, "end": 41, "energy": 10.0},
     "normalised job (ticks 40..30, 10 J): start after its deadline: the two swapped"),
    ({"start": 62, "end": 66, "energy": 5.0}, None,
     "refused job (ticks 62..66, 5 J): it starts after the day's last tick 59"),
    ({"start": 60, "end": 60, "energy": 5.0}, None,
     "refused job (ticks 60..60, 5 J): it starts after the day's last tick 59"),
    ({"start": 50, "end": 70, "energy": 5.0}, {"start": 50, "end": 60, "energy": 5.0},
     "normalised job (ticks 50..70, 5 J): deadline past the day's last tick clipped to tick 59"),
    ({"start": 65, "end": 50, "energy": 5.0}, {"start": 50, "end": 60, "energy": 5.0},
     "normalised job (ticks 65..50, 5 J): start after its deadline: the two swapped; deadline past the "
     "day's last tick clipped to tick 59"),
    ({"start": 10, "end": 13, "energy": 30.0}, {"start": 10, "end": 14, "energy": 20.0},
     "normalised job (ticks 10..13, 30 J): energy capped to 20 J, what the deferrable board takes at its "
     "1 W rating in ticks 10..13 once the jobs due before it are served"),
    ({"start": 10, "end": 13, "energy": -1.0}, None,
     "refused job (ticks 10..13, -1 J): its energy must be a finite number of joules >= 0 and its ticks finite"),
    ({"start": 10, "end": 13, "energy": math.nan}, None,
     "refused job (ticks 10..13, nan J): its energy must be a finite number of joules >= 0"),
    ({"start": 10, "end": 13, "energy": math.inf}, None, "refused job (ticks 10..13, inf J)"),
    ({"start": -3, "end": 4, "energy": 2.0}, {"start": 0, "end": 5, "energy": 2.0},
     "normalised job (ticks -3..4, 2 J): start before the day moved to tick 0"),
    ({"start": -9, "end": -2, "energy": 2.0}, None,
     "refused job (ticks -9..-2, 2 J): its deadline is before the day's first tick"),
    ({"start": 2.5, "end": 8.5, "energy": 1.0}, {"start": 3, "end": 9, "energy": 1.0},
     "normalised job (ticks 2.5..8.5, 1 J): ticks rounded inward to whole ticks"),
]


@pytest.mark.parametrize("stated,expected,note", CASES)
def test_each_odd_window_is_normalised_or_refused_and_said(stated, expected, note):
    jobs, notes = _normalise([stated])
    assert jobs == ([] if expected is None else [pytest.approx(expected)])
    if note is None:
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].startswith(note), notes


def test_jobs_that_fit_together_are_never_cut_and_the_later_deadline_gives_way():
    """The room is an earliest-deadline-first schedule at the rating (5 J per 5 s tick): a set
    that fits keeps every joule, whatever order the feed lists it in; of two that do not, the
    job due later is capped to what is left."""
    fits = [{"start": 0, "end": 9, "energy": 40.0}, {"start": 2, "end": 3, "energy": 10.0}]
    assert _normalise(fits) == ([{"start": 0, "end": 10, "energy": 40.0}, {"start": 2, "end": 4, "energy": 10.0}], [])
    too_much = [{"start": 10, "end": 15, "energy": 20.0}, {"start": 10, "end": 13, "energy": 15.0}]
    jobs, notes = _normalise(too_much)
    assert jobs == [{"start": 10, "end": 16, "energy": pytest.approx(15.0)}, {"start": 10, "end": 14, "energy": 15.0}]
    assert notes == ["normalised job (ticks 10..15, 20 J): energy capped to 15 J, what the deferrable board "
                     "takes at its 1 W rating in ticks 10..15 once the jobs due before it are served"]
    squeezed_out = [{"start": 10, "end": 11, "energy": 10.0}, {"start": 10, "end": 11, "energy": 3.0}]
    jobs, notes = _normalise(squeezed_out)
    assert jobs == [{"start": 10, "end": 12, "energy": 10.0}]
    assert notes == ["refused job (ticks 10..11, 3 J): no room left for it at the deferrable board's 1 W rating "
                     "once the jobs due before it are served"]


def test_window_rules_without_a_rating_leave_the_energy_alone():
    jobs, notes = normalise_jobs([{"start": 40, "end": 31, "energy": 500.0}], 60)
    assert jobs == [{"start": 30, "end": 41, "energy": 500.0}] and len(notes) == 1
    with pytest.raises(ValueError, match="dt_s"):
        normalise_jobs([], 60, rating_w=1.0)


def test_a_job_is_told_once_a_day():
    board = DeferrableLoad("load3", RATING_W, 2)
    odd = L.parse("deferables", [{"start": 40, "end": 30, "energy": 10.0}, {"start": 5, "end": 9, "energy": 2.0}])
    assert board.update(DAY0, odd, 60, TICK_S)
    assert board.untold() == ["normalised job (ticks 40..30, 10 J): start after its deadline: the two swapped"]
    assert board.ledger.jobs.tolist() == [[30, 41, 10.0], [5, 10, 2.0]]
    assert not board.update(DAY0, odd, 60, TICK_S) and board.untold() == []
    # the feed drops a job and comes back with it: no second word on the same day
    board.update(DAY0, odd[1:], 60, TICK_S)
    board.update(DAY0, odd, 60, TICK_S)
    assert board.untold() == []
    board.update(DAY0 + 1, odd, 60, TICK_S)        # a new day: its jobs are new jobs
    assert len(board.untold()) == 1


def test_odd_windows_from_the_feed_reach_the_runner_as_one_event_each(tmp_path):
    """The real client against the loopback feed serving odd windows: the answer stays live
    (one job's oddity does not spoil the list), the runner's board gets the jobs it can
    deliver, and the store holds one ``deferrable_job`` event per odd job and day, however
    many ticks hear them."""
    from picogrid.edge.sources.feedsource import FeedSource, feed_site
    from picogrid.edge.boards.fleet import Fleet
    from picogrid.edge.control.runner import EdgeRunner
    from picogrid.edge.site import board_ids, load_site
    from picogrid.edge.control.store import Store
    from picogrid.models.labfeed_server import serve_days

    odd = [{"start": 40, "end": 30, "energy": 10.0},      # start after end
           {"start": 62, "end": 66, "energy": 5.0},       # start past the day's last tick
           {"start": 50, "end": 53, "energy": 35.0},      # more than 4 ticks at 1 W take
           {"start": 5, "end": 9, "energy": 2.0}]         # an ordinary job
    clock = Clock(DAY0 * 300 + 0.5)
    server = serve_days("2013-10-08", 2, clock)
    for day in server.days:
        day["deferables"] = odd
    site = feed_site(load_site(tick_s=TICK_S))
    store = Store(tmp_path / "run.sqlite")
    store.start_run("lab", "feed", 60, TICK_S, {})
    try:
        source = FeedSource(L.LabFeed(server.url, timeout_s=2.0, clock=clock), site["pv"]["capability_w"])
        runner = EdgeRunner(site, source, Fleet(board_ids(site)), store, forecaster=None, t0=0.0,
                            clock=clock)
        assert runner.tick_s == TICK_S and runner.deferrable.rating_w == RATING_W
        for day in (DAY0, DAY0 + 1):
            for t in range(4):
                clock.t = day * 300 + t * 5 + 0.5
                source.begin_tick(t)
                assert source.sources[t]["deferables"] == "live", source.sources[t]
                runner.update_jobs()
            assert runner.deferrable.ledger.jobs.tolist() == [[30, 41, 10.0], [50, 54, 20.0], [5, 10, 2.0]]
        store.commit()
    finally:
        server.close()
    conn = sqlite3.connect(str(tmp_path / "run.sqlite"))
    events = conn.execute("SELECT board, kind, detail FROM event ORDER BY rowid").fetchall()
    conn.close()
    texts = ["normalised job (ticks 40..30, 10 J): start after its deadline: the two swapped",
             "refused job (ticks 62..66, 5 J): it starts after the day's last tick 59",
             "normalised job (ticks 50..53, 35 J): energy capped to 20 J, what the deferrable board takes at "
             "its 1 W rating in ticks 50..53 once the jobs due before it are served"]
    assert events == [("load3", "deferrable_job", text) for text in texts] * 2   # once on each day


def test_demand_and_prices_come_from_yesterday_from_the_first_tick():
    """An edge that has never seen the feed: at tick 0 of its first day the forecast of demand
    and prices is the feed's /yesterday (the learner's first day), not the value now held."""
    from picogrid.edge.sources.feedsource import FeedForecaster, FeedSource
    from picogrid.edge.forecasting.forecast import forecast_from_now
    from picogrid.models.labfeed_server import generate_lab_days, serve_days

    clock = Clock(DAY0 * 300 + 0.5)
    server = serve_days("2013-10-08", 1, clock)
    try:
        source = FeedSource(L.LabFeed(server.url, timeout_s=2.0, clock=clock), pv_capability_w=3.87)
        source.begin_tick(0)
        fc = FeedForecaster(source)
        demand_now, imp_now, exp_now = source.now(0)
        loads = ("load1_demand_w", "load2_demand_w", "load3_demand_w")
        now = {"pv_avail_w": source.sun_now(0) * 3.87, "demand_w": demand_now,
               "import_price_per_j": imp_now, "export_price_per_j": exp_now}
        plan = forecast_from_now(fc, source.history(0, 120), now, loads, source.calendar(0), source.clearsky(1, 60))
    finally:
        server.close()
    before = generate_lab_days("2013-10-07", 1)[0]
    assert fc.source["import_price_per_j"].startswith("labfeed_learner")
    assert fc.source["load1_demand_w"].startswith("labfeed_learner")
    # step j >= 1 of the plan is tick j: yesterday's tick j (the learner has one day: "yesterday")
    np.testing.assert_allclose(plan["import_price_per_j"][0.5][1:], before["sell_price"][1:60])
    np.testing.assert_allclose(sum(plan[l][0.5][1:] for l in loads),
                               np.minimum(np.asarray(before["demand"][1:60]) / 3, 1.0) * 3, atol=1e-9)


def _bell(rise, sunset, peak):
    t = np.arange(60)
    return np.where((t > rise) & (t < sunset), peak * np.sin(np.pi * (t - rise) / (sunset - rise)), 0.0)


def test_first_day_sun_is_a_day_curve_not_the_sun_now_held():
    """A fresh edge on a feed whose sun is a bell (sunrise 14, sunset 46, peak 70 %, clouds
    cutting ticks 24-26): through the real client, the PV forecast issued at each tick of its
    first day follows the day (zero after sunset, at night) instead of holding the sun now, its
    error is less than half of holding's, and its P10-P90 band holds most of the day while
    narrowing as the day's sun is seen."""
    from picogrid.edge.sources.feedsource import FeedForecaster, FeedSource
    from picogrid.edge.forecasting.forecast import forecast_from_now
    from picogrid.models.labfeed_server import LabFeedServer

    cap = 3.87
    sun = _bell(14.0, 46.0, 0.7)
    sun[24:27] *= 0.5
    day = {"date": "bell", "sun": np.rint(sun * 100).astype(int).tolist(), "demand": [1.0] * 60,
           "sell_price": [50] * 60, "buy_price": [25] * 60, "deferables": []}
    truth = np.asarray(day["sun"], float) / 100 * cap
    clock = Clock(DAY0 * 300 + 0.5)
    server = LabFeedServer([day, day], clock, day0=DAY0 - 1)
    err, held_err, inside, width = [], [], [], {}
    try:
        source = FeedSource(L.LabFeed(server.url, timeout_s=2.0, clock=clock), cap)
        fc = FeedForecaster(source)
        loads = ("load1_demand_w", "load2_demand_w", "load3_demand_w")
        for k in range(59):
            clock.t = DAY0 * 300 + k * 5 + 0.5
            source.begin_tick(k)
            d, imp, exp = source.now(k)
            now = {"pv_avail_w": source.sun_now(k) * cap, "demand_w": d, "import_price_per_j": imp,
                   "export_price_per_j": exp}
            pv = forecast_from_now(fc, source.history(k, 120), now, loads, source.calendar(k),
                                   source.clearsky(k + 1, 60))["pv_available_w"]
            assert fc.source["pv_available_w"] == "sun_day_fit:first day"
            y = truth[k + 1:]
            p10, p50, p90 = (pv[q][1:60 - k] for q in (0.1, 0.5, 0.9))
            err.append(np.abs(p50 - y))
            held_err.append(np.abs(now["pv_avail_w"] - y))
            inside.append((y >= p10 - 1e-9) & (y <= p90 + 1e-9))
            if k < 40:       # the band of the afternoon, ticks 40..49, as forecast at tick k
                width[k] = float(np.mean((p90 - p10)[39 - k:49 - k]))
            if k == 41:      # the case: 1.5 W at tick 41 was held through the night
                assert p50[:3].min() > 0.5 and (p50[8:] == 0).all() and (p90[10:] == 0).all(), p50
    finally:
        server.close()
    mae, held_mae = np.concatenate(err).mean(), np.concatenate(held_err).mean()
    coverage = np.concatenate(inside).mean()
    assert mae < 0.5 * held_mae, (mae, held_mae)
    assert coverage >= 0.8, coverage
    # the afternoon's band narrows as the day's sun is seen
    assert width[35] < 0.6 * width[20], width


def test_second_day_sun_is_yesterday_s_with_the_band_of_today_s_curve():
    """Day 2: the point is the sun seen yesterday (as before); until the day-to-day sun band has
    its days, its band is the spread of today's day curve, not none."""
    from picogrid.edge.sources.feedsource import FeedForecaster, FeedSource
    from picogrid.models.labfeed_server import LabFeedServer

    cap = 3.87
    day = {"date": "bell", "sun": np.rint(_bell(14.0, 46.0, 0.7) * 100).astype(int).tolist(), "demand": [1.0] * 60,
           "sell_price": [50] * 60, "buy_price": [25] * 60, "deferables": []}
    clock = Clock(DAY0 * 300 + 0.5)
    server = LabFeedServer([day], clock, day0=DAY0 - 1)
    try:
        source = FeedSource(L.LabFeed(server.url, timeout_s=2.0, clock=clock), cap)
        fc = FeedForecaster(source)
        for d, t in [(DAY0, t) for t in range(60)] + [(DAY0 + 1, t) for t in range(21)]:
            clock.t = d * 300 + t * 5 + 0.5
            source.begin_tick(t)
        assert source.day == DAY0 + 1 and source._tick == 20
        fans = fc.forecast(source.history(21, 120), source.calendar(21), source.clearsky(21, 60))["pv_available_w"]
    finally:
        server.close()
    assert fc.source["pv_available_w"] == "edge_yesterday:band of sun_day_fit"
    np.testing.assert_allclose(fans[0.5], np.asarray(day["sun"])[(21 + np.arange(60)) % 60] / 100 * cap)
    assert (fans[0.1] <= fans[0.5]).all() and (fans[0.5] <= fans[0.9]).all()
    assert (fans[0.9] - fans[0.1])[:20].min() > 0.1        # daylight ticks ahead: a band, not a point


def test_plan_jobs_ask_no_more_than_fits_beside_the_board_s_own_demand():
    """A job that fits the board's rating but not beside its own demand (15 J over 15 ticks of
    1 s at 1 W, with 0.3 W of its own demand) is planned for what the room holds, 10.5 J, said
    once a day however the forecast moves; the ledger keeps the whole job, and a plan with
    room enough asks for all of it."""
    board = DeferrableLoad("load3", RATING_W, 2)
    board.update(DAY0, [{"start": 43, "end": 58, "energy": 15.0}], 60, 1.0)
    assert board.untold() == []
    room_w = board.headroom_w(np.full((60, 3), 0.3))
    jobs = board.plan_jobs(40, 2, room_w, 1.0)
    assert jobs == [{"start": 3, "end": 18, "energy": pytest.approx(10.5)}]
    assert board.untold() == ["planned job (ticks 43..57, 15 J left) for 10.5 J: the load3 board's own demand, "
                              "as forecast at tick 40, leaves it no more room before its deadline"]
    assert board.plan_jobs(41, 2, board.headroom_w(np.full((60, 3), 0.4)), 1.0)[0]["energy"] == pytest.approx(9.0)
    assert board.untold() == []
    assert board.plan_jobs(41, 2, board.headroom_w(np.zeros((60, 3))), 1.0)[0]["energy"] == 15.0
    assert board.ledger.jobs.tolist() == [[43, 58, 15.0]]


def test_early_band_spreads_the_first_days_forecast():
    """Before the learner has scored three days of its own errors, the demand and price fans are
    not the point forecast in every quantile: one day's tick-to-tick scatter, or the day-to-day
    change of two, gives P10 < P50 < P90; the noisier the days, the wider."""
    from picogrid.edge.sources.feedsource import early_band

    rng = np.random.default_rng(0)
    level = 60 + 30 * np.sin(np.linspace(0, np.pi, 60))
    quiet, noisy = level + rng.normal(0, 2, 60), level + rng.normal(0, 20, 60)
    assert early_band([], 0, 60) is None
    for days in ([noisy], [quiet, noisy]):
        lo, hi = early_band(days, 10, 60)
        assert lo.shape == hi.shape == (60,) and np.all(lo <= 0) and np.all(hi >= 0)
        assert np.median(hi - lo) > 20          # about 2 x 1.28 sd of 20 c/J noise
    lo_q, hi_q = early_band([quiet], 10, 60)
    lo_n, hi_n = early_band([noisy], 10, 60)
    assert np.median(hi_q - lo_q) < np.median(hi_n - lo_n) / 4


def test_a_faster_bench_asks_a_job_the_same_power():
    """On a bench running the feed five times faster (1 s ticks for the feed's 5 s) a job's
    energy is a fifth, so it asks the board the same power over its window as on the feed."""
    from picogrid.edge.sources.feedsource import FeedSource

    src = FeedSource(None, pv_capability_w=3.87, tick_s=1.0)
    src._jobs = [{"start": 10, "end": 20, "energy": 10.0}]       # as the feed stated it, 5 s ticks
    assert src.jobs() == [{"start": 10, "end": 20, "energy": pytest.approx(2.0)}]
    assert FeedSource(None, pv_capability_w=3.87).jobs() == []
