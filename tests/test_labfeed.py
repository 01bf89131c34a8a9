"""Lab market feed client (edge/sources/labfeed.py) against the loopback server of the same API
(models/labfeed_server.py) serving lab days generated from real data."""

import numpy as np
import pytest

from picogrid.edge.sources import labfeed as L
from picogrid.models.labfeed_server import LabFeedServer, generate_lab_days
from clocks import Clock

DAY0 = 5_900_000          # a lab day index (unix time 1.77e9 s, late 2026)
N_DAYS = 10


@pytest.fixture(scope="module")
def days():
    return generate_lab_days("2013-10-07", N_DAYS)


@pytest.fixture
def feed(days):
    clock = Clock(DAY0 * 300 + 3 * 5 + 1.0)   # day DAY0, tick 3
    server = LabFeedServer(days, clock, day0=DAY0)
    client = L.LabFeed(server.url, timeout_s=0.3, clock=clock)
    yield server, client, clock
    server.close()


def test_day_and_tick_follow_the_spec():
    assert L.day_tick(0) == (0, 0)
    assert L.day_tick(299.999) == (0, 59)
    assert L.day_tick(300) == (1, 0)
    assert L.day_tick(1_770_000_012.5) == (5_900_000, 2)   # 12.5 s into the window -> tick 2


def test_generated_days_are_real_and_in_spec_units(days):
    d = days[0]
    assert len(days) == N_DAYS and d["date"] == "2013-10-07"
    assert all(len(d[k]) == 60 for k in ("sun", "demand", "sell_price", "buy_price"))
    assert all(isinstance(v, int) and 0 <= v <= 100 for v in d["sun"])
    assert all(isinstance(v, int) for v in d["sell_price"] + d["buy_price"])
    assert min(d["demand"]) >= 0 and max(d["demand"]) <= 3.0           # three 1 W LED drivers
    assert np.mean(d["sell_price"]) > np.mean(d["buy_price"])          # import dearer than export
    assert d["sun"][0] == 0 and max(d["sun"]) > 20                     # night at midnight, sun by day
    assert len({tuple(x["demand"]) for x in days}) == N_DAYS            # real days differ


def test_live_snapshot_matches_the_served_day(feed, days):
    server, client, clock = feed
    snap = client.snapshot()
    assert (snap.day, snap.tick) == (DAY0, 3)
    assert snap.sources == {"sun": "live", "price": "live", "demand": "live", "deferables": "live"}
    assert snap.status == "ok"
    d = days[0]
    assert snap.sun_fraction == pytest.approx(d["sun"][3] / 100)
    assert snap.demand_w == pytest.approx(d["demand"][3])
    assert (snap.import_price_per_j, snap.export_price_per_j) == (d["sell_price"][3], d["buy_price"][3])
    # the feed's end is the inclusive deadline; the client's window ends exclusive
    assert snap.deferables == [{"start_tick": x["start"], "end_tick": x["end"] + 1, "energy_j": x["energy"]}
                               for x in d["deferables"]]
    # /yesterday (served cyclically: the last generated day) was learned once
    assert client.learner.days == [DAY0 - 1]
    np.testing.assert_allclose(client.learner.data["demand"][0], days[-1]["demand"])


def test_slow_server_keeps_running_on_cached_values(feed, days):
    server, client, clock = feed
    client.snapshot()
    server.delay_s = 1.0                      # slower than the client's 0.3 s timeout
    clock.t += 1.0                            # same tick
    snap = client.snapshot()
    assert snap.sources["demand"] == "cached" and snap.demand_w == pytest.approx(days[0]["demand"][3])
    assert snap.status.startswith("degraded") and "timed out" in snap.status
    # the failed server is left alone until retry_after_s: no further request waits on it
    before = server.requests
    client.snapshot()
    assert server.requests == before


