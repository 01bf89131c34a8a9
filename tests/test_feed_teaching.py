"""Teaching-server days on the loopback lab feed (models/labfeed_server.py generate_teaching_days),
read by the edge's client, and the per-kind lab-feed evaluation (edge/evaluation/feed_evaluate.py)."""

import io
import json
import urllib.request

import numpy as np
import pytest

from picogrid.edge.evaluation import feed_evaluate as F
from picogrid.edge.sources import labfeed as L
from picogrid.edge.optimizer import policies
from picogrid.models.labfeed_server import (TEACHING_ODDITIES, feed_days, generate_teaching_days, serve_days)

DAY0 = 5_900_000          # a lab day index (any: the clock is injected)
N_DAYS = 60


# injected time: the tests leap through lab days without waiting
Clock = F.LeapingClock


@pytest.fixture(scope="module")
def days():
    return generate_teaching_days(N_DAYS, seed=0)


def _oddity(job):
    """Which oddity of :data:`TEACHING_ODDITIES` a served job has, or None (an ordinary job)."""
    if job["start"] > 59:
        return "start_past_day"
    if job["start"] > job["end"]:
        return "start_after_end"
    if job["energy"] > (job["end"] - job["start"] + 1) * 5.0 * 1.0:     # 5 s ticks, the 1 W board
        return "energy_over_window"
    return None


def test_teaching_prices_are_integers_in_range_and_jump_from_tick_to_tick(days):
    sell = np.array([d["sell_price"] for d in days])
    buy = np.array([d["buy_price"] for d in days])
    assert all(isinstance(v, int) for d in days for v in d["sell_price"] + d["buy_price"])
    assert sell.min() >= 10 and sell.max() <= 150
    assert sell.min() <= 20 and sell.max() >= 130                   # the range is used, ~10 to 150 c/J
    # large independent noise: about +-20 c/J on every tick (a smooth day would move ~2 c/J a tick)
    assert np.mean(np.abs(np.diff(sell, axis=1))) > 10.0
    assert (buy >= 0).all() and (buy < sell).all()                  # export below import
    ratio = buy.sum(axis=1) / sell.sum(axis=1)
    assert ratio.min() > 0.38 and ratio.max() < 0.72 and ratio.max() - ratio.min() > 0.15
    # the level follows demand minus sun: dearer in the evening peak than at sunny midday
    assert sell[:, 44:50].mean() > sell[:, 27:33].mean() + 30


def test_teaching_sun_is_zero_at_night_and_a_day_curve(days):
    sun = np.array([d["sun"] for d in days])
    assert all(isinstance(v, int) for d in days for v in d["sun"])
    assert (sun[:, :13] == 0).all() and (sun[:, 48:] == 0).all()     # night
    assert (sun >= 0).all() and (sun <= 100).all()
    peaks = sun.max(axis=1)
    assert peaks.min() >= 30 and peaks.max() >= 90 and np.ptp(peaks) > 30      # varies by day
    sunrise = np.argmax(sun > 0, axis=1)
    assert len(set(sunrise)) >= 3 and sunrise.min() >= 13 and sunrise.max() <= 18
    mean = sun.mean(axis=0)                  # a bell: rises to midday, falls after
    assert (np.diff(mean[14:28]) > 0).all() and (np.diff(mean[33:47]) < 0).all()
    assert 27 <= int(np.argmax(mean)) <= 33


def test_teaching_demand_is_noisy_watts_mostly_servable(days):
    demand = np.array([d["demand"] for d in days])
    assert all(isinstance(v, float) for d in days for v in d["demand"])
    assert demand.min() >= 0.0 and demand.max() <= 4.0
    assert np.mean(demand <= 3.0) > 0.99                             # the three 1 W loads
    assert demand[:, 44:50].mean() > demand[:, 0:10].mean() + 0.8    # an evening peak over the night base
    assert demand[:, 16:21].mean() > demand[:, 0:10].mean() + 0.4    # and a morning one
    assert np.mean(np.abs(np.diff(demand[:, :10], axis=1))) > 0.05   # noise