def test_server_down_uses_the_learned_forecast_and_says_so(feed, days):
    server, client, clock = feed
    client.snapshot()
    server.close()
    clock.t += 10.0                           # two ticks on: the cached tick is stale
    snap = client.snapshot()
    assert snap.tick == 5
    assert snap.sources["demand"] == "forecast" and snap.sources["price"] == "forecast"
    assert snap.sources["sun"] == "none" and snap.sun_fraction is None
    assert "degraded" in snap.status and "/demand" in snap.status
    # with one day learned the forecast is "same tick yesterday" corrected by nothing yet
    assert snap.demand_w == pytest.approx(days[-1]["demand"][5])
    assert snap.import_price_per_j == pytest.approx(days[-1]["sell_price"][5])


def test_failing_server_503_is_handled(feed):
    server, client, clock = feed
    server.failing = True
    snap = client.snapshot()
    assert "HTTPError" in snap.status and snap.sources["price"] == "none"


def test_one_failing_endpoint_leaves_the_others_live(feed, days):
    """/yesterday answering 503 is that endpoint's problem: the live values still come, every
    tick, and the bad endpoint is not asked again until retry_after_s."""
    server, client, clock = feed
    server.failing_endpoints = {"/yesterday"}
    for k in (3, 4, 5):
        clock.t = DAY0 * 300 + k * 5 + 1.0
        snap = client.snapshot()
        assert snap.tick == k
        assert {snap.sources[e] for e in ("sun", "price", "demand", "deferables")} == {"live"}, snap.status
        assert snap.demand_w == pytest.approx(days[0]["demand"][k])
        assert snap.status.startswith("degraded") and "no /yesterday history" in snap.status
    asked = server.requests
    clock.t += 0.5                                   # within retry_after_s of the last try
    client.update_history()
    assert server.requests == asked


def test_slow_history_does_not_cost_the_tick_its_live_values(feed, days):
    """A /yesterday slower than the timeout marks the feed down, but only after this tick's
    live values came in."""
    server, client, clock = feed
    server.delay_s, server.slow_endpoints = 1.0, {"/yesterday"}
    snap = client.snapshot()                       # a fresh client: it asks for its history
    assert {snap.sources[e] for e in ("sun", "price", "demand", "deferables")} == {"live"}, snap.status
    assert snap.demand_w == pytest.approx(days[0]["demand"][3])
    assert "no /yesterday history" in snap.status and "timed out" in snap.status


def test_server_tick_is_the_authority_over_the_edge_clock(days, caplog):
    """An edge clock 1.5 ticks ahead of the server's: the snapshot carries the server's tick
    and the skew is logged once, not every tick."""
    server_clock = Clock(DAY0 * 300 + 3 * 5 + 1.0)
    edge_clock = lambda: server_clock() + 7.5     # noqa: E731
    server = LabFeedServer(days, server_clock, day0=DAY0)
    try:
        client = L.LabFeed(server.url, timeout_s=0.3, clock=edge_clock)
        with caplog.at_level("WARNING", logger="picogrid.edge.sources.labfeed"):
            first = client.snapshot()
            server_clock.t += 5.0
            second = client.snapshot()
        assert (first.day, first.tick) == (DAY0, 3) and second.tick == 4
        assert first.demand_w == pytest.approx(days[0]["demand"][3])
        assert client.clock_skew_ticks == -1
        assert sum("edge clock" in r.getMessage() for r in caplog.records) == 1
    finally:
        server.close()


@pytest.mark.parametrize("endpoint,payload,match", [
    ("sun", {"tick": 1}, "sun"),
    ("sun", {"tick": 1, "sun": 140}, "0..100"),
    ("sun", {"tick": 1, "sun": "50"}, "finite number"),
    ("sun", {"tick": None, "sun": 50}, "finite number"),
    ("sun", {"tick": True, "sun": 50}, "finite number"),
    ("demand", {"day": 1, "tick": 1, "demand": -1.0}, "demand must be in 0"),
    ("demand", {"day": 1, "tick": 1, "demand": None}, "finite number"),
    ("demand", {"day": 1, "tick": 1, "demand": float("nan")}, "finite number"),
    ("demand", {"day": -1, "tick": 1, "demand": 1.0}, "day must be in 0"),
    ("price", [1, 2], "sell_price"),
    ("price", {"day": 1, "tick": 75, "sell_price": 3, "buy_price": 1}, "tick must be in 0..59"),
    ("price", {"day": 1, "tick": -1, "sell_price": 3, "buy_price": 1}, "tick must be in 0..59"),
    ("price", {"day": 1, "tick": 2.5, "sell_price": 3, "buy_price": 1}, "whole number"),
    ("price", {"day": 1, "tick": 2, "sell_price": "3", "buy_price": 1}, "sell_price must be a finite"),
    # an odd window is the job's business (edge.deferrable.normalise_jobs), a non-number the answer's
    ("deferables", [{"start": 5, "end": 8, "energy": None}], "energy must be a number"),
    ("deferables", [{"start": "5", "end": 8, "energy": 1.0}], "start must be a number"),
    ("deferables", [{"start": 5, "end": 8}], "energy"),
    ("yesterday", [{"tick": 0, "demand": 0, "sell_price": 1, "buy_price": 1}], "60 records"),
    ("yesterday", [{"tick": 0, "demand": 0, "sell_price": 1, "buy_price": 1}] * 60, "once each"),
    ("yesterday", [{"tick": k, "demand": None if k == 7 else 0, "sell_price": 1, "buy_price": 1}
                   for k in range(60)], "finite number"),
])
def test_spec_violations_are_clear_errors(endpoint, payload, match):
    with pytest.raises(ValueError, match=match):
        L.parse(endpoint, payload)


@pytest.mark.parametrize("path,body", [
    ("/price", {"day": DAY0, "tick": 75, "sell_price": 3, "buy_price": 1}),
    ("/demand", {"day": DAY0, "tick": 3, "demand": None}),
    ("/sun", {"tick": "3", "sun": 50}),
])
def test_a_badly_typed_answer_leaves_the_tick_running(feed, days, path, body):
    """An endpoint answering out of spec (a tick past the day, a null, a string) is that endpoint's
    problem: the snapshot still comes, with the other endpoints live and the bad one named."""
    server, client, clock = feed
    clock.t = DAY0 * 300 + 3 * 5 + 1.0
    server.bad_answers = {path: body}
    snap = client.snapshot()
    endpoint = path[1:]
    assert snap.sources[endpoint] != "live" and f"/{endpoint}" in snap.status
    assert {snap.sources[e] for e in ("sun", "price", "demand") if e != endpoint} == {"live"}
    assert snap.tick == 3


def test_online_learner_beats_same_tick_yesterday(days):
    """Fed day by day over HTTP (/yesterday), the learner's rest-of-day forecasts, issued at
    every tick of days 5..10, beat "same tick yesterday" on demand and price."""
    clock = Clock(DAY0 * 300)
    server = LabFeedServer(days, clock, day0=DAY0)
    try:
        client = L.LabFeed(server.url, timeout_s=2.0, clock=clock)
        err = {k: {"learner": [], "yesterday": []} for k in ("demand", "sell_price")}
        for i in range(1, N_DAYS):
            clock.t = (DAY0 + i) * 300 + 1.0
            assert client.update_history()          # learns day i - 1 from /yesterday
            assert client.learner.days[-1] == DAY0 + i - 1
            if i >= 4:   # from a few days of history on: forecasts of today, issued at every tick
                for key, truth_key in (("demand", "demand"), ("sell_price", "sell_price")):
                    truth = np.asarray(days[i][truth_key], float)
                    yesterday = np.asarray(days[i - 1][truth_key], float)
                    for t in range(60):
                        fc = client.learner.forecast(key, truth[:t], 60 - t)
                        err[key]["learner"].append(np.mean(np.abs(fc - truth[t:])))
                        err[key]["yesterday"].append(np.mean(np.abs(yesterday[t:] - truth[t:])))
        for key, e in err.items():
            # measured: demand 0.83x, price 0.71x of "same tick yesterday" on these days
            assert np.mean(e["learner"]) < 0.95 * np.mean(e["yesterday"]), (key, np.mean(e["learner"]),
                                                                            np.mean(e["yesterday"]))
    finally:
        server.close()