def test_teaching_jobs_are_mostly_ordinary_with_each_oddity_on_some_days(days):
    jobs = [j for d in days for j in d["deferables"]]
    assert all(1 <= len(d["deferables"]) <= 3 for d in days)
    assert all(set(j) == {"start", "end", "energy"} and isinstance(j["start"], int) and isinstance(j["end"], int)
               for j in jobs)
    kinds = [_oddity(j) for j in jobs]
    assert set(kinds) == {None, *TEACHING_ODDITIES}
    assert kinds.count(None) / len(kinds) > 0.75
    assert max(sum(_oddity(j) is not None for j in d["deferables"]) for d in days) == 1   # one odd job a day
    for d in days:                      # the ordinary jobs of a day fit together on the 1 W board
        ordinary = [j for j in d["deferables"] if _oddity(j) is None]
        assert all(0 <= j["start"] <= j["end"] <= 59 and j["energy"] > 0 for j in ordinary)
        assert sum(j["energy"] / ((j["end"] - j["start"] + 1) * 5.0) for j in ordinary) <= 1.0


def test_teaching_days_are_deterministic_for_a_seed(days):
    assert generate_teaching_days(N_DAYS, seed=0) == days
    assert generate_teaching_days(5, seed=0) == days[:5]            # a day is its seed's and index's alone
    assert generate_teaching_days(5, seed=1) != days[:5]
    assert [d["date"] for d in days[:3]] == ["teaching-0000", "teaching-0001", "teaching-0002"]
    with pytest.raises(ValueError):
        generate_teaching_days(0, seed=0)
    with pytest.raises(ValueError, match="no date"):
        feed_days("teaching", 3, first_day="2013-07-01")
    with pytest.raises(ValueError, match="unknown kind"):
        feed_days("simulated", 3)


def test_the_server_serves_a_teaching_day_to_the_edge_client(days):
    """Through the real HTTP API on loopback, read by the edge's LabFeed client: teaching day 4
    (its odd window served as it is) on lab day DAY0 + 3, teaching day 3 as its /yesterday."""
    clock = Clock((DAY0 + 3) * 300 + 17 * 5 + 1.0)                 # lab day DAY0 + 3, tick 17
    server = serve_days(None, 5, clock, day0=DAY0, kind="teaching", seed=0)
    try:
        assert server.days == days[:6]
        day = days[4]
        assert [_oddity(j) for j in day["deferables"]].count("start_after_end") == 1
        with urllib.request.urlopen(server.url + "/deferables", timeout=2.0) as resp:
            assert json.loads(resp.read()) == day["deferables"]     # not normalised: that is the client's job
        client = L.LabFeed(server.url, timeout_s=2.0, clock=clock)
        snap = client.snapshot()
        assert (snap.day, snap.tick) == (DAY0 + 3, 17)
        assert {snap.sources[e] for e in ("sun", "price", "demand")} == {"live"}
        assert snap.sun_fraction == pytest.approx(day["sun"][17] / 100)
        assert snap.demand_w == pytest.approx(day["demand"][17])
        assert (snap.import_price_per_j, snap.export_price_per_j) == (day["sell_price"][17], day["buy_price"][17])
        assert client.learner.days == [DAY0 + 2]
        np.testing.assert_allclose(client.learner.data["sell_price"][-1], days[3]["sell_price"])
        clock.t = (DAY0 + 1) * 300 + 2 * 5 + 1.0                    # an ordinary day, tick 2
        snap = client.snapshot()
        assert snap.sources["deferables"] == "live"
        assert snap.deferables == [{"start_tick": j["start"], "end_tick": j["end"] + 1, "energy_j": j["energy"]}
                                   for j in days[2]["deferables"]]
    finally:
        server.close()