def test_learner_is_yesterday_until_it_has_scored_two_days(days):
    learner = L.OnlineDayLearner()
    with pytest.raises(ValueError, match="no day"):
        learner.forecast("demand")
    for i in range(2):
        learner.observe_day(i, {"demand_w": days[i]["demand"], "sell_price": days[i]["sell_price"],
                                "buy_price": days[i]["buy_price"]})
    np.testing.assert_allclose(learner.forecast("demand"), days[1]["demand"])
    with pytest.raises(ValueError, match="60 finite"):
        learner.observe_day(9, {"demand_w": [1.0] * 59, "sell_price": [1] * 60, "buy_price": [1] * 60})


def test_feed_forecaster_without_history_holds_the_latest_values(feed, days):
    """No /yesterday yet: the feed forecaster holds what the edge knows now, from the tick
    after now on (forecast_from_now), instead of reading a tick not observed yet."""
    from picogrid.edge.sources.feedsource import FeedForecaster, FeedSource
    from picogrid.edge.forecasting.forecast import forecast_from_now

    server, client, clock = feed
    server.failing_endpoints = {"/yesterday"}
    source = FeedSource(client, pv_capability_w=3.87)
    clock.t = DAY0 * 300 + 40 * 5 + 1.0                 # tick 40: demand and sun are on
    source.begin_tick(40)
    demand_now, imp_now, exp_now = source.now(40)
    now = {"pv_available_w": source.sun_now(40) * 3.87, "import_price_per_j": imp_now,
           "export_price_per_j": exp_now, **{l + "_demand_w": float(d) for l, d in zip(("load1", "load2", "load3"), demand_now)}}
    fc = FeedForecaster(source)
    loads = ("load1_demand_w", "load2_demand_w", "load3_demand_w")
    plan_now = {"pv_avail_w": now["pv_available_w"], "import_price_per_j": imp_now,
                "export_price_per_j": exp_now, "demand_w": [now[s] for s in loads]}
    plan = forecast_from_now(fc, source.history(40, 120), plan_now, loads, source.calendar(40),
                             source.clearsky(41, 60))
    assert fc.source["load1_demand_w"] == "persistence:no feed history"
    assert now["load1_demand_w"] > 0 and imp_now > 0
    for name in ("load1_demand_w", "import_price_per_j"):
        np.testing.assert_array_equal(plan[name][0.5], np.full(60, now[name]))
    # the sun is not held: a day curve through the sun seen (tests/test_feed_inputs.py)
    assert fc.source["pv_available_w"] == "sun_day_fit:first day"
    pv = plan["pv_available_w"]
    assert pv[0.5][0] == now["pv_available_w"] > 0 and pv[0.5][1:].min() == 0.0    # sunset within the horizon
    assert (pv[0.1] <= pv[0.5]).all() and (pv[0.5] <= pv[0.9]).all() and (pv[0.9][1:] > pv[0.1][1:]).any()


def test_pooled_quantiles_pool_neighbouring_ticks_not_across_midnight():
    errors = np.tile(np.arange(6.0), (4, 1))           # 4 samples, error = tick of day
    errors[:, 2] = np.nan
    q = L.pooled_quantiles(errors, (0.0, 1.0), window=1, min_samples=5)
    # tick 0 pools ticks 0..1 (8 values), tick 1 pools 0..2 (8 finite), tick 5 pools 4..5
    np.testing.assert_array_equal(q[:, 0], [0.0, 1.0])
    np.testing.assert_array_equal(q[:, 1], [0.0, 1.0])
    np.testing.assert_array_equal(q[:, 3], [3.0, 4.0])
    np.testing.assert_array_equal(q[:, 5], [4.0, 5.0])
    assert np.isnan(L.pooled_quantiles(errors, (0.5,), window=1, min_samples=13)).all()


def test_learner_bands_cover_about_eighty_percent_of_days_not_seen():
    """P10..P90 of the learner's rest-of-day forecasts, issued at every tick of each day before
    the day is learned from, hold about 80 % of the day's values (measured on these 24 days from
    day 5 on: demand 76 %, sell price 84 %, buy price 83 %)."""
    days = generate_lab_days("2013-10-07", 24)
    learner = L.OnlineDayLearner()
    keys = ("demand", "sell_price", "buy_price")

    def learn(i):
        learner.observe_day(i, {"demand_w": days[i]["demand"], "sell_price": days[i]["sell_price"],
                                "buy_price": days[i]["buy_price"]})

    for i in range(L.OnlineDayLearner.BAND_MIN_DAYS + 1):  # the first day has no errors
        assert learner.band("demand", 0, 60) is None         # too few days scored: no band
        learn(i)
    assert learner.band("demand", 0, 60) is not None
    inside = {k: [] for k in keys}
    for i in range(L.OnlineDayLearner.BAND_MIN_DAYS + 1, len(days)):
        if i >= 5:
            for key in keys:
                truth = np.asarray(days[i][key], float)
                for t in range(60):
                    lo, hi = learner.band(key, t, 60 - t)
                    assert (lo <= 0).all() and (hi >= 0).all() and lo.shape == (60 - t,)
                    point = learner.forecast(key, truth[:t], 60 - t)
                    inside[key].append(np.mean((truth[t:] >= point + lo - 1e-9) & (truth[t:] <= point + hi + 1e-9)))
        learn(i)
    for key, v in inside.items():
        assert 0.68 <= np.mean(v) <= 0.92, (key, np.mean(v))
    with pytest.raises(ValueError, match="outside"):
        learner.band("demand", 60)


def test_feed_forecaster_fans_widen_once_days_are_seen(days):
    """After a few days through the feed, the forecaster's fans are banded (P10 <= P50 <= P90,
    not all equal), PV stays within the PV capability and the sources no longer say "no band"."""
    from picogrid.edge.sources.feedsource import FeedForecaster, FeedSource

    clock = Clock(DAY0 * 300)
    server = LabFeedServer(days, clock, day0=DAY0)
    try:
        source = FeedSource(L.LabFeed(server.url, timeout_s=2.0, clock=clock), pv_capability_w=3.87)
        fc = FeedForecaster(source)
        for i in range(L.OnlineDayLearner.BAND_MIN_DAYS + 2):   # enough sun days for a sun band
            for t in range(60):
                clock.t = (DAY0 + i) * 300 + t * 5 + 0.5
                source.begin_tick(t)
                if i == 0 and t == 30:
                    first = fc.forecast(source.history(t + 1, 120), source.calendar(t + 1), source.clearsky(t + 1, 60))
                    # the first day's sun curve (its own posterior band); demand and prices from the
                    # /yesterday the edge has seen, banded by that day's own scatter (early band)
                    assert fc.source.pop("pv_available_w") == "sun_day_fit:first day"
                    assert set(fc.source.values()) == {"labfeed_learner:early band"}, fc.source
                    for s, f in first.items():
                        assert (f[0.1] <= f[0.5] + 1e-12).all() and (f[0.5] <= f[0.9] + 1e-12).all(), s
        fans = fc.forecast(source.history(31, 120), source.calendar(31), source.clearsky(31, 60))
    finally:
        server.close()
    assert set(fc.source.values()) == {"labfeed_learner", "edge_yesterday"}, fc.source
    for name, f in fans.items():
        assert (f[0.1] <= f[0.5] + 1e-12).all() and (f[0.5] <= f[0.9] + 1e-12).all(), name
        assert (f[0.9] - f[0.1]).max() > 0, name
    assert (fans["pv_available_w"][0.9] <= 3.87 + 1e-12).all() and (fans["pv_available_w"][0.1] >= 0).all()


def test_learner_errors_are_the_forecasts_it_would_have_made(days):
    """The errors a day adds are, at every issue tick t, the day's values from t on minus the
    forecast :meth:`forecast` gave from ticks 0..t-1 before the day was learnt."""
    learner = L.OnlineDayLearner()
    for i in range(4):
        learner.observe_day(i, {"demand_w": days[i]["demand"], "sell_price": days[i]["sell_price"],
                                "buy_price": days[i]["buy_price"]})
    truth = np.asarray(days[4]["demand"], float)
    expected = np.full((60, 60), np.nan)
    for t in range(60):
        expected[t, t:] = truth[t:] - learner.forecast("demand", truth[:t], 60 - t)
    learner.observe_day(4, {"demand_w": days[4]["demand"], "sell_price": days[4]["sell_price"],
                            "buy_price": days[4]["buy_price"]})
    np.testing.assert_allclose(learner.errors["demand"][-1], expected, rtol=0, atol=1e-12)