def test_client_jobs_are_the_edge_s_reading_and_count_what_it_takes_away():
    _, cfg, _ = F.load_site("lab")
    cfg = cfg.replace(dt_s=5.0)
    served = [{"start": 10, "end": 13, "energy": 50.0},         # 4 ticks x 5 J at 1 W: 20 J fit
              {"start": 20, "end": 29, "energy": 10.0},         # ordinary
              {"start": 65, "end": 70, "energy": 5.0},          # starts after the day
              {"start": 40, "end": 35, "energy": 4.0}]          # starts after its end
    read = F.client_jobs(served, cfg)
    assert read["stated_j"] == pytest.approx(69.0)
    assert {"start": 20, "end": 30, "energy": 10.0} in read["jobs"]           # deadline 29 inclusive
    room_j = {(j["start"], j["end"]): (j["end"] - j["start"]) * 5.0 for j in read["jobs"]}
    assert all(0 <= j["start"] < j["end"] <= 60 and j["energy"] <= room_j[(j["start"], j["end"])] + 1e-9
               for j in read["jobs"])
    assert read["removed_j"] == pytest.approx(69.0 - sum(j["energy"] for j in read["jobs"]))
    assert read["removed_j"] >= 30.0 - 1e-9                                   # at least the 30 J that cannot fit
    assert read["rejected"] + read["refused"] + read["normalised"] >= 3


def test_day_outcome_counts_shed_with_the_grid_on_and_job_energy_short():
    _, cfg, _ = F.load_site("lab")
    cfg = cfg.replace(dt_s=5.0)
    demand = np.ones((4, 3))
    truth = policies.DayTruth(pv_avail_w=np.zeros(4), demand_w=demand, import_price_per_j=np.full(4, 50.0),
                              export_price_per_j=np.full(4, 20.0), e0_j=10.0,
                              p_imp_max_w=np.array([6.0, 0.0, 6.0, 6.0]),      # an outage at tick 1
                              jobs=[{"start": 0, "end": 3, "energy": 10.0}])
    served = demand.copy()
    served[1, 2] = 0.0              # shed in the outage: not counted
    served[2, 1] = 0.4              # shed with the grid on: 0.6 W x 5 s
    result = policies.DayResult(pv_w=np.zeros(4), storage_w=np.zeros(4), grid_w=np.ones(4), load_served_w=served,
                                e_j=np.full(5, 10.0), costs={"import_cost": 30.0, "export_revenue": 4.5, "total": 0.0},
                                deferrable_w=np.array([1.0, 0.5, 0.0, 0.0]))
    out = F.day_outcome(result, truth, cfg)
    assert out["shed_connected_j"] == pytest.approx(3.0)
    assert out["shortfall_j"] == pytest.approx(10.0 - 7.5)
    assert out["bill"] == pytest.approx(25.5)


def test_forecast_quality_scores_the_steps_ahead_within_the_day():
    n = 60
    truth = policies.DayTruth(pv_avail_w=np.linspace(0, 3, n), demand_w=np.full((n, 3), 0.5),
                              import_price_per_j=np.arange(n, dtype=float), export_price_per_j=np.zeros(n), e0_j=0.0)
    target = {"pv_available_w": truth.pv_avail_w, "import_price_per_j": truth.import_price_per_j}

    def fans(t, offset, half_band):      # plan-aligned: step k is tick t + k, past the day: junk
        idx = np.minimum(t + np.arange(n), n - 1)
        out = {s: {0.1: v[idx] + offset - half_band, 0.5: v[idx] + offset, 0.9: v[idx] + offset + half_band}
               for s, v in target.items()}
        for load in F.LOAD_SERIES:
            out[load] = {q: np.full(n, 0.5 + offset / 3) for q in (0.1, 0.5, 0.9)}
        return out

    exact = F.forecast_quality({t: fans(t, 0.0, 0.0) for t in range(n)}, truth)
    assert all(exact[s] == {"mae": 0.0, "coverage": 1.0} for s in F.FORECAST_SERIES)
    off = F.forecast_quality({t: fans(t, 1.0, 0.5) for t in range(n)}, truth)
    assert all(off[s]["mae"] == pytest.approx(1.0) and off[s]["coverage"] == 0.0 for s in F.FORECAST_SERIES)
    wide = F.forecast_quality({t: fans(t, 1.0, 1.5) for t in range(n)}, truth)
    assert wide["import_price_per_j"]["coverage"] == 1.0