def test_band_pools_the_issue_and_target_ticks_it_says():
    """With errors equal to lead time - 5 (target tick - issue tick - 5) on every day, the band
    of a forecast issued at tick k for tick k + j is the P10/P90 of the leads pooled over the
    issue ticks k-2..k (from tick 0) and the targets k+j-2..k+j+2 (within the day)."""
    learner = L.OnlineDayLearner()
    issue, target = np.meshgrid(np.arange(60), np.arange(60), indexing="ij")
    err = np.where(target >= issue, target - issue - 5.0, np.nan)
    learner.errors["demand"] = [err.copy() for _ in range(L.OnlineDayLearner.BAND_MIN_DAYS)]
    w = L.OnlineDayLearner.BAND_TICKS
    for k in (0, 1, 7, 30, 57):
        lo, hi = learner.band("demand", k, 60 - k)
        for j in range(0, 60 - k, 3):
            pool = [err[i, tau] for i in range(max(k - w, 0), k + 1)
                    for tau in range(max(k + j - w, 0), min(k + j + w, 59) + 1)] * L.OnlineDayLearner.BAND_MIN_DAYS
            pool = np.array(pool)[np.isfinite(pool)]
            p10, p90 = np.quantile(pool, [0.1, 0.9]) if pool.size >= 10 else (0.0, 0.0)
            assert lo[j] == pytest.approx(min(p10, 0.0)) and hi[j] == pytest.approx(max(p90, 0.0)), (k, j)


def test_served_days_give_the_real_day_before_as_the_first_yesterday():
    """``serve_days``: the first day's /yesterday is the real day before, not the last served
    day; the cycle that follows the last day (the day before first) keeps /yesterday the day
    played before."""
    from picogrid.models.labfeed_server import serve_days

    clock = Clock(DAY0 * 300 + 1.0)
    server = serve_days("2013-10-08", 3, clock)
    try:
        client = L.LabFeed(server.url, timeout_s=2.0, clock=clock)
        before, first, _, last = generate_lab_days("2013-10-07", 4)
        assert client.snapshot().demand_w == pytest.approx(first["demand"][0])
        assert client.learner.days == [DAY0 - 1]
        np.testing.assert_allclose(client.learner.data["demand"][-1], before["demand"])
        clock.t = (DAY0 + 3) * 300 + 1.0                     # after the last day: the cycle again
        assert client.snapshot().demand_w == pytest.approx(before["demand"][0])
        np.testing.assert_allclose(client.learner.data["demand"][-1], last["demand"])
    finally:
        server.close()


def _run_feed_days(server_url, clock, first_day, n_days, memory):
    """A fresh edge (client and source) over ``n_days`` whole lab days from ``first_day``."""
    from picogrid.edge.sources.feedsource import FeedSource

    clock.t = first_day * 300 + 0.5
    source = FeedSource(L.LabFeed(server_url, timeout_s=2.0, clock=clock), pv_capability_w=3.87, memory=memory)
    for day in range(first_day, first_day + n_days):
        for t in range(60):
            clock.t = day * 300 + t * 5 + 0.5
            source.begin_tick(t)
    return source


def test_feed_memory_carries_the_days_seen_into_the_next_run(tmp_path):
    """An edge that restarts takes up the days earlier runs saw: the learner's feed days and
    the sun it observed (which /yesterday does not give), so the next day's PV forecast is
    yesterday's sun instead of persistence."""
    from picogrid.edge.sources.feedmemory import FeedMemory
    from picogrid.edge.sources.feedsource import FeedForecaster
    from picogrid.models.labfeed_server import serve_days

    clock = Clock(DAY0 * 300)
    server = serve_days("2013-10-08", 6, clock)
    memory = FeedMemory(tmp_path / "memory.json")
    try:
        first = _run_feed_days(server.url, clock, DAY0, 2, memory)
        assert first.feed.learner.days == [DAY0 - 1, DAY0]
        second = _run_feed_days(server.url, clock, DAY0 + 2, 1, memory)
        fresh = _run_feed_days(server.url, clock, DAY0 + 2, 1, None)
    finally:
        server.close()
    assert second.feed.learner.days == [DAY0 - 1, DAY0, DAY0 + 1]
    assert fresh.feed.learner.days == [DAY0 + 1]
    for key in ("demand", "sell_price"):
        np.testing.assert_array_equal(second.feed.learner.data[key][1], first.feed.learner.data[key][1])
    np.testing.assert_array_equal(second.yesterday_sun, first.observed["sun"])   # day DAY0 + 1's sun
    assert set(second.sun_days) == {DAY0, DAY0 + 1} and fresh.yesterday_sun is None
    assert set(memory.load()[1]) == {DAY0, DAY0 + 1, DAY0 + 2}      # saved at the day's last tick
    for src, pv_source in ((second, "edge_yesterday"), (fresh, "sun_day_fit:first day")):
        fc = FeedForecaster(src)
        fc.forecast(src.history(30, 120), src.calendar(30), src.clearsky(30, 60))
        assert fc.source["pv_available_w"].startswith(pv_source), fc.source


def test_feed_memory_sets_an_unreadable_file_aside_and_skips_future_days(tmp_path, caplog):
    from picogrid.edge.sources.feedmemory import FeedMemory

    path = tmp_path / "memory.json"
    path.write_text("{not json")
    memory = FeedMemory(path)
    learner, sun = memory.restore(L.OnlineDayLearner(), DAY0)
    assert sun == {} and learner.days == []
    assert (tmp_path / "memory.json.bad").read_text() == "{not json" and not path.exists()
    assert "unreadable" in caplog.text
    days = generate_lab_days("2013-10-07", 3)
    for i, d in enumerate(days):
        learner.observe_day(DAY0 + i, {"demand_w": d["demand"], "sell_price": d["sell_price"], "buy_price": d["buy_price"]})
    memory.save(learner, {DAY0 + i: np.full(60, 0.5) for i in range(3)}, feed_url="http://a")
    restored, sun = memory.restore(L.OnlineDayLearner(), DAY0 + 2, "http://a")   # DAY0 + 2 is today
    assert restored.days == [DAY0, DAY0 + 1] and sorted(sun) == [DAY0, DAY0 + 1]
    # another feed's file is not used; days far from today (another clock speed) are left out
    assert memory.restore(L.OnlineDayLearner(), DAY0 + 2, "http://b")[0].days == []
    assert "not used" in caplog.text
    far, sun = memory.restore(L.OnlineDayLearner(), DAY0 + 1000, "http://a")
    assert far.days == [] and sun == {}
    # a learner that has days already gets the remembered ones in day order, not after them
    has = L.OnlineDayLearner()
    d = days[2]
    has.observe_day(DAY0 + 2, {"demand_w": d["demand"], "sell_price": d["sell_price"], "buy_price": d["buy_price"]})
    merged, _ = memory.restore(has, DAY0 + 3, "http://a")
    assert merged.days == [DAY0, DAY0 + 1, DAY0 + 2]


def test_feed_memory_keeps_what_the_feed_said_when_a_day_changes_or_stops(tmp_path):
    """The finished day's sun survives the save at the next day's start; a run stopped
    mid-day (close) keeps the part it saw; ticks the feed gave no sun for are kept as unknown,
    not as the stand-in the bench ran on."""
    from picogrid.edge.sources.feedmemory import FeedMemory
    from picogrid.edge.sources.feedsource import FeedSource
    from picogrid.models.labfeed_server import serve_days

    clock = Clock(DAY0 * 300)
    server = serve_days("2013-10-08", 6, clock)
    memory = FeedMemory(tmp_path / "memory.json")
    try:
        source = _run_feed_days(server.url, clock, DAY0, 1, memory)
        seen = source.observed["sun"].copy()
        clock.t = (DAY0 + 1) * 300 + 0.5
        source.begin_tick(0)                                  # a new day: saved again
        np.testing.assert_array_equal(memory.load()[1][DAY0], seen)
        server.failing_endpoints = {"/sun"}
        for t in range(1, 10):
            if t == 5:
                server.failing_endpoints = set()
            clock.t = (DAY0 + 1) * 300 + t * 5 + 0.5
            source.begin_tick(t)
        source.close()                                        # stopped at tick 9
    finally:
        server.close()
    feed_days, sun = memory.load()
    part = sun[DAY0 + 1]
    assert np.isfinite(part[[0, 5, 6, 7, 8, 9]]).all() and np.isnan(part[1:5]).all() and np.isnan(part[10:]).all()
    assert np.isfinite(source.observed["sun"][1:5]).all()   # the bench ran on the stand-in
    assert DAY0 + 1 not in feed_days                        # a part day is no feed day