@pytest.fixture(scope="module")
def teaching_run():
    return F.evaluate_feed(n_days=3, warm_days=1, compare=False, kind="teaching", seed=0)


def test_evaluate_feed_on_teaching_days_reports_per_kind_metrics(teaching_run):
    res = teaching_run
    assert res["kind"] == "teaching" and res["days"] == ["teaching-0002", "teaching-0003", "teaching-0004"]
    run = ("naive", "perfect_foresight", "mpc_perfect_forecast", "mpc_own")
    for key in ("costs", "shed_connected_j", "shortfall_j", "bill"):
        assert set(res[key]) == set(run) and all(len(v) == 3 and np.isfinite(v).all() for v in res[key].values())
    assert all((v >= 0).all() for key in ("shed_connected_j", "shortfall_j") for v in res[key].values())
    assert res["costs"]["perfect_foresight"].sum() <= res["costs"]["naive"].sum()
    # teaching prices are 10-150 c/J: a day's bill is hundreds to thousands of cents
    assert np.abs(res["bill"]["naive"]).min() > 100
    served = generate_teaching_days(5, 0)[2:5]
    assert res["jobs"]["served"] == sum(len(d["deferables"]) for d in served)
    # teaching day 4 has a start after its end: the edge's reading of it is counted, whatever it does
    assert res["jobs"]["rejected"] + res["jobs"]["refused"] + res["jobs"]["normalised"] >= 1
    assert res["jobs"]["stated_j"] == pytest.approx(sum(j["energy"] for d in served for j in d["deferables"]))
    assert len(res["forecast"]) == 4                                  # every day the edge saw, warm one first
    for q in res["forecast"]:
        assert set(q) == set(F.FORECAST_SERIES)
        assert all(np.isfinite(m["mae"]) and 0.0 <= m["coverage"] <= 1.0 for m in q.values())
    out = io.StringIO()
    F.report(res, out)
    text = out.getvalue()
    assert text.startswith("== labfeed teaching: 3 teaching-server days teaching-0002 .. teaching-0004")
    assert "energy shed, grid connected [J] (target 0): naive" in text
    assert "deferrable shortfall [J] (target 0): naive" in text
    assert "bill (import - export): mpc_own" in text
    assert all(f"    {s}" in text for s in F.FORECAST_SERIES) and "day 1" in text and "day 2" in text


def test_day_one_is_the_first_day_the_edge_sees_whether_warm_or_scored(teaching_run):
    """Forecasting on the learning-only days changes nothing: the first days' forecast quality
    is the same as with no warm days at all (where they are scored)."""
    cold = F.evaluate_feed(n_days=2, warm_days=0, compare=False, kind="teaching", seed=0)
    assert cold["days"] == ["teaching-0001", "teaching-0002"]
    assert cold["forecast"] == teaching_run["forecast"][:2]
    assert "early band" in " ".join(cold["sources"])       # day 1: the band of the one /yesterday seen


def test_cli_takes_the_kind_of_feed_day():
    from picogrid.cli import build_parser
    from picogrid.edge.evaluation import command

    args = build_parser().parse_args(["labfeed-server", "--kind", "teaching", "--seed", "3", "--days", "2"])
    assert (args.kind, args.seed, args.days, args.day) == ("teaching", 3, 2, None)
    assert build_parser().parse_args(["labfeed-server"]).kind == "real"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["labfeed-server", "--kind", "simulated"])
    with pytest.raises(SystemExit):
        command.main(["--profile", "lab", "--feed-kind", "teaching"])