def test_feed_memory_bridges_a_day_the_edge_was_not_running(tmp_path):
    """A restart misses the next day's start (a lab day is five minutes): the run after it
    learns the last day run from what the feed said live that day (its /yesterday is the day
    missed), and forecasts PV from the last sun seen, labelled with its age."""
    from picogrid.edge.sources.feedmemory import FeedMemory
    from picogrid.edge.sources.feedsource import FeedForecaster
    from picogrid.models.labfeed_server import serve_days

    clock = Clock(DAY0 * 300)
    server = serve_days("2013-10-08", 6, clock)
    memory = FeedMemory(tmp_path / "memory.json")
    try:
        first = _run_feed_days(server.url, clock, DAY0, 1, memory)
        later = _run_feed_days(server.url, clock, DAY0 + 2, 1, memory)
    finally:
        server.close()
    assert later.feed.learner.days == [DAY0 - 1, DAY0, DAY0 + 1]
    played = server.days[1]                                  # lab day DAY0
    np.testing.assert_allclose(later.feed.learner.data["demand"][1], played["demand"])
    np.testing.assert_allclose(later.feed.learner.data["sell_price"][1], played["sell_price"])
    assert later.sun_age_days == 2
    np.testing.assert_array_equal(later.yesterday_sun, first.observed["sun"])
    fc = FeedForecaster(later)
    fc.forecast(later.history(30, 120), later.calendar(30), later.clearsky(30, 60))
    assert fc.source["pv_available_w"].startswith("edge_sun_seen:2 days ago")


def test_a_day_seen_in_part_gives_its_sun_without_a_band(days):
    """The edge started mid-day: the next day's PV forecast is that day's sun at the same ticks
    (zero where it was not seen), without a day-to-day band yet (the band of today's day curve)."""
    from picogrid.edge.sources.feedsource import FeedForecaster, FeedSource

    clock = Clock(DAY0 * 300)
    server = LabFeedServer(days, clock, day0=DAY0)
    try:
        source = FeedSource(L.LabFeed(server.url, timeout_s=2.0, clock=clock), pv_capability_w=3.87)
        for day, ticks in ((DAY0, range(30, 60)), (DAY0 + 1, range(0, 6))):
            for t in ticks:
                clock.t = day * 300 + t * 5 + 0.5
                source.begin_tick(t)
        fc = FeedForecaster(source)
        fans = fc.forecast(source.history(6, 120), source.calendar(6), source.clearsky(6, 60))
    finally:
        server.close()
    assert source.sun_age_days == 1
    assert fc.source["pv_available_w"] == "edge_yesterday:band of sun_day_fit"
    seen = np.asarray(days[0]["sun"], float) / 100
    seen[:30] = 0.0                                       # not seen: no sun known there
    np.testing.assert_allclose(fans["pv_available_w"][0.5], np.minimum(seen[(6 + np.arange(60)) % 60] * 3.87, 3.87))


def test_demo_and_edge_keep_the_feed_memory_in_the_run_folder_unless_told(tmp_path):
    from picogrid import cli

    parser = cli.build_parser()
    for argv, expected in ((["demo", "--feed", "http://x", "--run-dir", str(tmp_path)], tmp_path / "labfeed_memory.json"),
                           (["edge", "--site", "s.toml", "--feed", "http://x", "--feed-memory", str(tmp_path / "m.json")],
                            tmp_path / "m.json")):
        args = parser.parse_args(argv)
        assert cli._feed_memory(args, tmp_path).path == expected
